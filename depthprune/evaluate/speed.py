"""Speed and size: parameters, checkpoint size, peak memory, prefill and KV-cached decode throughput.

Timings are medians of ``repeats`` runs after ``warmup`` runs, with their min-max spread. ``compare_speed`` measures
a model and its base in the same process, interleaved run by run (A B A B ...), and reports ratios: on a shared,
noisy machine that is the honest comparison. Two ideals are reported beside the measured ratio: the layer ratio
``L / (L - n)`` and the ratio of weights read per generated token (decode streams every weight once, including the
output head, which layer removal does not shrink). A measured ratio that no removal of layers can produce (below 1,
or more than 10% above its ideal) is flagged as measurement noise, with the advice to re-run on an idle machine.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import resource
import statistics
import time
from pathlib import Path

import torch

from ..errors import DepthpruneError

# A measured speed-up may exceed its ideal by this fraction before it is called measurement noise.
PLAUSIBLE_TOLERANCE = 0.10
NOISE_ADVICE = "measurement noise: re-run on an idle machine (or with more --speed-repeats)"


def parameter_count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def weights_read_per_token(model) -> int:
    """Parameters a decode step reads: everything but the input embedding table (one row is read), counting a tied
    output head once."""
    embedding = model.get_input_embeddings()
    head = model.get_output_embeddings()
    total = parameter_count(model)
    embed_params = sum(p.numel() for p in embedding.parameters()) if embedding is not None else 0
    tied = head is not None and embedding is not None and head.weight is embedding.weight
    return total if tied else total - embed_params


def _checkpoint_size(checkpoint_dir: str | Path | None, model=None) -> dict:
    """Size of the weight files in ``checkpoint_dir``, or of the parameters in memory when there is none."""
    from ..loading import checkpoint_bytes

    size = checkpoint_bytes(checkpoint_dir)
    if size:
        return {"checkpoint_bytes": size, "checkpoint_size_from": "files"}
    if model is None:
        return {}
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    return {"checkpoint_bytes": size, "checkpoint_size_from": "parameters in memory"}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_rss_bytes() -> int:
    # ru_maxrss is in KiB on Linux: the peak of the whole process, so it only ever grows.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _cache_keyword(model) -> str:
    """The forward's KV-cache argument: ``cache`` since transformers 5.24 (``past_key_values`` is deprecated)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _returned_cache(output):
    """The KV cache a forward returned, read by its current field name (no deprecated alias)."""
    names = {f.name for f in dataclasses.fields(output)} if dataclasses.is_dataclass(output) else set()
    return output.cache if "cache" in names else output.past_key_values


@torch.no_grad()
def _prefill_and_decode(model, batch_size: int, prompt_len: int, new_tokens: int, vocab: int,
                        generator: torch.Generator) -> tuple[float, float]:
    """Seconds for one prefill of ``(batch_size, prompt_len)`` and for ``new_tokens`` cached greedy decode steps."""
    device = next(model.parameters()).device
    prompt = torch.randint(0, vocab, (batch_size, prompt_len), generator=generator).to(device)
    cache_keyword = _cache_keyword(model)
    _sync(device)
    start = time.perf_counter()
    extra = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
    output = model(input_ids=prompt, use_cache=True, **extra)
    _sync(device)
    prefill = time.perf_counter() - start
    cache = _returned_cache(output)
    next_token = output.logits[:, -1:].argmax(dim=-1)  # (batch, 1)
    start = time.perf_counter()
    for _ in range(new_tokens):
        output = model(input_ids=next_token, use_cache=True, **{cache_keyword: cache})
        cache = _returned_cache(output)
        next_token = output.logits[:, -1:].argmax(dim=-1)
    _sync(device)
    decode = time.perf_counter() - start
    return prefill, decode


def _check_settings(batch_sizes, prompt_len, new_tokens, repeats, warmup) -> None:
    if not batch_sizes or min(batch_sizes) < 1 or prompt_len < 1 or new_tokens < 1 or repeats < 1 or warmup < 0:
        raise DepthpruneError("speed settings need batch sizes >= 1, prompt length >= 1, new tokens >= 1, "
                              "repeats >= 1 and warm-up >= 0")


def measure_speed(model, batch_sizes=(1, 4), prompt_len: int = 128, new_tokens: int = 32, repeats: int = 5,
                  warmup: int = 1, seed: int = 0, checkpoint_dir=None) -> dict:
    """Throughput of one model (see :func:`compare_speed` to measure against a base in the same process).

    Returns:
        ``{"parameters", "weights_read_per_token", "num_layers", "checkpoint_bytes", "peak_memory_bytes",
        "settings", "batches": {B: {"prefill_tokens_per_s", "decode_tokens_per_s", "prefill_s", "decode_s"}}}``.
    """
    return compare_speed(model, None, batch_sizes, prompt_len, new_tokens, repeats, warmup, seed,
                         checkpoint_dir=checkpoint_dir)["model"]


def _layer_count(model) -> int | None:
    from ..adapter import ModelAdapter

    try:
        return ModelAdapter(model).num_layers
    except DepthpruneError:
        return None


def compare_speed(model, base=None, batch_sizes=(1, 4), prompt_len: int = 128, new_tokens: int = 32,
                  repeats: int = 5, warmup: int = 1, seed: int = 0, checkpoint_dir=None,
                  base_checkpoint_dir=None, progress: bool = True) -> dict:
    """Measure ``model`` (and ``base``, interleaved run by run: A B A B ...) and report medians, spreads and ratios.

    Args:
        model: the model to time.
        base: an unpruned model to compare with in the same process, or None.
        batch_sizes: batch sizes to time.
        prompt_len: prompt tokens per sequence for prefill.
        new_tokens: decode steps with the KV cache.
        repeats: timed runs per setting (the median is reported, with the min and max).
        warmup: untimed runs first.
        progress: show a progress bar over the runs.

    Returns:
        ``{"model": {...}, "base": {...}, "ratios": {B: {"prefill", "decode", "prefill_min", "prefill_max", ...}},
        "ideal": {...}, "plausibility": {B: {kind: {"ratio", "ideal", "plausible", "reason"}}}, "warnings": [...]}``
        (``base``, ``ratios``, ``ideal``, ``plausibility`` and ``warnings`` only with a base). Ratios are the
        ratio of the medians; their min-max is that of the ratios of the interleaved pairs.
    """
    from tqdm.auto import tqdm

    _check_settings(batch_sizes, prompt_len, new_tokens, repeats, warmup)
    models = {"model": model} if base is None else {"model": model, "base": base}
    vocab = min(getattr(m.config.get_text_config(), "vocab_size", 0) or 0 for m in models.values())
    if vocab < 1:
        raise DepthpruneError("cannot time a model without config.vocab_size")
    device_types = {next(m.parameters()).device.type for m in models.values()}
    timings = {name: {b: {"prefill": [], "decode": []} for b in batch_sizes} for name in models}
    generator = torch.Generator().manual_seed(seed)
    cuda = "cuda" in device_types
    peak = {}
    for name, m in models.items():
        m.eval()
    bar = tqdm(total=len(batch_sizes) * (warmup + repeats) * len(models), desc="speed", unit="run",
               disable=not progress)
    for batch_size in batch_sizes:
        for run in range(warmup + repeats):
            for name, m in models.items():  # interleaved, so drifts in machine load hit both alike
                bar.set_postfix(batch=batch_size, model=name, warmup=run < warmup)
                if cuda:
                    torch.cuda.reset_peak_memory_stats()
                prefill, decode = _prefill_and_decode(m, batch_size, prompt_len, new_tokens, vocab, generator)
                if cuda:
                    peak[name] = max(peak.get(name, 0), torch.cuda.max_memory_allocated())
                if run >= warmup:
                    timings[name][batch_size]["prefill"].append(prefill)
                    timings[name][batch_size]["decode"].append(decode)
                bar.update(1)
    bar.close()
    tokens = {"prefill": prompt_len, "decode": new_tokens}
    results = {}
    for name, m in models.items():
        entry = {
            "parameters": parameter_count(m),
            "weights_read_per_token": weights_read_per_token(m),
            "num_layers": _layer_count(m),
            "dtype": str(next(m.parameters()).dtype).replace("torch.", ""),
            "device": str(next(m.parameters()).device),
            **_checkpoint_size(checkpoint_dir if name == "model" else base_checkpoint_dir, m),
        }
        if cuda:
            entry["peak_memory_bytes"] = peak.get(name)
            entry["peak_memory_kind"] = "torch.cuda.max_memory_allocated"
        else:
            entry["peak_memory_bytes"] = _peak_rss_bytes()
            entry["peak_memory_kind"] = "process peak RSS (all models in this process)"
        entry["batches"] = {}
        for batch_size in batch_sizes:
            measured = {}
            for kind in ("prefill", "decode"):
                seconds = timings[name][batch_size][kind]
                work = batch_size * tokens[kind]
                measured[f"{kind}_tokens_per_s"] = work / statistics.median(seconds)
                # the slowest run gives the lowest throughput
                measured[f"{kind}_tokens_per_s_min"] = work / max(seconds)
                measured[f"{kind}_tokens_per_s_max"] = work / min(seconds)
                measured[f"{kind}_s"] = statistics.median(seconds)
                measured[f"{kind}_s_runs"] = list(seconds)
            entry["batches"][batch_size] = measured
        results[name] = entry
    results["settings"] = {"batch_sizes": list(batch_sizes), "prompt_len": prompt_len, "new_tokens": new_tokens,
                           "repeats": repeats, "warmup": warmup, "statistic": "median",
                           "spread": "min-max over the repeats",
                           "order": "interleaved run by run (model, base, model, base, ...)" if base is not None
                           else "sequential",
                           "threads": torch.get_num_threads(), "cpu_count": os.cpu_count()}
    if base is not None:
        results["ratios"] = {}
        for b in batch_sizes:
            ratio = {}
            for kind in ("prefill", "decode"):
                ratio[kind] = (results["model"]["batches"][b][f"{kind}_tokens_per_s"]
                               / results["base"]["batches"][b][f"{kind}_tokens_per_s"])
                # a pair is one model run and the base run right after it: same machine load
                pairs = [base_s / model_s for model_s, base_s in zip(timings["model"][b][kind],
                                                                      timings["base"][b][kind])]
                ratio[f"{kind}_min"], ratio[f"{kind}_max"] = min(pairs), max(pairs)
            results["ratios"][b] = ratio
        ideal = {"weights_read": results["base"]["weights_read_per_token"]
                 / results["model"]["weights_read_per_token"]}
        layers, base_layers = results["model"]["num_layers"], results["base"]["num_layers"]
        if layers and base_layers:
            ideal["layers"] = base_layers / layers
        results["ideal"] = ideal
        results["plausibility"] = {b: {kind: check_plausible(results["ratios"][b][kind], ideal_speedup(ideal, kind))
                                       for kind in ("prefill", "decode")} for b in batch_sizes}
        results["warnings"] = speed_warnings(results)
    return results


def ideal_speedup(ideal: dict, kind: str) -> float:
    """The largest speed-up removing layers can give ``kind`` (prefill or decode).

    Decode reads every weight once per token, so its bound is the ratio of weights read per token. Prefill computes
    the head for the last position only (``logits_to_keep=1``), so its work shrinks at most with the layer count;
    without a layer count the weights-read ratio is the bound.
    """
    if kind == "prefill" and ideal.get("layers"):
        return ideal["layers"]
    return ideal["weights_read"]


def check_plausible(ratio: float, ideal: float, tolerance: float = PLAUSIBLE_TOLERANCE) -> dict:
    """Whether a measured speed-up of a pruned model over its base can be real.

    Fewer layers never make a model slower (ratio below 1), and cannot make it faster than its ideal; a ratio more
    than ``tolerance`` above the ideal, or below 1, is measurement noise.
    """
    if ratio < 1.0:
        reason = f"{ratio:.2f}x is below 1 (fewer layers cannot be slower)"
    elif ratio > ideal * (1 + tolerance):
        reason = f"{ratio:.2f}x is above the ideal {ideal:.2f}x by more than {tolerance:.0%}"
    else:
        reason = None
    return {"ratio": ratio, "ideal": ideal, "plausible": reason is None, "reason": reason}


def speed_warnings(speed: dict) -> list[str]:
    """One line per implausible ratio in a :func:`compare_speed` result, each ending in the advice to re-run."""
    lines = []
    for batch, kinds in (speed.get("plausibility") or {}).items():
        for kind, verdict in kinds.items():
            if not verdict.get("plausible", True):
                lines.append(f"batch {batch} {kind}: {verdict['reason']}; {NOISE_ADVICE}")
    return lines
