"""The SmolLM2 sweep for bench/RESULTS.md (issue 7): quality against layers removed, per criterion.

Calibration on the C4 validation slice (so it never overlaps the evaluation text), WikiText-2 token perplexity from
../shared/data, without healing for n = 0..14 and with a short LoRA healing on a subset of n.

    python bench/bench_sweep.py --out /tmp/bench-sweep            # both sweeps, then prints the markdown tables
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

from depthprune import api

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


def table(result: dict, metric: str) -> str:
    methods = result["methods"]
    counts = sorted({p["n"] for p in result["points"]})
    lines = ["| n removed | " + " | ".join(methods) + " |", "|---:|" + "---:|" * len(methods)]
    for n in counts:
        row = []
        for method in methods:
            point = next(p for p in result["points"] if p["method"] == method and p["n"] == n)
            row.append(f"{point[metric]:.4g}")
        lines.append(f"| {n} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="/tmp/bench-sweep")
    parser.add_argument("--n", default="0:14")
    parser.add_argument("--healed-n", default="0,4,8,12")
    parser.add_argument("--heal-steps", type=int, default=12)
    parser.add_argument("--windows", type=int, default=32)
    parser.add_argument("--skip-healed", action="store_true")
    parser.add_argument("--healed-only", action="store_true", help="reuse OUT/plain (its scores) and run the healed sweep")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (1 when sharing the cores)")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    common = dict(methods="angular,bi,last,ppl", eval="wikitext2", data=str(DATA / "c4" / "c4_validation_2k.jsonl"),
                  samples=16, seq_len=256, eval_seq_len=256, data_dir=str(DATA), max_windows=args.windows)
    loaded = api.load_model("smollm2-135m")
    timings = {}
    if not args.healed_only:
        started = time.perf_counter()
        plain = api.sweep(loaded, n=args.n, output=out / "plain", force=True, **common)
        timings["plain_s"] = round(time.perf_counter() - started, 1)
        print("## without healing\n" + table(plain, "wikitext2_ppl"))
    if not args.skip_healed:
        started = time.perf_counter()
        healed = api.sweep(loaded, n=args.healed_n, heal_steps=args.heal_steps, heal_method="lora",
                           heal_data=common["data"], scores=out / "plain" / "scores.json", output=out / "healed",
                           force=True, **common)
        timings["healed_s"] = round(time.perf_counter() - started, 1)
        print("## with LoRA healing\n" + table(healed, "wikitext2_ppl"))
    timings["machine"] = platform.processor() or platform.machine()
    (out / f"timings{'-healed' if args.healed_only else ''}.json").write_text(json.dumps(timings, indent=2))
    print(json.dumps(timings))


if __name__ == "__main__":
    main()
