"""LaCo (paper and notebook merges) against plain removal by angular distance and by Block Influence, at equal depth.

Usage (from the repository root, venv active)::

    python bench/bench_collapse.py --removed 8 --combine 3 --ppl-windows 48 --zero-shot-limit 50

Every method removes the same number of layers from SmolLM2-135M-Instruct (30 layers, float32, CPU):

- LaCo, ``merge=paper`` and ``merge=notebook``: :func:`depthprune.collapse.collapse` in target mode (the threshold is
  searched so that exactly ``--removed`` layers go), calibrated on C4 validation documents.
- Angular distance (Gromov et al.): the block of ``--removed`` consecutive layers with the smallest
  ``arccos(cos(h[l]_T, h[l+n]_T)) / pi`` on the last token, the final layer never in the block.
- Block Influence (ShortGPT): the ``--removed`` layers with the lowest ``1 - mean cos(h[l], h[l+1])`` over all
  tokens, the final layer excluded.

Angular distance and BI are computed HERE from ``output_hidden_states`` plus a hook on the last layer (its pre-norm
output), on C4 calibration blocks, independently of ``depthprune.scoring``.

Perplexity: WikiText-2 raw test (``../shared/data/wikitext2/wiki.test.raw``), the Hugging Face rows joined with
"\\n\\n", tokenised once, non-overlapping windows of ``--ppl-seq-len`` tokens; only the first ``--ppl-windows``
windows are scored (CPU budget), each predicting tokens 2..seq_len. Zero-shot (optional): the shared evaluator
``depthprune.evaluate`` on the first ``--zero-shot-limit`` items of each task, when that module is importable.
Timings are wall-clock seconds to produce each pruned model (scoring/walk + surgery), with ``--threads`` threads.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def wikitext_text(path: Path) -> str:
    raw = path.read_text(encoding="utf-8")
    lines = raw.split("\n")[:-1] if raw.endswith("\n") else raw.split("\n")
    rows = ["" if not line.strip() else line + "\n" for line in lines]   # the Hugging Face rows
    return "\n\n".join(rows)


@torch.no_grad()
def perplexity(model, windows: torch.Tensor) -> float:
    """Token perplexity: exp(summed NLL of tokens 2..seq_len of every window / their count)."""
    total, count = 0.0, 0
    for window in windows:
        ids = window.unsqueeze(0)                                   # (1, seq_len)
        logits = model(input_ids=ids, use_cache=False).logits[0]    # (seq_len, vocab)
        total += torch.nn.functional.cross_entropy(logits[:-1].float(), ids[0, 1:], reduction="sum").item()
        count += ids.shape[1] - 1
    return math.exp(total / count)


@torch.no_grad()
def pre_norm_states(model, blocks: torch.Tensor, batch_size: int = 4) -> list[torch.Tensor]:
    """h[0..L] as in METHODS.md: h[l] enters layer l; h[L] is layer L-1's output BEFORE the final norm."""
    from depthprune import ModelAdapter

    adapter = ModelAdapter(model)
    captured = []
    hook = adapter.layers[-1].register_forward_hook(
        lambda module, args, output: captured.append((output[0] if isinstance(output, tuple) else output).float()))
    per_batch = []
    try:
        for start in range(0, blocks.shape[0], batch_size):
            captured.clear()
            out = adapter.decoder(input_ids=blocks[start:start + batch_size], output_hidden_states=True,
                                  use_cache=False)
            states = [h.float() for h in out.hidden_states[:-1]] + [captured[0]]   # L+1 x (batch, seq, hidden)
            per_batch.append(states)
    finally:
        hook.remove()
    return [torch.cat([states[i] for states in per_batch]) for i in range(len(per_batch[0]))]


def angular_block(states: list[torch.Tensor], n: int) -> tuple[int, list[float]]:
    """argmin_l d(l, n) over blocks l..l+n-1 that do not contain the final layer; and d for every l."""
    num_layers = len(states) - 1
    distances = []
    for start in range(0, num_layers - n):          # start + n <= L - 1: the block ends before the final layer
        cos = torch.nn.functional.cosine_similarity(states[start][:, -1], states[start + n][:, -1], dim=-1)
        distances.append(float((torch.arccos(cos.clamp(-1, 1)) / math.pi).mean()))
    return min(range(len(distances)), key=distances.__getitem__), distances


def block_influence(states: list[torch.Tensor]) -> list[float]:
    """BI_l = 1 - mean over tokens of cos(h[l], h[l+1]), for every layer."""
    return [1.0 - float(torch.nn.functional.cosine_similarity(states[i], states[i + 1], dim=-1).mean())
            for i in range(len(states) - 1)]


def zero_shot(model, tokenizer, tasks: list[str], limit: int) -> dict:
    """lm-eval's scores of ``tasks`` on the first ``limit`` items of the shared data (depthprune.evaluate.harness)."""
    from depthprune.evaluate.harness import build_tasks, run_tasks

    results = {}
    for name in tasks:
        try:
            results.update(run_tasks(model, tokenizer, build_tasks([name], SHARED), limit=limit, batch_size=16)[0])
        except Exception as error:
            results[name] = {"skipped": f"{type(error).__name__}: {error}"}
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--removed", type=int, default=8)
    parser.add_argument("--combine", type=int, default=3, help="LaCo C")
    parser.add_argument("--interval", type=int, default=1, help="LaCo I")
    parser.add_argument("--laco-high", type=int, default=None, help="LaCo high (default: the last layer)")
    parser.add_argument("--methods", default="dense,laco_paper,laco_notebook,angular,bi",
                        help="comma-separated subset to run")
    parser.add_argument("--laco-samples", type=int, default=5)
    parser.add_argument("--laco-seq-len", type=int, default=128)
    parser.add_argument("--score-samples", type=int, default=16)
    parser.add_argument("--score-seq-len", type=int, default=256)
    parser.add_argument("--ppl-seq-len", type=int, default=256)
    parser.add_argument("--ppl-windows", type=int, default=48)
    parser.add_argument("--zero-shot", default="arc_easy,piqa")
    parser.add_argument("--zero-shot-limit", type=int, default=0, help="0: skip zero-shot")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default="/tmp/bench_collapse.json")
    parser.add_argument("--plots", default="/tmp", help="folder for the LaCo similarity plots")
    args = parser.parse_args(argv)

    import depthprune
    from depthprune import DataSpec, ModelAdapter, calibration_blocks, remove_layers
    from depthprune.collapse import collapse

    torch.set_num_threads(args.threads)
    c4 = SHARED / "c4" / "c4_validation_2k.jsonl"
    loaded = depthprune.load_model("smollm2-135m")
    model, tokenizer = loaded.model, loaded.tokenizer
    num_layers = ModelAdapter(model).num_layers
    ids = tokenizer(wikitext_text(SHARED / "wikitext2" / "wiki.test.raw"), return_tensors="pt")["input_ids"][0]
    count = min(args.ppl_windows, ids.numel() // args.ppl_seq_len)
    windows = ids[:count * args.ppl_seq_len].view(count, args.ppl_seq_len)
    results = {"machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
                          f"{args.threads} thread(s), shared 2-core VM",
               "command": " ".join(["python", "bench/bench_collapse.py"] + (argv or sys.argv[1:])),
               "ppl": {"source": "wikitext2/wiki.test.raw", "seq_len": args.ppl_seq_len, "windows": count,
                       "tokens_scored": count * (args.ppl_seq_len - 1), "test_tokens_total": int(ids.numel())},
               "methods": {}}
    tasks = [t for t in args.zero_shot.split(",") if t] if args.zero_shot_limit else []

    def record(name, pruned, seconds, removed, extra=None):
        start = time.time()
        entry = {"removed": removed, "layers": ModelAdapter(pruned).num_layers, "seconds_to_prune": seconds,
                 "wikitext2_ppl": perplexity(pruned, windows), **(extra or {})}
        if tasks:
            entry["zero_shot"] = zero_shot(pruned, tokenizer, tasks, args.zero_shot_limit)
        entry["seconds_to_evaluate"] = time.time() - start
        results["methods"][name] = entry
        print(name, json.dumps(entry), flush=True)
        Path(args.json).write_text(json.dumps(results, indent=2))

    methods = set(args.methods.split(","))
    if "dense" in methods:
        record("dense", model, 0.0, [])

    for merge in ("paper", "notebook"):
        if f"laco_{merge}" not in methods:
            continue
        start = time.time()
        result = collapse(loaded, DataSpec(source=str(c4), samples=args.laco_samples, seq_len=args.laco_seq_len),
                          dry_run=True, combine=args.combine, interval=args.interval, high=args.laco_high, merge=merge,
                          remove=args.removed, plots=True, progress=False)
        seconds = time.time() - start
        if result.plot_png:
            Path(args.plots, f"laco_{merge}_high{args.laco_high}_similarity.png").write_bytes(result.plot_png)
        record(f"laco_{merge}", result.model, seconds, result.plan.removed_layers,
               {"threshold": result.threshold, "merges": result.merges, "rejected": len(result.rejected),
                "walk_steps": len(result.walk.steps), "candidates_evaluated": result.candidates_evaluated,
                "high": args.laco_high})

    if not methods & {"angular", "bi"}:
        print(json.dumps(results, indent=2))
        return 0
    start = time.time()
    blocks = calibration_blocks(DataSpec(source=str(c4), samples=args.score_samples, seq_len=args.score_seq_len),
                                tokenizer)
    states = pre_norm_states(model, blocks)
    scoring_seconds = time.time() - start
    best, distances = angular_block(states, args.removed)
    angular_removed = list(range(best, best + args.removed))
    bi = block_influence(states)
    bi_removed = sorted(sorted(range(num_layers - 1), key=bi.__getitem__)[:args.removed])
    del states
    for name, removed, evidence in (("angular", angular_removed, {"distance": distances[best]}),
                                    ("bi", bi_removed, {"bi": [bi[i] for i in bi_removed]})):
        start = time.time()
        pruned = copy.deepcopy(model)
        remove_layers(pruned, removed)
        record(name, pruned, scoring_seconds + time.time() - start, removed, evidence)
        del pruned
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
