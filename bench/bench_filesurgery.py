"""Benchmarks of pruning at the file level (see bench/RESULTS.md, "File-level surgery").

    python bench/bench_filesurgery.py synthetic --folder /tmp/fs-bench   # bf16 Llama-style checkpoint > RAM
    python bench/bench_filesurgery.py smollm2                          # file path vs in-memory path, GGUF path
    python bench/bench_filesurgery.py llamacpp                         # llama.cpp speed of the pruned Q4_1 GGUF

``synthetic`` writes a random-weight checkpoint shard by shard (a random block tiled, so that writing it is
disk-bound), prunes 25% of its layers by the file path under ``/usr/bin/time -v`` (peak RSS, wall time), removes the
source, copies the output with ``cp -r`` (the same bytes), and deletes everything. Each step's command is printed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


def timed(command: list[str], env: dict | None = None) -> dict:
    """Wall seconds and peak RSS of ``command`` by /usr/bin/time -v (nice -n 5, so it yields to others)."""
    print("$", " ".join(command), flush=True)
    result = subprocess.run(["nice", "-n", "5", "/usr/bin/time", "-v", *command], capture_output=True, text=True,
                            env={**os.environ, **(env or {})})
    if result.returncode != 0:
        sys.exit(f"failed ({result.returncode}):\n{result.stderr[-3000:]}")
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr)[1]) * 1024
    clock = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", result.stderr)[1]
    seconds = 0.0
    for part in clock.split(":"):
        seconds = seconds * 60 + float(part)
    return {"seconds": seconds, "peak_rss_bytes": rss}


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def write_synthetic(folder: Path, layers: int, layers_per_shard: int, hidden: int = 5120, ffn: int = 13824,
                    vocab: int = 32000) -> int:
    """A Llama-2-13B-shaped (by default) bf16 checkpoint with ``layers`` layers, written shard by shard; returns its bytes."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    config = LlamaConfig(hidden_size=hidden, intermediate_size=ffn, num_attention_heads=40, num_key_value_heads=40,
                         num_hidden_layers=layers, vocab_size=vocab, max_position_embeddings=4096,
                         tie_word_embeddings=False, dtype="bfloat16")
    folder.mkdir(parents=True)
    config.save_pretrained(folder)
    block = torch.randn(1 << 24, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    hidden, ffn = config.hidden_size, config.intermediate_size

    def tensor(*shape):      # random values: a random block tiled (generating 30 GB of fresh randoms is CPU-bound)
        count = math.prod(shape)
        return block.repeat(-(-count // block.numel()))[:count].view(*shape).clone()

    groups = [list(range(start, min(start + layers_per_shard, layers))) for start in range(0, layers, layers_per_shard)]
    shard_count = len(groups) + 1
    weight_map = {}
    total = 0
    for number, group in enumerate([None] + groups, start=1):
        name = f"model-{number:05d}-of-{shard_count:05d}.safetensors"
        if group is None:
            tensors = {"model.embed_tokens.weight": tensor(config.vocab_size, hidden),
                       "model.norm.weight": tensor(hidden), "lm_head.weight": tensor(config.vocab_size, hidden)}
        else:
            tensors = {}
            for i in group:
                prefix = f"model.layers.{i}."
                for projection in ("q_proj", "k_proj", "v_proj", "o_proj"):
                    tensors[f"{prefix}self_attn.{projection}.weight"] = tensor(hidden, hidden)
                tensors[f"{prefix}mlp.gate_proj.weight"] = tensor(ffn, hidden)
                tensors[f"{prefix}mlp.up_proj.weight"] = tensor(ffn, hidden)
                tensors[f"{prefix}mlp.down_proj.weight"] = tensor(hidden, ffn)
                tensors[f"{prefix}input_layernorm.weight"] = tensor(hidden)
                tensors[f"{prefix}post_attention_layernorm.weight"] = tensor(hidden)
        save_file(tensors, folder / name, metadata={"format": "pt"})
        total += sum(t.numel() * t.element_size() for t in tensors.values())
        weight_map.update({key: name for key in tensors})
        print(f"wrote {name} ({folder_bytes(folder) / 2**30:.1f} GiB so far)", flush=True)
        del tensors
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return folder_bytes(folder)


def synthetic(args) -> dict:
    folder = Path(args.folder)
    source, output, copy = folder / "source", folder / "pruned", folder / "copy"
    free = shutil.disk_usage(folder.parent if not folder.exists() else folder).free
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    print(f"free disk: {free / 2**30:.1f} GiB; RAM: {memory / 2**30:.1f} GiB", flush=True)
    per_layer = 4 * args.hidden**2 + 3 * args.hidden * args.ffn
    need = 1.9 * 2 * (per_layer * args.layers + 2 * args.vocab * args.hidden)    # source + output, bf16
    if free < need:
        sys.exit(f"not enough disk: {free / 2**30:.1f} GiB free, ~{need / 2**30:.0f} GiB needed")
    try:
        started = time.perf_counter()
        source_bytes = write_synthetic(source, args.layers, args.layers_per_shard, args.hidden, args.ffn, args.vocab)
        generated = time.perf_counter() - started
        removed = f"{args.layers - args.remove - 1}-{args.layers - 2}"
        prune = timed([PYTHON, "-m", "depthprune", "prune", str(source), "--layers", removed, "--surgery", "file",
                       "--threads", "1", "--output", str(output)], env={"PYTHONPATH": str(REPO)})
        output_bytes = folder_bytes(output)
        shutil.rmtree(source)      # the disk holds the output and its copy, not three checkpoints
        cp = timed(["cp", "-r", str(output), str(copy)])
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return {"source_bytes": source_bytes, "output_bytes": output_bytes, "generate_seconds": generated,
            "removed_layers": removed, "layers": args.layers, "prune": prune, "cp": cp,
            "prune_over_cp_time": prune["seconds"] / cp["seconds"]}


def smollm2(args) -> dict:
    from depthprune.loading import _gguf_cache_dir, load_model, resolve_alias

    gguf_path, _ = resolve_alias("smollm2-135m")
    load_model("smollm2-135m")           # makes the dequantised safetensors copy (the in-memory path's source)
    source = _gguf_cache_dir(gguf_path)
    work = Path(args.folder)
    work.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict]] = {"file": [], "memory": [], "gguf": []}
    sizes = {}
    env = {"PYTHONPATH": str(REPO)}
    for repeat in range(args.repeats):          # interleaved, so that drifts in load hit every path alike
        for path in ("file", "memory", "gguf"):
            out = work / (f"{path}.gguf" if path == "gguf" else path)
            model = "smollm2-135m" if path == "gguf" else str(source)
            extra = [] if path == "gguf" else ["--surgery", path]
            runs[path].append(timed([PYTHON, "-m", "depthprune", "prune", model, "--layers", "20-27", *extra,
                                     "--threads", "1", "--output", str(out), "--force"], env=env))
            sizes[path] = out.stat().st_size if out.is_file() else folder_bytes(out)
    shutil.rmtree(work, ignore_errors=True)
    summary = {path: {"median_seconds": statistics.median(r["seconds"] for r in values),
                      "min_seconds": min(r["seconds"] for r in values),
                      "max_seconds": max(r["seconds"] for r in values),
                      "peak_rss_bytes": max(r["peak_rss_bytes"] for r in values), "output_bytes": sizes[path]}
               for path, values in runs.items()}
    summary["source_safetensors_bytes"] = folder_bytes(source)
    summary["source_gguf_bytes"] = gguf_path.stat().st_size
    return summary


def llamacpp(args) -> dict:
    from depthprune import api
    from depthprune.evaluate.runner import speed_markdown
    from depthprune.evaluate.speed_llamacpp import compare_speed_llamacpp
    from depthprune.loading import resolve_alias

    gguf_path, _ = resolve_alias("smollm2-135m")
    out = Path(args.folder) / "x.gguf"
    out.parent.mkdir(parents=True, exist_ok=True)
    api.prune("smollm2-135m", layers="20-27", output=out, force=True)
    speed = compare_speed_llamacpp(out, gguf_path, prompt_len=args.prompt_len, new_tokens=args.new_tokens,
                                   repeats=args.repeats, threads=args.threads)
    print("\n".join(speed_markdown(speed)))
    out.unlink()
    return speed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="bench", required=True)
    one = sub.add_parser("synthetic")
    one.add_argument("--folder", default="/tmp/fs-bench")
    one.add_argument("--layers", type=int, default=44)
    one.add_argument("--remove", type=int, default=11, help="layers removed (default 11 of 44 = 25%%)")
    one.add_argument("--layers-per-shard", type=int, default=4)
    one.add_argument("--hidden", type=int, default=5120)
    one.add_argument("--ffn", type=int, default=13824)
    one.add_argument("--vocab", type=int, default=32000)
    two = sub.add_parser("smollm2")
    two.add_argument("--folder", default="/tmp/fs-bench-smollm2")
    two.add_argument("--repeats", type=int, default=3)
    three = sub.add_parser("llamacpp")
    three.add_argument("--folder", default="/tmp/fs-bench-llamacpp")
    three.add_argument("--repeats", type=int, default=7)
    three.add_argument("--prompt-len", type=int, default=128)
    three.add_argument("--new-tokens", type=int, default=32)
    three.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    result = {"synthetic": synthetic, "smollm2": smollm2, "llamacpp": llamacpp}[args.bench](args)
    print(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
