"""On the real SmolLM2-135M: a compensated prune reloads with plain transformers and beats the plain cut."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import SHARED_DATA, requires_shared_data, requires_smollm2

pytestmark = [pytest.mark.integration, requires_smollm2, requires_shared_data]

BI_EIGHT = "12-17,25,26"     # Block Influence's 8 layers on C4 calibration (bench/RESULTS.md)


def _wikitext_ppl(folder, windows=8, seq_len=256) -> float:
    from depthprune.evaluate.perplexity import load_ppl_text, token_perplexity

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()   # plain transformers
    tokenizer = AutoTokenizer.from_pretrained(folder)
    text = load_ppl_text("wikitext2", SHARED_DATA)
    return token_perplexity(model, tokenizer, text, seq_len=seq_len, max_windows=windows)["ppl"]


def test_linear_compensation_reloads_and_lowers_perplexity(tmp_path):
    from depthprune import prune

    calibration = sorted((SHARED_DATA / "c4").glob("*.jsonl"))
    if not calibration:
        pytest.skip(f"SKIPPED LOUDLY: no C4 .jsonl under {SHARED_DATA / 'c4'}")
    from depthprune.data import DataSpec

    spec = DataSpec(source=str(calibration[0]), samples=16, seq_len=256)
    plain, compensated = tmp_path / "plain", tmp_path / "linear"
    prune("smollm2-135m", layers=BI_EIGHT, output=plain)
    prune("smollm2-135m", layers=BI_EIGHT, data=spec, compensate="linear", output=compensated)
    record = json.loads((compensated / "depthprune.json").read_text())["compensation"]
    assert [g["removed_layers"] for g in record["gaps"]] == [[12, 13, 14, 15, 16, 17], [25, 26]]
    assert record["calibration_ppl"]["compensated"] < record["calibration_ppl"]["pruned"]
    assert json.loads((plain / "config.json").read_text()) == json.loads((compensated / "config.json").read_text())
    assert _wikitext_ppl(compensated) < _wikitext_ppl(plain)
