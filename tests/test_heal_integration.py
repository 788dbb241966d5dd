"""Healing the real SmolLM2-135M: prune 8 layers, LoRA for two dozen steps on the shared C4 slice, and the held-out
perplexity (recomputed with plain transformers from the saved checkpoints) goes down."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import SHARED_DATA, requires_shared_data, requires_smollm2

C4 = SHARED_DATA / "c4" / "c4_validation_2k.jsonl"


@pytest.mark.integration
@requires_smollm2
@requires_shared_data
def test_lora_healing_lowers_held_out_perplexity_of_pruned_smollm2(tmp_path):
    import depthprune
    from depthprune.data import DataSpec
    from depthprune.heal import heal
    from depthprune.heal.healing import healing_blocks

    threads = torch.get_num_threads()
    torch.set_num_threads(1)      # on a shared 2-core machine one thread is much faster than two
    try:
        loaded = depthprune.load_model("smollm2-135m")
        depthprune.prune(loaded, layers="11-18", output=tmp_path / "pruned")
        steps, batch, seq = 24, 2, 128
        result = heal(str(tmp_path / "pruned"), data=str(C4), output=tmp_path / "healed", method="lora", lr=2e-3,
                      max_steps=steps, batch_size=batch, seq_len=seq, eval_samples=8, eval_every=12,
                      save_every=1000, progress=False)
        # the held-out blocks, rebuilt independently, scored by plain transformers on both saved checkpoints
        _, held_out = healing_blocks(DataSpec(source=str(C4), samples=0, seq_len=seq), loaded.tokenizer,
                                     steps * batch, 8)
        perplexity = {}
        for name in ("pruned", "healed"):
            model = AutoModelForCausalLM.from_pretrained(tmp_path / name).eval()
            with torch.no_grad():
                perplexity[name] = math.exp(model(input_ids=held_out, labels=held_out).loss.item())
    finally:
        torch.set_num_threads(threads)
    assert perplexity["healed"] < 0.9 * perplexity["pruned"], perplexity
    healing = json.loads((tmp_path / "healed" / "depthprune.json").read_text())["healing"]
    assert healing["final_eval_loss"] < healing["initial_eval_loss"]
    assert math.exp(healing["final_eval_loss"]) == pytest.approx(perplexity["healed"], rel=1e-3)
    assert healing["tokens_seen"] == steps * batch * seq
