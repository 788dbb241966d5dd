"""Benchmark the evaluator on the real model: dense SmolLM2-135M-Instruct on the shared tasks, WikiText-2 token
perplexity at 128 and 2048, and speed of the dense model against a copy with 8 of its 30 layers removed.

Usage (from the repository root; CPU time is scarce, so the defaults take subsets and say so in the output):

    python bench/bench_eval.py --data-dir ../shared/data --output bench/out/eval [--limit 200] [--threads 1]

With ``--before CHECKOUT`` it instead scores each task twice, side by side: once with the depthprune in CHECKOUT
(an older version, e.g. a worktree of main) and once with this one, each in its own process on the same items with
the same batch size, task by task interleaved, and writes OUTPUT/switch.json and OUTPUT/switch.md: figures, wall
and CPU seconds of the scoring, and tokens/s.

    python bench/bench_eval.py --before ../wt/lmeval-before --limit 400 --output bench/out/switch

Writes OUTPUT/results.json and OUTPUT/results.md (atomically) and prints the tables with the published figures.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

# Published lm-eval 0-shot figures for SmolLM2-135M-Instruct (issue 4), in percent: task -> (metric, value).
PUBLISHED = {"arc_easy": ("acc", 54.1), "hellaswag": ("acc_norm", 43.0), "piqa": ("acc_norm", 66.9),
             "arc_challenge": ("acc_norm", 27.7)}
SHARED_TASKS = ("arc_easy", "hellaswag", "piqa", "boolq", "openbookqa")
REMOVED = list(range(21, 29))  # 8 of 30 layers, the final layer kept; which 8 does not matter for speed


class ForwardCounter:
    """Counts forward passes and the token positions fed to them (padding included), via a pre-hook."""

    def __init__(self, model) -> None:
        self.calls = self.positions = 0
        self.handle = model.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module, args, kwargs) -> None:
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        self.calls += 1
        self.positions += int(input_ids.numel())


def unique_input_tokens(pairs, max_length: int) -> int:
    """Tokens of the distinct model inputs ``(context + continuation)[:-1]``: the work both evaluators must do
    (each runs identical inputs once)."""
    inputs = {tuple((list(context) + list(continuation))[-(max_length + 1):][:-1]) for context, continuation in pairs}
    return sum(len(ids) for ids in inputs)


def score_old(loaded, name: str, data_dir: str, limit: int, batch_size: int) -> dict:
    """depthprune before the switch: its own wrapper and scorer (evaluate/lm_wrapper.py, multiple_choice.py)."""
    from depthprune.evaluate.lm_wrapper import DepthpruneLM
    from depthprune.evaluate.multiple_choice import build_task_requests, evaluate_task, select_docs
    from depthprune.evaluate.tasks import get_task, load_task_docs

    start = time.perf_counter()
    task = get_task(name)
    docs = select_docs(task, load_task_docs(task, data_dir), limit)
    prepare_s = time.perf_counter() - start
    lm = DepthpruneLM(loaded.model, loaded.tokenizer, batch_size=batch_size)
    fewshot = task.load_fewshot(Path(data_dir) / name) if task.default_fewshot else None
    requests = [r for per_doc in build_task_requests(task, docs, task.default_fewshot, fewshot) for r in per_doc]
    tokens = unique_input_tokens([lm.encode_pair(*r) for r in requests], lm.max_length)
    counter = ForwardCounter(loaded.model)
    wall, cpu = time.perf_counter(), time.process_time()
    result = evaluate_task(lm, task, data_dir, limit=limit, docs=docs)
    return {"result": result, "score_wall_s": time.perf_counter() - wall, "score_cpu_s": time.process_time() - cpu,
            "prepare_s": prepare_s, "requests": len(requests), "unique_input_tokens": tokens,
            "forward_calls": counter.calls, "forward_positions": counter.positions}


def score_new(loaded, name: str, data_dir: str, limit: int, batch_size: int) -> dict:
    """depthprune after the switch: lm-eval's task and HFLM (evaluate/harness.py)."""
    from depthprune.evaluate.harness import build_tasks, run_tasks

    start = time.perf_counter()
    tasks = build_tasks([name], data_dir)
    prepare_s = time.perf_counter() - start
    counter = ForwardCounter(loaded.model)
    wall, cpu = time.perf_counter(), time.process_time()
    results, version = run_tasks(loaded.model, loaded.tokenizer, tasks, limit=limit, batch_size=batch_size)
    score_wall, score_cpu = time.perf_counter() - wall, time.process_time() - cpu
    # The requests lm-eval built, encoded as HFLM encodes them (its own _encode_pair).
    from lm_eval.models.huggingface import HFLM

    hflm = HFLM(pretrained=loaded.model, tokenizer=loaded.tokenizer, backend="causal", batch_size=batch_size)
    instances = [instance for task in tasks for instance in task.instances]
    tokens = unique_input_tokens([hflm._encode_pair(*instance.args) for instance in instances], hflm.max_length)
    return {"result": results[name], "score_wall_s": score_wall, "score_cpu_s": score_cpu, "prepare_s": prepare_s,
            "requests": len(instances), "unique_input_tokens": tokens, "forward_calls": counter.calls,
            "forward_positions": counter.positions, "lm_eval_version": version}


def worker(args) -> None:
    """One task with the depthprune on PYTHONPATH; prints one JSON line."""
    import torch

    import depthprune

    torch.set_num_threads(args.threads)
    loaded = depthprune.load_model("smollm2-135m")
    scorer = score_new if (Path(depthprune.__file__).parent / "evaluate" / "harness.py").is_file() else score_old
    measured = scorer(loaded, args.worker, args.data_dir, args.limit or None, args.batch_size)
    measured["depthprune"] = str(Path(depthprune.__file__).parent)
    print("BENCH-RESULT " + json.dumps(measured, default=str), flush=True)


def _run_worker(checkout: Path, name: str, args) -> dict:
    env = {**os.environ, "PYTHONPATH": str(checkout.resolve()), "OMP_NUM_THREADS": str(args.threads)}
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--data-dir",
               str(Path(args.data_dir).resolve()),
               "--limit", str(args.limit), "--batch-size", str(args.batch_size), "--threads", str(args.threads)]
    done = subprocess.run(command, env=env, stdout=subprocess.PIPE, text=True, check=True)
    line = next(line for line in done.stdout.splitlines() if line.startswith("BENCH-RESULT "))
    return json.loads(line.removeprefix("BENCH-RESULT "))


def _pct(entry: dict, metric: str) -> str:
    value = entry["result"].get(metric)
    return "–" if value is None else f"{value * 100:.2f}"


def switch_markdown(rows: dict, settings: dict) -> str:
    lines = [f"Before: {settings['before']}; after: {settings['after']}; first {settings['limit']} items per task, "
             f"batch size {settings['batch_size']}, {settings['threads']} thread(s).", "",
             "| task | n | acc before | acc after | acc_norm before | acc_norm after | request tokens (before/after) |"
             " score wall s before | after | after/before | CPU s before | after | after/before | tok/s before |"
             " tok/s after | forward positions before | after |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, (old, new) in rows.items():
        lines.append(
            f"| {name} | {old['result']['n']}/{new['result']['n']} | {_pct(old, 'acc')} | {_pct(new, 'acc')} | "
            f"{_pct(old, 'acc_norm')} | {_pct(new, 'acc_norm')} | {old['unique_input_tokens']}/"
            f"{new['unique_input_tokens']} | {old['score_wall_s']:.1f} | {new['score_wall_s']:.1f} | "
            f"{new['score_wall_s'] / old['score_wall_s']:.3f} | {old['score_cpu_s']:.1f} | {new['score_cpu_s']:.1f} | "
            f"{new['score_cpu_s'] / old['score_cpu_s']:.3f} | "
            f"{old['unique_input_tokens'] / old['score_wall_s']:.0f} | "
            f"{new['unique_input_tokens'] / new['score_wall_s']:.0f} | {old['forward_positions']} | "
            f"{new['forward_positions']} |")
    return "\n".join(lines) + "\n"


def switch(args) -> None:
    """Before and after, task by task, each in its own process (model load not timed)."""
    from depthprune.saving import atomic_output_dir, check_output_dir, write_json_atomic

    check_output_dir(args.output, args.force)
    before, after = Path(args.before), Path(__file__).resolve().parents[1]
    settings = {"before": str(before.resolve()), "after": str(after), "limit": args.limit,
                "batch_size": args.batch_size, "threads": args.threads, "data_dir": args.data_dir,
                "machine": {"platform": platform.platform(), "processor": platform.processor()}}
    rows = {}
    for name in filter(None, args.tasks.split(",")):
        old = _run_worker(before, name, args)
        new = _run_worker(after, name, args)
        rows[name] = (old, new)
        print(switch_markdown({name: rows[name]}, settings).splitlines()[-1], flush=True)
    table = switch_markdown(rows, settings)
    with atomic_output_dir(args.output, force=args.force) as tmp:
        write_json_atomic(tmp / "switch.json", {"settings": settings, "tasks": {
            name: {"before": old, "after": new} for name, (old, new) in rows.items()}})
        (tmp / "switch.md").write_text(table)
    print(table)


def full_run(args) -> None:
    import torch

    import depthprune
    from depthprune.evaluate import compare_speed, markdown_table, write_results
    from depthprune.evaluate.harness import build_tasks, run_tasks
    from depthprune.evaluate.perplexity import perplexity
    from depthprune.saving import check_output_dir

    check_output_dir(args.output, args.force)
    torch.set_num_threads(args.threads)
    skip = set(filter(None, args.skip.split(",")))
    loaded = depthprune.load_model("smollm2-135m")
    results = {"model": loaded.description, "machine": {"platform": platform.platform(),
               "processor": platform.processor(), "torch": torch.__version__, "threads": args.threads},
               "settings": vars(args), "timings_s": {}}
    if "tasks" not in skip:
        results["tasks"] = {}
        for name in filter(None, args.tasks.split(",")):
            start = time.perf_counter()
            scored, _ = run_tasks(loaded.model, loaded.tokenizer, build_tasks([name], args.data_dir),
                                  limit=args.limit or None, batch_size=args.batch_size)
            results["tasks"].update(scored)
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
    parser.add_argument("--before", default=None, metavar="CHECKOUT",
                        help="score the tasks with CHECKOUT's depthprune and with this one, side by side")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)   # one task in a child process
    args = parser.parse_args()
    if args.worker:
        worker(args)
    elif args.before:
        switch(args)
    else:
        full_run(args)


if __name__ == "__main__":
    main()
