"""Why the demo slows down 9x beside another CPU-bound process, and which thread setting avoids it.

Each condition runs the same float32 forward passes of a SmolLM2-135M-shaped Llama (random weights, 30 layers) in a
fresh process, so torch's thread pool and OpenMP's wait policy are set before torch starts. Conditions are
interleaved round by round; with ``--busy 1`` a pure-Python busy loop competes for a core the whole time.

    python bench/bench_threads.py --rounds 3 --busy 0
    python bench/bench_threads.py --rounds 3 --busy 1

Prints, per condition, the median wall time and CPU-seconds of the forward passes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

WORKER = r"""
import json, os, resource, sys, time
import torch
from transformers import LlamaConfig, LlamaForCausalLM
threads = sys.argv[1]
if threads == "auto":
    from depthprune.threads import free_threads
    threads = free_threads()
torch.set_num_threads(int(threads))
torch.manual_seed(0)
config = LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                     num_key_value_heads=3, vocab_size=49152, max_position_embeddings=2048, tie_word_embeddings=True)
model = LlamaForCausalLM(config).eval()
tokens = torch.randint(0, config.vocab_size, (4, 256))
with torch.no_grad():
    model(tokens)                                   # warm-up
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    for _ in range(int(sys.argv[2])):
        model(tokens)
    wall, cpu = time.perf_counter() - start_wall, time.process_time() - start_cpu
print(json.dumps({"threads": int(threads), "wall_s": wall, "cpu_s": cpu}))
"""

CONDITIONS = {
    "2 threads, OpenMP default wait": ("2", {}),
    "2 threads, OMP_WAIT_POLICY=PASSIVE": ("2", {"OMP_WAIT_POLICY": "PASSIVE"}),
    "1 thread": ("1", {}),
    "auto (free cores), PASSIVE": ("auto", {"OMP_WAIT_POLICY": "PASSIVE"}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--passes", type=int, default=4, help="forward passes of 4x256 tokens per measurement")
    parser.add_argument("--busy", type=int, default=0, help="competing busy-loop processes")
    args = parser.parse_args()

    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    results: dict[str, list[dict]] = {name: [] for name in CONDITIONS}
    try:
        for round_index in range(args.rounds):
            for name, (threads, env) in CONDITIONS.items():
                environment = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
                environment.update(env)
                out = subprocess.run([sys.executable, "-c", WORKER, threads, str(args.passes)], env=environment,
                                     capture_output=True, text=True, check=True).stdout
                results[name].append(json.loads(out.strip().splitlines()[-1]))
                print(f"round {round_index + 1}/{args.rounds} {name}: {results[name][-1]}", file=sys.stderr)
    finally:
        for process in busy:
            process.kill()
    print(f"\n{args.busy} competing busy loop(s), {args.rounds} rounds, {args.passes} passes of 4x256 tokens each")
    print("| condition | threads used | median wall s | median CPU s |")
    print("|---|---:|---:|---:|")
    for name, runs in results.items():
        print(f"| {name} | {sorted({r['threads'] for r in runs})} | "
              f"{statistics.median(r['wall_s'] for r in runs):.2f} | "
              f"{statistics.median(r['cpu_s'] for r in runs):.2f} |")


if __name__ == "__main__":
    main()
