"""LaCo on the real SmolLM2-135M-Instruct: collapse 30 -> 22 layers in target mode, reload with plain transformers,
generate."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import SHARED_DATA, requires_shared_data, requires_smollm2
from depthprune import ModelAdapter
from depthprune.collapse import collapse

pytestmark = [pytest.mark.integration, requires_smollm2, requires_shared_data]


def test_smollm2_collapsed_to_22_layers_reloads_and_generates(smollm2, tmp_path):
    c4 = SHARED_DATA / "c4" / "c4_validation_2k.jsonl"
    if not c4.is_file():
        pytest.skip(f"SKIPPED LOUDLY: calibration file {c4} missing")
    result = collapse(smollm2, str(c4), tmp_path / "out", combine=3, remove=8, samples=3, seq_len=64,
                      progress=False)
    assert ModelAdapter(result.model).num_layers == 22
    assert len(result.plan.removed_layers) == 8 and ModelAdapter(smollm2.model).num_layers == 30

    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out")
    assert reloaded.config.num_hidden_layers == 22
    prompt = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(reloaded(**prompt).logits, result.model(**prompt).logits, atol=1e-4, rtol=0)
    with_cache = reloaded.generate(**prompt, max_new_tokens=12, do_sample=False, use_cache=True)
    without = reloaded.generate(**prompt, max_new_tokens=12, do_sample=False, use_cache=False)
    assert torch.equal(with_cache, without)
    assert with_cache.shape[1] == prompt["input_ids"].shape[1] + 12 or tokenizer.eos_token_id in with_cache[0]
    assert tokenizer.decode(with_cache[0, prompt["input_ids"].shape[1]:]).strip()

    metadata = json.loads((tmp_path / "out" / "depthprune.json").read_text())
    assert metadata["num_layers_original"] == 30 and metadata["num_layers"] == 22
    assert metadata["method"] == "laco" and metadata["collapse"]["threshold_searched"]
    assert all(m["similarity"] > metadata["collapse"]["threshold"] for m in metadata["collapse"]["merges"])
    assert (tmp_path / "out" / "collapse_similarity.png").is_file()
