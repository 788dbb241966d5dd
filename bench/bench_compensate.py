"""Training-free compensation benchmark: SmolLM2-135M with 8 of 30 layers removed by each criterion, plain and with
every compensation folded in (linear least squares fitted on the dense model and sequentially, cosine, scale).

    nice -n 5 python bench/bench_compensate.py --output bench-compensate.json      # what bench/RESULTS.md reports

Calibration (scoring and compensation): --samples blocks of --seq-len tokens from the C4 slice in
../shared/data/c4 ($DEPTHPRUNE_SHARED_DATA overrides ../shared/data). Evaluation: WikiText-2 test token perplexity in non-overlapping windows of 256 tokens, the
first --windows windows (depthprune.evaluate.perplexity). One thread by default (the machine is shared).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DEPTHPRUNE_SHARED_DATA", REPO.parent / "shared" / "data"))
# name -> (registry method, config options); the column names of bench/RESULTS.md
VARIANTS = {"linear-sequential": ("linear", {"fit": "sequential"}), "linear-dense": ("linear", {"fit": "dense"}),
            "cosine": ("cosine", {"fit": "sequential"}), "scale": ("scale", {"fit": "sequential"})}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--criteria", default="bi,angular,ppl,taylor,magnitude")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--n", type=int, default=8, help="layers removed")
    parser.add_argument("--samples", type=int, default=32, help="calibration blocks for scoring (and fitting)")
    parser.add_argument("--fit-samples", type=int, default=None,
                        help="calibration blocks for the compensation fits (default: --samples)")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--windows", type=int, default=32, help="WikiText-2 windows of 256 tokens")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--scores", default=None,
                        help="a scores.json folder: reused when it holds one (SLEB is slow), else written there")
    parser.add_argument("--output", default=None, help="write every figure as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import depthprune
    from depthprune.compensate import COMPENSATIONS, compensate
    from depthprune.data import DataSpec, calibration_blocks
    from depthprune.evaluate.perplexity import load_ppl_text, token_perplexity
    from depthprune.plan import PrunePlan, format_layer_list
    from depthprune.prune import apply_plan
    from depthprune.scoring.scores import score
    from depthprune.selection import select_layers

    loaded = depthprune.load_model("smollm2-135m")
    model, tokenizer = loaded.model, loaded.tokenizer
    spec = DataSpec(source=str(SHARED / "c4" / "c4_validation_2k.jsonl"), samples=args.samples, seq_len=args.seq_len)
    fit_spec = spec if args.fit_samples is None else DataSpec(source=spec.source, samples=args.fit_samples,
                                                                 seq_len=args.seq_len)
    ids = calibration_blocks(fit_spec, tokenizer, model=model)
    text = load_ppl_text("wikitext2", SHARED)

    def wikitext(candidate) -> float:
        return token_perplexity(candidate, tokenizer, text, seq_len=256, max_windows=args.windows)["ppl"]

    started = time.perf_counter()
    if args.scores and (Path(args.scores) / "scores.json").is_file():
        scores = json.loads((Path(args.scores) / "scores.json").read_text())
    else:
        scores = score(loaded, metrics=args.criteria, data=spec, output=args.scores, plots=False,
                       sleb_n=args.n if "sleb" in args.criteria else None)
    results = {"machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
                          f"{args.threads} thread(s)", "calibration": spec.describe(),
               "fit_calibration": fit_spec.describe(), "windows": args.windows,
               "n": args.n, "scoring_s": round(time.perf_counter() - started, 1), "dense": wikitext(model),
               "rows": []}
    print(f"dense WikiText-2 ppl@256 ({args.windows} windows): {results['dense']:.2f}", flush=True)
    for criterion in args.criteria.split(","):
        removed = select_layers(criterion, scores, args.n)[0]
        plan = PrunePlan(num_layers=30, removed_layers=removed, method=criterion)
        plain = copy.deepcopy(model)
        apply_plan(plain, plan)
        row = {"criterion": criterion, "removed": removed, "plain": wikitext(plain)}
        del plain
        for name in args.variants.split(","):
            method, options = VARIANTS[name]
            config = COMPENSATIONS.get(method).config_class(**options)
            candidate = copy.deepcopy(model)
            began = time.perf_counter()
            record = compensate(candidate, plan, method, ids, config=config, measure=False)
            seconds = time.perf_counter() - began
            row[name] = wikitext(candidate)
            row[f"{name}_fit_s"] = round(seconds, 1)
            row[f"{name}_gaps"] = [{k: v for k, v in gap.items() if k != "folded_into"} for gap in record["gaps"]]
            del candidate
            print(f"{criterion:<10} {format_layer_list(removed):<20} plain {row['plain']:9.2f}  "
                  f"{name:<12} {row[name]:9.2f}  ({row[name] / row['plain']:.3f}x, fit {seconds:.0f} s)", flush=True)
        results["rows"].append(row)
        if args.output:
            Path(args.output).write_text(json.dumps(results, indent=2))
    print("\n| criterion | removed | plain | " + " | ".join(args.variants.split(",")) + " |")
    print("|---|---|---|" + "---|" * len(args.variants.split(",")))
    for row in results["rows"]:
        cells = " | ".join(f"{row[v]:.2f} ({row[v] / row['plain']:.3f}x)" for v in args.variants.split(","))
        print(f"| {row['criterion']} | {format_layer_list(row['removed'])} | {row['plain']:.2f} | "
              f"{cells} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
