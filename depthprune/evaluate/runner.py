"""Run perplexity, lm-eval tasks and speed on one model and write ``results.json`` plus a markdown table."""

from __future__ import annotations

import copy
import logging
from datetime import datetime, timezone
from pathlib import Path

from ..errors import DepthpruneError

logger = logging.getLogger(__name__)

def _split_names(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return [str(part) for part in value]


def _seq_lens(value) -> list[int]:
    try:
        lengths = [int(part) for part in _split_names(value)] if not isinstance(value, int) else [value]
    except ValueError:
        raise DepthpruneError(f"--seq-len takes integers separated by commas, e.g. 128,2048 (got {value!r})") from None
    if not lengths or min(lengths) < 2:
        raise DepthpruneError(f"--seq-len needs lengths of at least 2 tokens (got {value!r})")
    return lengths


def _loaded(model, dtype, device, trust_remote_code):
    from ..loading import LoadedModel, load_model

    if isinstance(model, LoadedModel):
        return model
    return load_model(model, dtype=dtype, device=device, trust_remote_code=trust_remote_code)


def eval_needs(model, ppl=None, tasks=None, data_dir=None, compare=None) -> list[tuple[str, str]]:
    """The optional packages ``evaluate`` will need, as ``(module, purpose)`` pairs."""
    from ..extras import model_needs

    needs = model_needs(model) + model_needs(compare)
    if data_dir is None:
        needs += [("datasets", f"--ppl {name} without --data-dir") for name in _split_names(ppl)]
    if _split_names(tasks):
        needs.append(("lm_eval", "--tasks"))
    return needs


def evaluate(model, ppl=None, seq_len=2048, tasks=None, num_fewshot: int | None = None, limit: int | None = None,
             speed: bool = False, compare=None, data_dir=None, batch_size: int = 16, ppl_batch_size: int = 1,
             ppl_max_windows: int | None = None, speed_batch_sizes=(1, 4),
             speed_prompt_len: int = 128, speed_new_tokens: int = 32, speed_repeats: int = 5, dtype="auto",
             device="cpu", trust_remote_code: bool = False, speed_backend: str = "torch") -> dict:
    """Evaluate one model; the Python form of ``depthprune eval``.

    Args:
        model: a :class:`LoadedModel` or anything :func:`depthprune.load_model` accepts.
        ppl: perplexity sources (``wikitext2``, ``ptb``, ``c4``), a list or a comma-separated string.
        seq_len: window length(s) for perplexity, e.g. ``2048`` or ``"128,2048"``.
        tasks: lm-eval tasks, groups or tags by name, scored by lm-eval itself (``boolq``, ``piqa``, ``hellaswag``,
            ``winogrande``, ``arc_easy``, ``arc_challenge``, ``openbookqa``, ``mmlu``, or any other).
        num_fewshot: examples per prompt; default each task's own (MMLU 5 as the papers, the rest lm-eval's).
        limit: only the first N items of each task (per subject for MMLU), as lm-eval's ``--limit``.
        speed: time prefill and decode.
        compare: a base model (spec or LoadedModel) timed in the same process; implies ``speed``.
        data_dir: folder of offline data, one sub-folder per task/source in the original formats; tasks whose
            dataset is not there are loaded by lm-eval (Hugging Face cache or hub).
        batch_size: sequences per forward pass for task scoring.
        ppl_max_windows: score only the first N perplexity windows.
        speed_backend: ``torch`` (the loaded model) or ``llamacpp`` (the GGUF files themselves, in llama.cpp).

    Returns:
        ``{"model", "perplexity": {name: {"ppl", "seq_len", "tokens", ...} or {seq_len: {...}}}, "tasks": {name:
        {"acc", "acc_norm", "n", ...}}, "speed": {...}, "settings": {...}}``.
    """
    from .. import __version__
    from ..metadata import EVALUATED_KEY, evaluated_model
    from ..loading import require_tokenizer
    from .perplexity import C4_WINDOWS, load_ppl_text, source_label, token_perplexity
    from ..extras import require_all

    require_all(eval_needs(model, ppl, tasks, data_dir, compare))   # before reading or loading anything
    if speed_backend == "llamacpp":
        from .speed_llamacpp import check_llamacpp_speed

        check_llamacpp_speed(model, compare)   # llama-cpp-python there, both models GGUF files: before the load
    ppl_names, task_names = _split_names(ppl), _split_names(tasks)
    lengths = _seq_lens(seq_len)
    if not (ppl_names or task_names or speed or compare):
        raise DepthpruneError("nothing to evaluate: pass --ppl, --tasks and/or --speed")
    # Read every data file before loading the model: a missing file fails in a second, not after the load.
    ppl_texts = {name: load_ppl_text(name, data_dir) for name in ppl_names}
    if task_names:
        from .harness import build_tasks

        lm_eval_tasks = build_tasks(task_names, data_dir, num_fewshot)

    loaded = _loaded(model, dtype, device, trust_remote_code)
    results: dict = {"model": loaded.description, "depthprune_version": __version__,
                     "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                     EVALUATED_KEY: evaluated_model(loaded)}
    settings = {"data_dir": str(data_dir) if data_dir is not None else None,
                "num_fewshot": num_fewshot, "limit": limit, "batch_size": batch_size,
                "dtype": str(next(loaded.model.parameters()).dtype).replace("torch.", "")}   # what auto resolved to

    if ppl_names:
        from ..adapter import check_context_length

        check_context_length(loaded.model, max(lengths))   # before the first window, not after the shorter lengths
        tokenizer = require_tokenizer(loaded)
        results["perplexity"] = {}
        for name in ppl_names:
            windows = min(ppl_max_windows or C4_WINDOWS, C4_WINDOWS) if name == "c4" else ppl_max_windows
            per_length = {}
            for length in lengths:
                per_length[length] = token_perplexity(loaded.model, tokenizer, ppl_texts[name], seq_len=length,
                                                      batch_size=ppl_batch_size, max_windows=windows,
                                                      desc=f"{name} ppl@{length}")
                per_length[length]["source"] = source_label(name, data_dir)
            # One length: {"ppl", "seq_len", ...} as the schema; several: keyed by length.
            results["perplexity"][name] = per_length[lengths[0]] if len(lengths) == 1 else \
                {str(length): value for length, value in per_length.items()}
        settings["ppl_max_windows"] = ppl_max_windows

    if task_names:
        from .harness import run_tasks

        results["tasks"], settings["lm_eval_version"] = run_tasks(loaded.model, require_tokenizer(loaded),
                                                                  lm_eval_tasks, limit=limit, batch_size=batch_size)

    if (speed or compare) and speed_backend == "llamacpp":
        from .speed_llamacpp import compare_speed_llamacpp

        results["speed"] = compare_speed_llamacpp(model, compare, prompt_len=speed_prompt_len,
                                                  new_tokens=speed_new_tokens, repeats=speed_repeats)
    elif speed or compare:
        from .speed import compare_speed

        base = _loaded(compare, dtype, device, trust_remote_code) if compare is not None else None
        results["speed"] = compare_speed(loaded.model, base.model if base else None, batch_sizes=speed_batch_sizes,
                                         prompt_len=speed_prompt_len, new_tokens=speed_new_tokens,
                                         repeats=speed_repeats, checkpoint_dir=loaded.checkpoint_dir,
                                         base_checkpoint_dir=base.checkpoint_dir if base else None)
        if base is not None:
            results["speed"]["base_model"] = base.description
    results["settings"] = settings
    return results


def _fmt(value, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(results: dict) -> str:
    """Markdown tables of the perplexity, task and speed results (what ``depthprune eval`` prints)."""
    lines = [f"# Evaluation of `{results.get('model', '?')}`", ""]
    perplexities = results.get("perplexity") or {}
    if perplexities:
        lines += ["| data | seq_len | tokens | ppl |", "|---|---:|---:|---:|"]
        for name, value in perplexities.items():
            entries = [value] if "ppl" in value else list(value.values())
            for entry in entries:
                lines.append(f"| {name} | {entry['seq_len']} | {entry['tokens']} | {entry['ppl']:.3f} |")
        lines.append("")
    tasks = results.get("tasks") or {}
    if tasks:
        lines += ["| task | shots | n | acc | acc_norm | paper metric |", "|---|---:|---:|---:|---:|---|"]
        for name, entry in tasks.items():
            acc = entry.get("acc")
            acc_norm = entry.get("acc_norm")
            lines.append(f"| {name} | {_fmt(entry.get('num_fewshot'))} | {_fmt(entry.get('n'))} | "
                         f"{_fmt(acc * 100 if acc is not None else None)} | "
                         f"{_fmt(acc_norm * 100 if acc_norm is not None else None)} | "
                         f"{entry.get('paper_metric', '-')} |")
        lines += ["", "acc and acc_norm in percent.", ""]
    speed = results.get("speed")
    if speed:
        lines += speed_markdown(speed)
    return "\n".join(lines)


def _spread(entry: dict, key: str, digits: int = 1) -> str:
    """``median (min-max)`` of a measured figure, or the median alone for results written without a spread."""
    text = f"{entry[key]:.{digits}f}"
    if f"{key}_min" in entry and f"{key}_max" in entry:
        text += f" ({entry[f'{key}_min']:.{digits}f}-{entry[f'{key}_max']:.{digits}f})"
    return text


def speed_markdown(speed: dict) -> list[str]:
    """The speed table (median and min-max of the runs), sizes, ideals and any measurement-noise warnings."""
    from .speed import speed_warnings

    model, base = speed["model"], speed.get("base")
    lines = [f"Speed ({speed['settings']['prompt_len']}-token prompts, {speed['settings']['new_tokens']} "
             f"decode steps, median (min-max) of {speed['settings']['repeats']}"
             f"{', dense and pruned interleaved' if base else ''}; {model['device']}, {model['dtype']}):", ""]
    header = "| batch | prefill tok/s | decode tok/s |"
    rule = "|---:|---:|---:|"
    if base:
        header += " base prefill tok/s | base decode tok/s | prefill x (ideal) | decode x (ideal) |"
        rule += "---:|---:|---:|---:|"
    lines += [header, rule]
    plausibility = speed.get("plausibility") or {}
    for batch, entry in model["batches"].items():
        row = f"| {batch} | {_spread(entry, 'prefill_tokens_per_s')} | {_spread(entry, 'decode_tokens_per_s')} |"
        if base:
            base_entry = base["batches"][batch]
            ratio = speed["ratios"][batch]
            cells = []
            for kind in ("prefill", "decode"):
                verdict = plausibility.get(batch, {}).get(kind, {})
                cell = _spread(ratio, kind, 3)
                if "ideal" in verdict:
                    cell += f" ({verdict['ideal']:.3f})"
                if verdict and not verdict.get("plausible", True):
                    cell += " NOISE"
                cells.append(cell)
            row += (f" {_spread(base_entry, 'prefill_tokens_per_s')} | {_spread(base_entry, 'decode_tokens_per_s')} | "
                    f"{cells[0]} | {cells[1]} |")
        lines.append(row)
    lines.append("")
    lines.append(f"Parameters {model['parameters']:,}; layers {model['num_layers']}; "
                 f"checkpoint {model.get('checkpoint_bytes', 0) / 2**20:.1f} MiB; peak memory "
                 f"{(model.get('peak_memory_bytes') or 0) / 2**20:.0f} MiB ({model['peak_memory_kind']}).")
    if base:
        ideal = speed["ideal"]
        lines.append(f"Ideal speed-up: layers {_fmt(ideal.get('layers'), 3)}, weights read per token "
                     f"{_fmt(ideal['weights_read'], 3)}.")
        for warning in speed_warnings(speed):
            lines.append(f"WARNING: {warning}")
    lines.append("")
    return lines


def write_results(results: dict, output, force: bool = False) -> Path:
    """Write ``results.json`` and ``results.md`` into ``output`` atomically (refused if it exists without force)."""
    from ..metadata import RESULTS_FILE
    from ..saving import atomic_output_dir, write_json_atomic

    serialisable = copy.deepcopy(results)
    with atomic_output_dir(output, force=force) as tmp:
        write_json_atomic(tmp / RESULTS_FILE, serialisable)
        (tmp / "results.md").write_text(markdown_table(results))
    return Path(output)
