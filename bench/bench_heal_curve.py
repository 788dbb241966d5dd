"""Healing curves: WikiText-2 perplexity against training tokens and wall time while one pruned SmolLM2-135M heals.

    # the best recovery in 30 minutes: BI's 8 layers, linear compensation, distillation from the cached teacher
    python bench/bench_heal_curve.py --compensate linear --fit-samples 128 --method distill --top-k 64 \\
        --tokens 131072 --total-minutes 30 --mixed-precision bf16 --output curve-best.json
    # tokens to reach 3x dense from the uncompensated cut (anytime: constant learning rate after warm-up)
    python bench/bench_heal_curve.py --method lora --lr 1e-3 --schedule constant --tokens 65536 \\
        --eval-every 2048 --stop-below 139.8 --output curve-lora.json

The model is pruned (``--layers``, default BI's choice on this calibration: 12-17, 25, 26), optionally compensated
(``--compensate``, fitted on ``--fit-samples`` C4 blocks of 256 tokens) and saved; then ``depthprune.heal`` trains it on
the C4 slice of ``../shared/data`` ($DEPTHPRUNE_SHARED_DATA overrides) with the given method, and a callback measures
WikiText-2 test token perplexity (non-overlapping 256-token windows, the first ``--windows``; the figure of
bench/RESULTS.md's compensation table) every ``--eval-every`` training tokens. Training seconds run from the call to heal()
(so they include its setup: the data and the cached teacher's pass) and exclude those evaluations; ``--minutes`` stops the run once the training seconds reach it (``--total-minutes``: once pruning, compensation and
training seconds do) (the last point is measured there).
Under ``--mixed-precision bf16`` the mid-run points are measured through the forward as trained (bf16 autocast).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DEPTHPRUNE_SHARED_DATA", REPO.parent / "shared" / "data"))
C4 = SHARED / "c4" / "c4_validation_2k.jsonl"


class TimeIsUp(Exception):
    """Raised from the step callback when the training-time budget is spent (the point was measured first)."""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", default="12-17,25,26", help="layers to remove (BI's 8 on 32 C4 blocks of 256)")
    parser.add_argument("--compensate", default="none", help="none | linear | cosine | scale")
    parser.add_argument("--fit-samples", type=int, default=32, help="C4 blocks of 256 tokens the compensation fits on")
    parser.add_argument("--method", default="distill", help="lora | full | distill")
    parser.add_argument("--top-k", type=int, default=64, help="distill: the cached teacher's top k (0: on the fly)")
    parser.add_argument("--top-k-norm", default="top-k", help="distill with --top-k: top-k | vocab")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--schedule", default="cosine", help="cosine | constant (after the warm-up)")
    parser.add_argument("--warmup-steps", type=int, default=10)
    parser.add_argument("--tokens", type=int, default=65536, help="the training budget the schedule is sized for")
    parser.add_argument("--minutes", type=float, default=None, help="stop when training seconds reach this")
    parser.add_argument("--total-minutes", type=float, default=None,
                        help="stop when pruning + compensation + training seconds reach this")
    parser.add_argument("--stop-below", type=float, default=None, help="stop at the first point below this ppl")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--eval-every", type=int, default=16384, help="training tokens between perplexity points")
    parser.add_argument("--windows", type=int, default=32, help="WikiText-2 windows of 256 tokens")
    parser.add_argument("--mixed-precision", default="no", help="no | bf16 | auto")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", default=None, help="folder for the pruned model (default: a temp folder)")
    parser.add_argument("--output", default=None, help="write the curve as JSON here")
    args = parser.parse_args()
    if not C4.is_file():
        raise SystemExit(f"missing {C4}")
    torch.set_num_threads(args.threads)

    import depthprune
    from depthprune.data import DataSpec
    from depthprune.evaluate.perplexity import load_ppl_text, token_perplexity
    from depthprune.heal import heal

    work = Path(args.work or tempfile.mkdtemp(prefix="bench-heal-curve-"))
    text = load_ppl_text("wikitext2", SHARED)
    started = time.perf_counter()
    loaded = depthprune.load_model("smollm2-135m", dtype="float32")
    tokenizer = loaded.tokenizer

    def wikitext(model) -> float:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            ppl = token_perplexity(model, tokenizer, text, seq_len=256, max_windows=args.windows)["ppl"]
        model.train(was_training)
        return ppl

    dense = wikitext(loaded.model)
    pruned_dir = work / "pruned"
    fit_data = DataSpec(source=str(C4), samples=args.fit_samples, seq_len=256)
    began = time.perf_counter()
    depthprune.prune(loaded, layers=args.layers, output=pruned_dir, force=True, compensate=args.compensate,
                     data=fit_data if args.compensate != "none" else None)
    prune_seconds = time.perf_counter() - began
    del loaded
    budget_s = args.minutes * 60 if args.minutes is not None else None
    if args.total_minutes is not None:
        budget_s = args.total_minutes * 60 - prune_seconds
    student = depthprune.load_model(str(pruned_dir), dtype="float32")
    tokens_per_step = args.batch_size * args.seq_len
    points = [{"tokens": 0, "train_s": 0.0, "ppl": wikitext(student.model)}]
    print(json.dumps({"dense": dense, "prune_s": round(prune_seconds, 1), **points[0]}), flush=True)

    # heal()'s own setup (data, the teacher's cache pass) counts as training time; our evaluations do not
    clock = {"heal_called": time.perf_counter(), "evaluating": 0.0, "setup_and_step_1_s": None}

    def after_step(step: int, loss: float) -> None:
        now = time.perf_counter()
        train_s = now - clock["heal_called"] - clock["evaluating"]
        if clock["setup_and_step_1_s"] is None:
            clock["setup_and_step_1_s"] = round(train_s, 1)
        tokens = step * tokens_per_step
        out_of_time = budget_s is not None and train_s >= budget_s
        if tokens % args.eval_every and not out_of_time and step * tokens_per_step < args.tokens:
            return
        eval_began = time.perf_counter()
        point = {"tokens": tokens, "step": step, "train_loss": loss, "train_s": round(train_s, 1),
                 "ppl": wikitext(student.model)}
        clock["evaluating"] += time.perf_counter() - eval_began
        points.append(point)
        print(json.dumps(point), flush=True)
        if out_of_time or (args.stop_below is not None and point["ppl"] < args.stop_below):
            raise TimeIsUp

    settings = {"method": args.method, "lr": args.lr, "schedule": args.schedule, "warmup_steps": args.warmup_steps,
                "tokens": args.tokens, "seq_len": args.seq_len, "batch_size": args.batch_size, "eval_every": 10**9,
                "save_every": 10**9, "eval_samples": 0}
    if args.method == "distill":
        settings["top_k"] = args.top_k
        if args.top_k:
            settings["top_k_norm"] = args.top_k_norm
    stopped = "budget"
    try:
        heal(student, data=DataSpec(source=str(C4), samples=0, seq_len=args.seq_len), output=work / "healed",
             force=True, plots=False, progress=True, callback=after_step, mixed_precision=args.mixed_precision,
             cpu=True, **settings)
    except TimeIsUp:
        stopped = "time" if args.stop_below is None or points[-1]["ppl"] >= args.stop_below else "below target"
    summary = {"machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
                          f"{args.threads} thread(s), CPU", "command": " ".join(sys.argv), "settings": vars(args),
               "dense": dense, "prune_and_compensate_s": round(prune_seconds, 1), "stopped_by": stopped,
               "setup_and_step_1_s": clock["setup_and_step_1_s"],
               "points": points, "total_wall_s": round(time.perf_counter() - started, 1)}
    if args.output:
        Path(args.output).write_text(json.dumps(summary, indent=2))
    print(f"\ndense {dense:.2f}; {args.compensate} compensation {prune_seconds:.0f} s; stopped by {stopped}")
    print("| train tokens | train s | WikiText-2 ppl@256 | x dense |")
    print("|---:|---:|---:|---:|")
    for point in points:
        print(f"| {point['tokens']:,} | {point['train_s']:.0f} | {point['ppl']:.2f} | {point['ppl'] / dense:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
