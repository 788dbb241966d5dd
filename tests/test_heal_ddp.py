"""Data-parallel healing: two CPU processes (gloo) launched by torchrun, joined by accelerate, must train exactly
what one process trains with the two batches side by side (same data order, averaged gradients)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch
from safetensors.torch import load_file

from depthprune.heal import heal
from test_heal import save_tiny_checkpoint

COMMON = ["--data", "builtin", "--method", "lora", "--targets", "all", "--dropout", "0", "--lr", "1e-2",
          "--max-steps", "4", "--seq-len", "32", "--eval-every", "2", "--eval-samples", "4", "--save-every", "2"]


def test_two_processes_with_gloo_match_one_process(tmp_path, tiny_tokenizer):
    _, pruned_dir = save_tiny_checkpoint(tmp_path, tiny_tokenizer)
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "depthprune", "heal", str(pruned_dir), *COMMON, "--batch-size", "2", "--cpu", "--no-progress",
               "--output", str(tmp_path / "two")]
    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        heal(str(pruned_dir), data="builtin", output=tmp_path / "one", method="lora", targets="all", dropout=0.0,
             lr=1e-2, max_steps=4, seq_len=32, eval_every=2, eval_samples=4, save_every=2, batch_size=4,
             progress=False)
    finally:
        torch.set_num_threads(threads)

    two = json.loads((tmp_path / "two" / "depthprune.json").read_text())["healing"]
    one = json.loads((tmp_path / "one" / "depthprune.json").read_text())["healing"]
    assert (two["num_processes"], one["num_processes"]) == (2, 1)
    assert two["tokens_seen"] == one["tokens_seen"] == 4 * 4 * 32
    assert two["data"]["samples"] == one["data"]["samples"] == 16     # the same blocks, dealt out differently
    torch.testing.assert_close(torch.tensor(two["train_losses"]), torch.tensor(one["train_losses"]),
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.tensor(two["eval_losses"]), torch.tensor(one["eval_losses"]),
                               atol=1e-5, rtol=1e-5)
    assert one["train_losses"][-1] < one["train_losses"][0]
    weights_two = load_file(tmp_path / "two" / "model.safetensors")
    weights_one = load_file(tmp_path / "one" / "model.safetensors")
    assert weights_two.keys() == weights_one.keys()
    for name in weights_one:
        torch.testing.assert_close(weights_two[name], weights_one[name], atol=1e-5, rtol=1e-4, msg=name)
    assert not any((tmp_path / name).exists() for name in ("two.checkpoints", "one.checkpoints"))
