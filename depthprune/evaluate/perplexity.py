"""Token-level perplexity as the pruning papers report it (GPTQ / SparseGPT / LLM-Pruner convention).

The test text is concatenated, tokenised once (with the tokenizer's default special tokens), and cut into
non-overlapping windows of ``seq_len`` tokens; the incomplete last window is dropped. Each window is scored on its
own (no context carried over), predicting tokens 2..seq_len of the window, and
``ppl = exp(total NLL / predicted tokens)``. This is *token* perplexity; lm-eval's ``wikitext`` task reports word
perplexity over documents, a different number.

Sources (``--ppl NAME``):

- ``wikitext2``: WikiText-2 raw test, the Hugging Face rows joined with ``"\\n\\n"``;
  offline ``wikitext2/wiki.test.raw``.
- ``ptb``: Penn Treebank test sentences joined with ``" "`` (GPTQ); offline ``ptb/ptb.test.txt``.
- ``c4``: C4 validation, the first 1,100 documents joined with ``" "`` and cut to 256 windows (GPTQ's "c4-new");
  offline ``c4/*.jsonl`` (the first file in name order).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from ..errors import DepthpruneError

C4_DOCUMENTS = 1100
C4_WINDOWS = 256

# name -> (offline path under DATA_DIR, Hugging Face (path, config, split, field, extra kwargs))
PPL_SOURCES = {
    "wikitext2": ("wikitext2/wiki.test.raw", ("wikitext", "wikitext-2-raw-v1", "test", "text", {})),
    "ptb": ("ptb/ptb.test.txt", ("ptb_text_only", "penn_treebank", "test", "sentence", {})),
    "c4": ("c4/*.jsonl", ("allenai/c4", None, "validation", "text",
                          {"data_files": {"validation": "en/c4-validation.00000-of-00008.json.gz"}})),
    # Offline everywhere: CPython's documentation text. Not a paper benchmark, and it is also the default
    # calibration source, so calibrate on something else (e.g. --data self) when you evaluate on it.
    "builtin": (None, None),
}


def wikitext_rows(raw: str) -> list[str]:
    """The Hugging Face ``wikitext-2-raw-v1`` rows of a ``wiki.*.raw`` file.

    Blank lines become "", the others keep their "\\n".
    """
    return ["" if not line.strip() else line + "\n" for line in raw.split("\n")[:-1 if raw.endswith("\n") else None]]


def join_texts(name: str, rows: list[str]) -> str:
    """The concatenated test text for source ``name`` from its rows/sentences/documents."""
    if name == "wikitext2":
        return "\n\n".join(rows)
    if name == "ptb":
        return " ".join(rows)
    if name == "c4":
        return " ".join(rows[:C4_DOCUMENTS])
    raise DepthpruneError(f"unknown perplexity source {name!r}; choose from {', '.join(PPL_SOURCES)}")


def _offline_rows(name: str, data_dir: Path) -> list[str]:
    relative = PPL_SOURCES[name][0]
    if name == "c4":
        folder = data_dir / "c4"
        files = sorted(folder.glob("*.jsonl")) if folder.is_dir() else []
        if not files:
            raise DepthpruneError(f"c4: expected a JSON Lines file {data_dir / relative} (field 'text'); put C4 "
                                  "validation documents there")
        rows = []
        for number, line in enumerate(files[0].read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line)["text"])
                except (json.JSONDecodeError, KeyError):
                    raise DepthpruneError(f"c4: {files[0]} line {number} is not a JSON object with 'text'") from None
            if len(rows) >= C4_DOCUMENTS:
                break
        return rows
    path = data_dir / relative
    if not path.is_file():
        raise DepthpruneError(f"{name}: expected data file {path} is missing; put the original release file there or "
                              "point --data-dir at a folder that has it")
    raw = path.read_text(encoding="utf-8")
    if name == "wikitext2":
        return wikitext_rows(raw)
    return [line.strip() for line in raw.split("\n") if line.strip()]  # ptb: HF's sentences have no edge spaces


def _online_rows(name: str) -> list[str]:
    from ..data import load_hf_dataset

    path, config, split, field, extra = PPL_SOURCES[name][1]
    dataset = load_hf_dataset(name, path, config, split, extra, offline_hint="pass --data-dir (e.g. ../shared/data)")
    return list(dataset[field])


def load_ppl_text(name: str, data_dir: str | Path | None = None) -> str:
    """The concatenated test text of a perplexity source, offline from ``data_dir`` when given."""
    if name not in PPL_SOURCES:
        import difflib

        close = difflib.get_close_matches(name, PPL_SOURCES, n=1)
        raise DepthpruneError(f"unknown perplexity source {name!r}; choose from {', '.join(PPL_SOURCES)}."
                              + (f" Did you mean {close[0]!r}?" if close else ""))
    if name == "builtin":
        from ..data import builtin_texts

        return "\n\n".join(builtin_texts())
    rows = _offline_rows(name, Path(data_dir).expanduser()) if data_dir is not None else _online_rows(name)
    return join_texts(name, rows)


def source_label(name: str, data_dir: str | Path | None) -> str:
    """Where the text of a perplexity source came from, for the results' provenance."""
    if name == "builtin":
        return "builtin (CPython pydoc_data.topics)"
    if data_dir is not None:
        return str(Path(data_dir) / PPL_SOURCES[name][0])
    return f"hf:{PPL_SOURCES[name][1][0]}"


def tokenize_windows(token_ids: torch.Tensor, seq_len: int, max_windows: int | None = None) -> torch.Tensor:
    """Non-overlapping windows ``(windows, seq_len)`` of a 1-D id tensor; the incomplete tail is dropped."""
    if seq_len < 2:
        raise DepthpruneError(f"--seq-len must be at least 2 (got {seq_len})")
    count = token_ids.numel() // seq_len
    if max_windows is not None:
        count = min(count, max_windows)
    if count == 0:
        raise DepthpruneError(f"the text has {token_ids.numel()} tokens, fewer than one window of {seq_len}; lower "
                              "--seq-len")
    return token_ids[:count * seq_len].view(count, seq_len)


@torch.no_grad()
def window_nll(model, windows: torch.Tensor, batch_size: int = 1, desc: str = "perplexity") -> tuple[float, int]:
    """Summed next-token NLL over all windows and the number of predicted tokens (``windows * (seq_len - 1)``)."""
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in tqdm(range(0, windows.shape[0], batch_size), desc=desc, unit="batch"):
        batch = windows[start:start + batch_size].to(device)  # (batch, seq_len)
        logits = model(input_ids=batch, use_cache=False).logits  # (batch, seq_len, vocab)
        # Score one window at a time in float32: a (seq_len, vocab) slice, not the whole batch at once.
        for row in range(batch.shape[0]):
            total += torch.nn.functional.cross_entropy(logits[row, :-1].float(), batch[row, 1:],
                                                       reduction="sum").item()
            count += batch.shape[1] - 1
    return total, count


def token_perplexity(model, tokenizer, text: str, seq_len: int = 2048, batch_size: int = 1,
                     max_windows: int | None = None, desc: str = "perplexity") -> dict:
    """Token-level perplexity of ``text`` in non-overlapping windows of ``seq_len``.

    Args:
        model: a causal LM.
        tokenizer: its tokenizer; the whole text is encoded once with its default special tokens.
        text: the concatenated test text.
        seq_len: tokens per window (papers: 128 or 2048).
        batch_size: windows per forward pass.
        max_windows: score only the first this many windows.

    Returns:
        ``{"ppl", "nll" (mean per token), "seq_len", "tokens" (predicted), "windows"}``.
    """
    token_ids = torch.tensor(tokenizer(text)["input_ids"], dtype=torch.long)
    windows = tokenize_windows(token_ids, seq_len, max_windows)
    total, count = window_nll(model, windows, batch_size=batch_size, desc=desc)
    mean = total / count
    return {"ppl": math.exp(mean), "nll": mean, "seq_len": seq_len, "tokens": count, "windows": windows.shape[0]}


def perplexity(model, tokenizer, name: str, seq_len: int = 2048, data_dir: str | Path | None = None,
               batch_size: int = 1, max_windows: int | None = None) -> dict:
    """Token perplexity on a named source (``wikitext2``, ``ptb``, ``c4``); see the module docstring."""
    text = load_ppl_text(name, data_dir)
    if name == "c4":
        max_windows = min(max_windows or C4_WINDOWS, C4_WINDOWS)
    result = token_perplexity(model, tokenizer, text, seq_len=seq_len, batch_size=batch_size,
                              max_windows=max_windows, desc=f"{name} ppl@{seq_len}")
    result["source"] = source_label(name, data_dir)
    return result
