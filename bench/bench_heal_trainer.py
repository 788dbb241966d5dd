"""Training throughput, ours against what users would write instead: the same LoRA config and the same batches
through transformers' ``Trainer`` + peft and through ``depthprune.heal.train``, side by side in one run.

    OMP_NUM_THREADS=1 python bench/bench_heal_trainer.py --steps 8 --rounds 2 --precisions fp32,bf16

Model: SmolLM2-135M with layers 11-18 removed (what a user heals), LoRA r=8, alpha=8, dropout 0.05 on the MLP
projections (Gromov's recipe), AdamW, cosine schedule without warm-up, clipping at 1.0, no evaluation, no saving.
Batches: C4 blocks, the same blocks in the same order for both (Trainer with ``train_sampling_strategy=sequential``
over the blocks in our data order). Each (trainer, precision) run is its own process (accelerate's state is
process-wide), runs are interleaved (ours, Trainer, ours, Trainer, ...), and the figure is the median seconds per
optimizer step after the first step (setup and the first step excluded), for the same tokens per step.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DEPTHPRUNE_SHARED_DATA", REPO.parent / "shared" / "data"))
C4 = SHARED / "c4" / "c4_validation_2k.jsonl"
LAYERS_REMOVED = list(range(11, 19))


def _clock() -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process): on a machine shared with other jobs the CPU time a step takes
    is what it costs; the wall time also counts the time other processes held the core."""
    return time.perf_counter(), time.process_time()


def _setup(args):
    """The pruned model, the training blocks and our config (identical for both trainers)."""
    import torch

    import depthprune
    from depthprune.adapter import ModelAdapter
    from depthprune.data import DataSpec
    from depthprune.heal import build_config
    try:
        from depthprune.heal.healing import healing_blocks
    except ImportError:                # a checkout from before heal/api.py was renamed (--before)
        from depthprune.heal.api import healing_blocks

    torch.set_num_threads(1)
    loaded = depthprune.load_model("smollm2-135m")
    adapter = ModelAdapter(loaded.model)
    adapter.keep_layers([i for i in range(adapter.num_layers) if i not in LAYERS_REMOVED])
    loaded.model.float()
    config = build_config(method="lora", rank=8, dropout=0.05, targets="mlp", lr=1e-3, warmup_steps=0,
                          max_steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len, eval_samples=0,
                          save_every=10**6, max_grad_norm=1.0)
    blocks, _ = healing_blocks(DataSpec(source=str(C4), samples=0, seq_len=args.seq_len), loaded.tokenizer,
                               args.steps * args.batch_size, 0)
    return loaded, config, blocks


def _ours(args, step_ends: list[float]) -> None:
    from accelerate.utils import set_seed

    from depthprune.heal import apply_lora, train
    from depthprune.heal.trainer import make_accelerator

    loaded, config, blocks = _setup(args)
    set_seed(0)
    model = apply_lora(loaded.model, config)
    accelerator = make_accelerator(config, cpu=True, mixed_precision="bf16" if args.worker[1] == "bf16" else "no")
    train(model, blocks, None, config, accelerator=accelerator, progress=True,
          callback=lambda step, loss: step_ends.append(_clock()))


def _trainer(args, step_ends: list[float]) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed

    from depthprune.heal.trainer import data_order

    loaded, config, blocks = _setup(args)
    set_seed(0)
    lora = LoraConfig(r=8, lora_alpha=8, lora_dropout=0.05, target_modules=["gate_proj", "up_proj", "down_proj"],
                      bias="none", task_type="CAUSAL_LM")
    model = get_peft_model(loaded.model, lora)
    order = data_order(len(blocks), args.steps * args.batch_size, config.seed)     # our data order, as a list
    dataset = [{"input_ids": blocks[i], "labels": blocks[i]} for i in order.tolist()]

    class StepClock(TrainerCallback):
        def on_step_end(self, arguments, state, control, **kwargs):
            step_ends.append(_clock())

    with tempfile.TemporaryDirectory() as folder:
        training = TrainingArguments(
            output_dir=folder, per_device_train_batch_size=args.batch_size, max_steps=args.steps,
            learning_rate=config.lr, lr_scheduler_type="cosine", warmup_steps=0, weight_decay=0.0,
            adam_beta1=0.9, adam_beta2=0.999, max_grad_norm=1.0, logging_steps=args.steps, save_strategy="no",
            eval_strategy="no", report_to="none", use_cpu=True, bf16=args.worker[1] == "bf16",
            dataloader_num_workers=0, seed=0, train_sampling_strategy="sequential", remove_unused_columns=False)
        Trainer(model=model, args=training, train_dataset=dataset, callbacks=[StepClock()]).train()


def pieces(args) -> int:
    """Where a step's overheads go, each piece timed alone (median of 7 runs): the LM loss with the logits sliced
    (a copy of batch x seq x vocab floats, as our trainer did) against transformers' shifted labels, forward and
    backward; and AdamW on SmolLM2's LoRA parameters (r=8 on the MLPs of 22 layers) as a loop, foreach and fused."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(1)
    vocab = 49152

    def median_seconds(work) -> float:
        times = []
        for _ in range(7):
            began = time.perf_counter()
            work()
            times.append(time.perf_counter() - began)
        return statistics.median(times)

    ids = torch.randint(0, vocab, (args.batch_size, args.seq_len))
    logits = torch.randn(args.batch_size, args.seq_len, vocab, requires_grad=True)

    def sliced():
        F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten()).backward()

    def shifted():
        labels = F.pad(ids[:, 1:], (0, 1), value=-100)
        F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100).backward()

    print(f"LM loss forward+backward on ({args.batch_size}, {args.seq_len}, {vocab}) logits: sliced "
          f"{median_seconds(sliced) * 1000:.0f} ms, shifted labels {median_seconds(shifted) * 1000:.0f} ms")
    shapes = [(8, 576), (1536, 8), (8, 576), (1536, 8), (8, 1536), (576, 8)] * 22     # A and B of 3 MLP projections
    for name, options in (("for-loop", {"foreach": False}), ("foreach", {"foreach": True}), ("fused", {"fused": True})):
        parameters = [torch.nn.Parameter(torch.randn(shape)) for shape in shapes]
        for parameter in parameters:
            parameter.grad = torch.randn_like(parameter)
        optimizer = torch.optim.AdamW(parameters, lr=1e-3, **options)
        print(f"AdamW step over {sum(p.numel() for p in parameters):,} LoRA parameters, {name}: "
              f"{median_seconds(optimizer.step) * 1000:.1f} ms")
    return 0


def worker(args) -> int:
    step_ends: list[tuple[float, float]] = []
    (_trainer if args.worker[0] == "trainer" else _ours)(args, step_ends)
    # the first step (and setup) excluded
    wall = [b[0] - a[0] for a, b in zip(step_ends, step_ends[1:])]
    cpu = [b[1] - a[1] for a, b in zip(step_ends, step_ends[1:])]
    print("RESULT " + json.dumps({"trainer": args.worker[0], "precision": args.worker[1], "step_seconds": wall,
                                  "step_cpu_seconds": cpu}))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps per run (the first is not timed)")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2, help="interleaved runs of each trainer per precision")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--worker", nargs=2, metavar=("TRAINER", "PRECISION"), help=argparse.SUPPRESS)
    parser.add_argument("--output", default=None, help="also write the raw results as JSON here")
    parser.add_argument("--pieces", action="store_true", help="time the loss and the optimizer step alone instead")
    parser.add_argument("--before", default=None, metavar="CHECKOUT",
                        help="also time our trainer from another checkout of depthprune (e.g. the previous main), "
                             "interleaved with the others")
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    if args.pieces:
        return pieces(args)
    if not C4.is_file():
        raise SystemExit(f"missing {C4}")
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    trainers = ("ours", "trainer") + (("ours-before",) if args.before else ())
    runs: list[dict] = []
    for precision in args.precisions.split(","):
        for _ in range(args.rounds):
            for trainer in trainers:
                command = [sys.executable, __file__, "--worker", trainer, precision, "--steps", str(args.steps),
                           "--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len)]
                worker_env = dict(env, PYTHONPATH=str(Path(args.before).resolve())) if trainer == "ours-before" \
                    else env
                finished = subprocess.run(command, env=worker_env, capture_output=True, text=True)
                lines = [line for line in finished.stdout.splitlines() if line.startswith("RESULT ")]
                if finished.returncode or not lines:
                    raise SystemExit(f"{trainer} {precision} failed:\n{finished.stderr[-3000:]}")
                runs.append(json.loads(lines[-1][len("RESULT "):]))
                print(json.dumps(runs[-1]), flush=True)
    tokens = args.batch_size * args.seq_len
    precisions = args.precisions.split(",")
    median = {}     # (trainer, precision, clock) -> median seconds per step
    for precision in precisions:
        for trainer in trainers:
            for clock in ("step_cpu_seconds", "step_seconds"):
                steps = [s for r in runs if (r["trainer"], r["precision"]) == (trainer, precision) for s in r[clock]]
                median[trainer, precision, clock] = statistics.median(steps)
    print(f"\nmachine: {platform.processor() or platform.machine()}, 1 thread; SmolLM2-135M minus layers 11-18, "
          f"LoRA r=8 on the MLPs, batch {args.batch_size} x seq {args.seq_len} = {tokens} tokens/step, {args.steps} "
          f"steps x {args.rounds} interleaved runs each; median seconds per step after the first step, CPU time of "
          f"the process (wall time in brackets)\n")
    print("| precision | trainer | CPU s/step (wall) | tokens per CPU second | Trainer / this (CPU) | (wall) |")
    print("|---|---|---:|---:|---:|---:|")
    for precision in precisions:
        for trainer in trainers:
            cpu, wall = median[trainer, precision, "step_cpu_seconds"], median[trainer, precision, "step_seconds"]
            their_cpu = median["trainer", precision, "step_cpu_seconds"]
            their_wall = median["trainer", precision, "step_seconds"]
            print(f"| {precision} | {trainer} | {cpu:.2f} ({wall:.2f}) | {tokens / cpu:.0f} | {their_cpu / cpu:.3f} | "
                  f"({their_wall / wall:.3f}) |")
    if {"fp32", "bf16"} <= set(precisions):
        for trainer in trainers:
            ratio = median[trainer, "fp32", "step_cpu_seconds"] / median[trainer, "bf16", "step_cpu_seconds"]
            print(f"bf16 speed / fp32 speed, {trainer}: {ratio:.2f}x (CPU time)")
    if args.output:
        Path(args.output).write_text(json.dumps({"command": " ".join(sys.argv), "runs": runs}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
