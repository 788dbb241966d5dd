"""Text sources for calibration, healing and evaluation, and their tokenisation into fixed-length blocks.

A data SPEC is one of:

- ``builtin``: CPython's own documentation text (``pydoc_data.topics``); offline, always there.
- ``self``: text the model generates itself, seeded (data-free calibration).
- ``wikitext2``, ``c4``, ``ptb``, ``pg19``: the usual Hugging Face datasets (needs ``datasets`` and network).
- ``hf:PATH[:CONFIG[:SPLIT]]``: any Hugging Face dataset.
- a file: ``.txt``/``.raw`` (paragraphs split on blank lines), ``.jsonl``/``.json`` (field ``text`` or
  ``--text-field``), ``.parquet``; any of these gzipped (``.gz``).
- a folder: every such file below it, in name order.
"""

from __future__ import annotations

import functools
import gzip
import io
import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import DepthpruneError

TEXT_SUFFIXES = (".txt", ".raw")
JSON_SUFFIXES = (".jsonl", ".json")
PARQUET_SUFFIXES = (".parquet",)
SUPPORTED_SUFFIXES = TEXT_SUFFIXES + JSON_SUFFIXES + PARQUET_SUFFIXES

# name -> (dataset path, config, split, text field, extra load_dataset kwargs)
HF_DATASETS = {
    "wikitext2": ("wikitext", "wikitext-2-raw-v1", "train", "text", {}),
    "c4": ("allenai/c4", None, "train", "text", {"data_files": {"train": "en/c4-train.00000-of-01024.json.gz"}}),
    "ptb": ("ptb_text_only", "penn_treebank", "train", "sentence", {}),
    "pg19": ("emozilla/pg19", None, "train", "text", {}),
}
SPECIAL_SOURCES = ("builtin", "self")


@dataclass(frozen=True)
class DataSpec:
    """What to read and how to cut it: the options shared by every verb that takes ``--data``."""

    source: str = "builtin"
    samples: int = 32
    seq_len: int = 512
    seed: int = 0
    text_field: str | None = None
    chat_template: bool = False

    def check(self) -> "DataSpec":
        """Read a local file or folder source now, so that a missing, binary or malformed file is one line before
        any model is loaded (the texts stay cached for the real read). Online and generated sources are checked
        where they are used."""
        if self.source not in SPECIAL_SOURCES and self.source not in HF_DATASETS and not self.source.startswith("hf:"):
            load_texts(self.source, self.text_field)
        return self

    def describe(self) -> dict:
        return {"data": self.source, "samples": self.samples, "seq_len": self.seq_len, "seed": self.seed,
                "text_field": self.text_field, "chat_template": self.chat_template}


# ------------------------------------------------------------------------------------------------ reading text
def builtin_texts() -> list[str]:
    """CPython's documentation topics: a few hundred KB of English prose and code that ships with every Python."""
    from pydoc_data.topics import topics

    return [topics[key].strip() for key in sorted(topics) if topics[key].strip()]


def _open_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if path.suffix == ".gz" else data


def looks_binary(raw: bytes, probe: int = 65536) -> bool:
    """NUL bytes or mostly undecodable bytes in the first ``probe`` bytes: not text (a model file, an archive...)."""
    head = raw[:probe]
    if b"\x00" in head:
        return True
    decoded = head.decode("utf-8", errors="replace")
    return len(head) > 0 and decoded.count("\ufffd") > 0.1 * len(decoded)


def _inner_suffix(path: Path) -> str:
    return Path(path.stem).suffix.lower() if path.suffix == ".gz" else path.suffix.lower()


def _record_text(record, text_field: str | None, path: Path, where: str) -> str:
    """The text of one JSON record; anything but an object holding a string there is an error (never ``"None"``)."""
    field = text_field or "text"
    if not isinstance(record, dict):
        raise DepthpruneError(f"{path}: {where} is a JSON {type(record).__name__}, not an object; write one object "
                              f"per record, e.g. {{\"{field}\": \"...\"}}")
    if field not in record:
        raise DepthpruneError(f"{path}: {where} has no field {field!r} (fields: {', '.join(map(str, record))}); "
                              "pass --text-field NAME")
    value = record[field]
    if not isinstance(value, str):
        shown = "null" if value is None else f"a {type(value).__name__}"
        raise DepthpruneError(f"{path}: {where}: field {field!r} is {shown}, not a string; fix or remove that record")
    return value


def read_file_texts(path: str | Path, text_field: str | None = None) -> list[str]:
    """Documents in one file (see the module docstring for the formats)."""
    path = Path(path)
    suffix = _inner_suffix(path)
    if suffix not in SUPPORTED_SUFFIXES:
        raise DepthpruneError(f"{path}: unsupported data file type; use {', '.join(SUPPORTED_SUFFIXES)} (or .gz)")
    try:
        raw = _open_bytes(path)
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        raise DepthpruneError(f"cannot read data file {path}: {error}") from None
    if suffix != ".parquet" and looks_binary(raw):
        raise DepthpruneError(f"{path} is a binary file, not {suffix} text; give a UTF-8 text, JSON Lines or "
                              "Parquet file")
    if suffix in TEXT_SUFFIXES:
        text = raw.decode("utf-8", errors="replace")
        return [p.strip("\n") for p in text.split("\n\n") if p.strip()]
    if suffix in JSON_SUFFIXES:
        text = raw.decode("utf-8", errors="replace")
        stripped = text.lstrip()
        try:
            if stripped.startswith("["):
                records = json.loads(text)
                if not isinstance(records, list):
                    records = [records]
                located = [(record, f"item {number}") for number, record in enumerate(records, start=1)]
            else:
                located = [(json.loads(line), f"line {number}")
                           for number, line in enumerate(text.splitlines(), start=1) if line.strip()]
        except json.JSONDecodeError as error:
            raise DepthpruneError(f"{path}: not valid JSON/JSON Lines ({error})") from None
        texts = [_record_text(record, text_field, path, where) for record, where in located]
        return [t for t in texts if t.strip()]
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DepthpruneError("reading .parquet needs pyarrow: pip install pyarrow") from None
    table = pq.read_table(io.BytesIO(raw))
    field = text_field or "text"
    if field not in table.column_names:
        raise DepthpruneError(f"{path}: no column {field!r} (columns: {', '.join(table.column_names)}); "
                              "pass --text-field NAME")
    texts = [_record_text(record, field, path, f"row {number}")
             for number, record in enumerate(({field: value} for value in table.column(field).to_pylist()), start=1)]
    return [t for t in texts if t.strip()]


def load_hf_dataset(name: str, path: str, config: str | None, split: str, extra: dict, offline_hint: str):
    """A Hugging Face dataset split, or one clear error (package missing, offline, unknown dataset) with a hint."""
    try:
        import datasets
    except ImportError:
        raise DepthpruneError(f"{name!r} is read with the datasets package: pip install datasets, or "
                              f"{offline_hint}") from None
    from .hub import require_hub

    require_hub(f"data source {name!r}", offline_hint)
    try:
        return datasets.load_dataset(path, config, split=split, **extra)
    except Exception as error:  # network, missing dataset, bad config: all mean "this source is not available"
        raise DepthpruneError(f"could not load {name!r} from Hugging Face ({path}; {type(error).__name__}); "
                              f"offline? {offline_hint}") from None


def _hf_texts(name: str, text_field: str | None) -> list[str]:
    if name.startswith("hf:"):
        parts = name[3:].split(":")
        path, config, split = parts[0], (parts[1] or None) if len(parts) > 1 else None, \
            parts[2] if len(parts) > 2 else "train"
        field, extra = text_field or "text", {}
    else:
        path, config, split, field, extra = HF_DATASETS[name]
        field = text_field or field
    dataset = load_hf_dataset(name, path, config, split, extra,
                              offline_hint="pass a local file such as ../shared/data/c4/c4_validation_2k.jsonl, or "
                                           "--data builtin")
    if field not in dataset.column_names:
        raise DepthpruneError(f"dataset {name!r} has no field {field!r} (fields: {', '.join(dataset.column_names)}); "
                              "pass --text-field NAME")
    return [t for t in dataset[field] if isinstance(t, str) and t.strip()]


def check_source(source: str) -> None:
    """Refuse a local data source that does not exist, in a moment, before a model is loaded for it."""
    if source in SPECIAL_SOURCES or source in HF_DATASETS or source.startswith("hf:"):
        return
    if not Path(source).expanduser().exists():
        raise DepthpruneError(f"data {source!r} not found: give a file, a folder, builtin, self, "
                              f"{', '.join(HF_DATASETS)} or hf:PATH:CONFIG:SPLIT")


def load_texts(source: str, text_field: str | None = None) -> list[str]:
    """The documents of a data source (every source but ``self``, which needs a model)."""
    if source == "builtin":
        return builtin_texts()
    if source == "self":
        raise DepthpruneError("data 'self' is generated by the model; use calibration_blocks(..., model=model)")
    if source in HF_DATASETS or source.startswith("hf:"):
        return _hf_texts(source, text_field)
    path = Path(source).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and _inner_suffix(p) in SUPPORTED_SUFFIXES)
        if not files:
            raise DepthpruneError(f"data folder {path} holds no {', '.join(SUPPORTED_SUFFIXES)} files")
        return [text for file in files for text in read_file_texts(file, text_field)]
    if path.is_file():
        stat = path.stat()
        return list(_cached_file_texts(str(path.resolve()), stat.st_mtime_ns, stat.st_size, text_field))
    raise DepthpruneError(f"data {source!r} not found: give a file, a folder, builtin, self, "
                          f"{', '.join(HF_DATASETS)} or hf:PATH:CONFIG:SPLIT")


@functools.lru_cache(maxsize=4)
def _cached_file_texts(path: str, mtime_ns: int, size: int, text_field: str | None) -> tuple[str, ...]:
    """A file read once per process (keyed by its modification time and size): checked up front, used later."""
    return tuple(read_file_texts(path, text_field))


# ------------------------------------------------------------------------------------------------ tokenising
def _bos_id(tokenizer) -> int | None:
    """The BOS id if this tokenizer puts one in front of every text by default, else None."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return None
    ids = tokenizer("a")["input_ids"]
    return bos if ids and ids[0] == bos else None


def _format(text: str, tokenizer, chat_template: bool) -> str:
    if not chat_template:
        return text
    if not getattr(tokenizer, "chat_template", None):
        raise DepthpruneError("--chat-template given but this tokenizer has no chat template; drop the option")
    return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False)


def tokenize_blocks(texts: list[str], tokenizer, samples: int, seq_len: int, seed: int = 0,
                    chat_template: bool = False, source: str = "data") -> torch.Tensor:
    """Cut documents into ``samples`` blocks of ``seq_len`` tokens, deterministically under ``seed``.

    Documents are shuffled with ``seed``, joined with blank lines and tokenised as one stream, which is cut into
    consecutive blocks. When the tokenizer normally starts a text with BOS, each block starts with BOS.

    Returns:
        Token ids, shape ``(samples, seq_len)``.
    """
    if samples < 1 or seq_len < 2:
        raise DepthpruneError(f"need --samples >= 1 and --seq-len >= 2 (got {samples}, {seq_len})")
    bos = _bos_id(tokenizer)
    body_len = seq_len - (1 if bos is not None else 0)
    needed = samples * body_len
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    stream: list[int] = []
    for index in order:
        stream.extend(tokenizer(_format(texts[index], tokenizer, chat_template) + "\n\n",
                                add_special_tokens=False)["input_ids"])
        if len(stream) >= needed:
            break
    if len(stream) < needed:
        raise DepthpruneError(f"too little data in {source}: {len(stream)} tokens make {len(stream) // body_len} of "
                              f"the {samples} blocks of {seq_len} tokens asked for; lower --samples or --seq-len "
                              "or give more text")
    blocks = torch.tensor(stream[:needed], dtype=torch.long).view(samples, body_len)
    if bos is not None:
        blocks = torch.cat([torch.full((samples, 1), bos, dtype=torch.long), blocks], dim=1)
    return blocks


@torch.no_grad()
def self_generated_blocks(model, tokenizer, samples: int, seq_len: int, seed: int = 0,
                          batch_size: int = 8) -> torch.Tensor:
    """Text the model writes itself: each sample starts from one seeded random token and is sampled to length."""
    from tqdm.auto import tqdm

    generator = torch.Generator().manual_seed(seed)
    vocab = getattr(model.config, "vocab_size", None) or len(tokenizer)
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    device = next(model.parameters()).device
    from transformers import StoppingCriteria, StoppingCriteriaList

    class _CountTokens(StoppingCriteria):
        """Advances the bar by one token per sample at every generation step (never stops generation)."""

        def __call__(self, input_ids, scores, **kwargs):
            bar.update(input_ids.shape[0])
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    blocks = []
    bar = tqdm(total=samples * (seq_len - 1), desc="generating calibration text", unit="token")
    for start in range(0, samples, batch_size):
        count = min(batch_size, samples - start)
        first = []
        while len(first) < count:
            token = int(torch.randint(0, vocab, (1,), generator=generator))
            if token not in special:
                first.append(token)
        torch.manual_seed(seed + start)
        prompt = torch.tensor(first, device=device).view(count, 1)
        output = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=True, top_k=0, top_p=1.0,
                                max_new_tokens=seq_len - 1, min_new_tokens=seq_len - 1,
                                pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id or 0,
                                stopping_criteria=StoppingCriteriaList([_CountTokens()]))
        blocks.append(output[:, :seq_len].cpu())
    bar.close()
    return torch.cat(blocks, dim=0)


def calibration_blocks(spec: DataSpec | str, tokenizer, model=None, **overrides) -> torch.Tensor:
    """Token blocks ``(samples, seq_len)`` for a data spec; ``model`` is needed only for ``self``.

    ``overrides`` replace fields of ``spec`` (``samples=``, ``seq_len=``, ...), so ``calibration_blocks("builtin",
    tok, samples=8, seq_len=128)`` works.
    """
    if isinstance(spec, str):
        spec = DataSpec(source=spec)
    if overrides:
        spec = DataSpec(**{**spec.__dict__, **overrides})
    if tokenizer is None:
        raise DepthpruneError("this model has no tokenizer, so text cannot be read; copy the base model's tokenizer "
                              "files (tokenizer.json, tokenizer_config.json) into its folder")
    if model is not None:
        from .adapter import check_context_length

        check_context_length(model, spec.seq_len)
    if spec.source == "self":
        if model is None:
            raise DepthpruneError("data 'self' needs the model to generate text; pass model=")
        return self_generated_blocks(model, tokenizer, spec.samples, spec.seq_len, spec.seed)
    texts = load_texts(spec.source, spec.text_field)
    if not texts:
        raise DepthpruneError(f"data {spec.source!r} holds no text")
    return tokenize_blocks(texts, tokenizer, spec.samples, spec.seq_len, spec.seed, spec.chat_template, spec.source)
