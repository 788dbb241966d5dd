"""Benchmark the evaluator on the real model: dense SmolLM2-135M-Instruct on the shared tasks, WikiText-2 token
perplexity at 128 and 2048, and speed of the dense model against a copy with 8 of its 30 layers removed.

Usage (from the repository root; CPU time is scarce, so the defaults take subsets and say so in the output):

    python bench/bench_eval.py --data-dir ../shared/data --output bench/out/eval [--limit 200] [--threads 1]

Writes OUTPUT/results.json and OUTPUT/results.md (atomically) and prints the tables with the published figures.
"""

from __future__ import annotations

import argparse
import copy
import platform
import time

import torch

import depthprune
from depthprune.evaluate import compare_speed, markdown_table, write_results
from depthprune.evaluate.lm_wrapper import DepthpruneLM
from depthprune.evaluate.multiple_choice import evaluate_task
from depthprune.evaluate.perplexity import perplexity
from depthprune.evaluate.tasks import get_task
from depthprune.saving import check_output_dir

# Published lm-eval 0-shot figures for SmolLM2-135M-Instruct (issue 4), in percent: task -> (metric, value).
PUBLISHED = {"arc_easy": ("acc", 54.1), "hellaswag": ("acc_norm", 43.0), "piqa": ("acc_norm", 66.9),
             "arc_challenge": ("acc_norm", 27.7)}
SHARED_TASKS = ("arc_easy", "hellaswag", "piqa", "boolq", "openbookqa")
REMOVED = list(range(21, 29))  # 8 of 30 layers, the final layer kept; which 8 does not matter for speed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--output", default="bench/out/eval")
    parser.add_argument("--force", action="store_true")
    parser.add_argument("--tasks", default=",".join(SHARED_TASKS))
    parser.add_argument("--limit", type=int, default=200, help="first N items per task (0: all)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--ppl-tokens", type=int, default=32768,
                        help="predicted-token budget per perplexity length: windows = budget // seq_len (0: all)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--speed-repeats", type=int, default=5)
    parser.add_argument("--skip", default="", help="comma list of sections to skip: tasks,ppl,speed")
    args = parser.parse_args()
    check_output_dir(args.output, args.force)
    torch.set_num_threads(args.threads)
    skip = set(filter(None, args.skip.split(",")))

    loaded = depthprune.load_model("smollm2-135m")
    results = {"model": loaded.description, "machine": {"platform": platform.platform(),
               "processor": platform.processor(), "torch": torch.__version__, "threads": args.threads},
               "settings": vars(args), "timings_s": {}}
    limit = args.limit or None
    if "tasks" not in skip:
        lm = DepthpruneLM(loaded.model, loaded.tokenizer, batch_size=args.batch_size)
        results["tasks"] = {}
        for name in filter(None, args.tasks.split(",")):
            start = time.perf_counter()
            results["tasks"][name] = evaluate_task(lm, get_task(name), args.data_dir, limit=limit)
            results["timings_s"][name] = time.perf_counter() - start
            print(name, results["tasks"][name], flush=True)
    if "ppl" not in skip:
        results["perplexity"] = {}
        for seq_len in (128, 2048):
            start = time.perf_counter()
            windows = args.ppl_tokens // seq_len if args.ppl_tokens else None
            results["perplexity"][f"wikitext2@{seq_len}"] = perplexity(
                loaded.model, loaded.tokenizer, "wikitext2", seq_len=seq_len, data_dir=args.data_dir,
                max_windows=windows)
            results["timings_s"][f"wikitext2@{seq_len}"] = time.perf_counter() - start
            print(seq_len, results["perplexity"][f"wikitext2@{seq_len}"], flush=True)
    if "speed" not in skip:
        pruned = copy.deepcopy(loaded.model)
        depthprune.remove_layers(pruned, REMOVED)
        start = time.perf_counter()
        results["speed"] = compare_speed(pruned, loaded.model, batch_sizes=(1, 4), prompt_len=128, new_tokens=32,
                                         repeats=args.speed_repeats, warmup=1)
        results["speed"]["removed_layers"] = REMOVED
        results["timings_s"]["speed"] = time.perf_counter() - start
    write_results(results, args.output, force=args.force)
    print(markdown_table(results))
    for name, (metric, value) in PUBLISHED.items():
        ours = results.get("tasks", {}).get(name, {}).get(metric)
        if ours is not None:
            print(f"{name} {metric}: ours {ours * 100:.1f} (n={results['tasks'][name]['n']}) vs published {value}")


if __name__ == "__main__":
    main()
