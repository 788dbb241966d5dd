"""Speed of GGUF files in llama.cpp (through llama-cpp-python): where local users run a pruned GGUF.

Same protocol and result shape as :func:`depthprune.evaluate.speed.compare_speed`: a prefill of ``prompt_len`` random
tokens, then ``new_tokens`` single-token decode steps on the KV cache, model and base interleaved run by run, medians
with their min-max, ratios of the medians. llama.cpp runs one sequence here, so the batch size is 1. The ideal
decode speed-up is the ratio of bytes read per generated token (every tensor once, quantised as stored, but one row of
the token embedding unless the head shares it); the ideal prefill speed-up is the layer ratio.
"""

from __future__ import annotations

import os
import resource
import statistics
import time
from pathlib import Path

import numpy as np

from ..errors import DepthpruneError


def gguf_file(spec, option: str) -> Path:
    """The GGUF file a model spec names (a path or an alias), or one line saying llama.cpp needs one."""
    from ..filesurgery.route import gguf_source

    path = gguf_source(spec)
    if path is None:
        raise DepthpruneError(f"--speed-backend llamacpp times GGUF files, and {option} {spec} is not one; write one "
                              "with depthprune prune ... --output OUT.gguf or depthprune export ... --to-gguf")
    if not path.is_file():
        raise DepthpruneError(f"{option} {path} does not exist; check the path")
    return path


def gguf_sizes(path: Path) -> dict:
    """Layer count, elements, bytes and bytes read per generated token of a GGUF file."""
    from ..filesurgery.gguf_files import GgufModel

    model = GgufModel.open(path)
    tensors = {t.name: t for t in model.reader.tensors}
    total = sum(int(t.n_bytes) for t in tensors.values())
    embedding = tensors.get("token_embd.weight")
    tied = "output.weight" not in tensors
    read = total if (tied or embedding is None) else total - int(embedding.n_bytes)
    kinds: dict[str, int] = {}
    for tensor in tensors.values():
        kinds[tensor.tensor_type.name] = kinds.get(tensor.tensor_type.name, 0) + int(tensor.n_bytes)
    return {"num_layers": model.num_layers, "parameters": sum(int(t.n_elements) for t in tensors.values()),
            "tensor_bytes": total, "weights_read_per_token": read, "weights_read_unit": "bytes",
            "checkpoint_bytes": path.stat().st_size, "checkpoint_size_from": "files",
            "dtype": max(kinds, key=kinds.get), "device": "cpu (llama.cpp)"}


def _open(path: Path, context: int, batch: int, threads: int):
    from llama_cpp import Llama

    return Llama(model_path=str(path), n_ctx=context, n_batch=batch, n_ubatch=batch, n_threads=threads,
                 n_threads_batch=threads, verbose=False)


def _time_run(llm, prompt: list[int], decode: list[int]) -> tuple[float, float]:
    """Seconds for one prefill of ``prompt`` and for the single-token decode steps of ``decode``."""
    llm.reset()
    start = time.perf_counter()
    llm.eval(prompt)
    prefill = time.perf_counter() - start
    start = time.perf_counter()
    for token in decode:
        llm.eval([token])
    return prefill, time.perf_counter() - start


def compare_speed_llamacpp(model, base=None, prompt_len: int = 128, new_tokens: int = 32, repeats: int = 5,
                           warmup: int = 1, seed: int = 0, threads: int | None = None, progress: bool = True) -> dict:
    """Time the GGUF ``model`` (and ``base``, interleaved) in llama.cpp; the result has compare_speed's shape."""
    from tqdm.auto import tqdm

    from ..extras import require
    from .speed import check_plausible, ideal_speedup, speed_warnings

    require("llama_cpp", purpose="--speed-backend llamacpp")
    if prompt_len < 1 or new_tokens < 1 or repeats < 1 or warmup < 0:
        raise DepthpruneError("speed settings need prompt length >= 1, new tokens >= 1, repeats >= 1, warm-up >= 0")
    paths = {"model": gguf_file(model, "the model")}
    if base is not None:
        paths["base"] = gguf_file(base, "--compare")
    threads = threads or _default_threads()
    models = {name: _open(path, prompt_len + new_tokens + 8, prompt_len, threads) for name, path in paths.items()}
    vocab = min(m.n_vocab() for m in models.values())
    generator = np.random.default_rng(seed)
    timings = {name: {"prefill": [], "decode": []} for name in models}
    bar = tqdm(total=(warmup + repeats) * len(models), desc="llama.cpp speed", unit="run", disable=not progress)
    for run in range(warmup + repeats):
        prompt = generator.integers(0, vocab, prompt_len).tolist()
        decode = generator.integers(0, vocab, new_tokens).tolist()
        for name, llm in models.items():     # interleaved: drifts in machine load hit both alike
            prefill, decoding = _time_run(llm, prompt, decode)
            if run >= warmup:
                timings[name]["prefill"].append(prefill)
                timings[name]["decode"].append(decoding)
            bar.update(1)
    bar.close()
    results = {}
    work = {"prefill": prompt_len, "decode": new_tokens}
    for name, path in paths.items():
        entry = {**gguf_sizes(path), "peak_memory_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                 "peak_memory_kind": "process peak RSS (all models in this process)", "file": str(path)}
        measured = {}
        for kind in ("prefill", "decode"):
            seconds = timings[name][kind]
            measured[f"{kind}_tokens_per_s"] = work[kind] / statistics.median(seconds)
            measured[f"{kind}_tokens_per_s_min"] = work[kind] / max(seconds)
            measured[f"{kind}_tokens_per_s_max"] = work[kind] / min(seconds)
            measured[f"{kind}_s"] = statistics.median(seconds)
            measured[f"{kind}_s_runs"] = list(seconds)
        entry["batches"] = {1: measured}
        results[name] = entry
    import llama_cpp

    results["settings"] = {"backend": "llama.cpp", "llama_cpp_python": getattr(llama_cpp, "__version__", "?"),
                           "batch_sizes": [1], "prompt_len": prompt_len, "new_tokens": new_tokens,
                           "repeats": repeats, "warmup": warmup, "statistic": "median",
                           "spread": "min-max over the repeats", "threads": threads, "cpu_count": os.cpu_count(),
                           "order": "interleaved run by run (model, base, ...)" if base is not None else "sequential"}
    if base is not None:
        ratio = {}
        for kind in ("prefill", "decode"):
            ratio[kind] = (results["model"]["batches"][1][f"{kind}_tokens_per_s"]
                           / results["base"]["batches"][1][f"{kind}_tokens_per_s"])
            pairs = [b / m for m, b in zip(timings["model"][kind], timings["base"][kind])]
            ratio[f"{kind}_min"], ratio[f"{kind}_max"] = min(pairs), max(pairs)
        results["ratios"] = {1: ratio}
        results["ideal"] = {"weights_read": results["base"]["weights_read_per_token"]
                            / results["model"]["weights_read_per_token"],
                            "layers": results["base"]["num_layers"] / results["model"]["num_layers"]}
        results["plausibility"] = {1: {kind: check_plausible(ratio[kind], ideal_speedup(results["ideal"], kind))
                                       for kind in ("prefill", "decode")}}
        results["warnings"] = speed_warnings(results)
    return results


def _default_threads() -> int:
    import torch

    return max(1, torch.get_num_threads())


def check_llamacpp_speed(model, base=None) -> None:
    """Refuse a llama.cpp timing that cannot run (package missing, a model that is not GGUF) before any work."""
    from ..extras import require

    require("llama_cpp", purpose="--speed-backend llamacpp")
    gguf_file(model, "the model")
    if base is not None:
        gguf_file(base, "--compare")
