"""SmolLM2-135M on WikiText-2: score on real text, prune the best angular block of 8, reload, perplexity finite."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from conftest import requires_smollm2

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
WIKITEXT = SHARED_DATA / "wikitext2" / "wiki.test.raw"

pytestmark = [
    pytest.mark.integration,
    requires_smollm2,
    pytest.mark.skipif(not WIKITEXT.is_file(), reason=f"SKIPPED LOUDLY: WikiText-2 not found at {WIKITEXT}"),
]


def _perplexity(model, ids):
    with torch.no_grad():
        return math.exp(float(model(input_ids=ids, labels=ids, use_cache=False).loss))


def test_score_then_prune_8_by_angular_on_smollm2(smollm2, tmp_path):
    from transformers import AutoModelForCausalLM

    from depthprune import DataSpec, calibration_blocks, load_model, prune
    from depthprune.scoring import score
    from depthprune.selection import best_block

    spec = DataSpec(source=str(WIKITEXT), samples=8, seq_len=128)
    scores = score(smollm2, metrics="angular,bi", data=spec, output=tmp_path / "scores", show_progress=False)
    assert scores["num_layers"] == 30 and len(scores["angular"]) == 29 and scores["tokens"] == 8 * 128
    assert all(0 <= d <= 1 for row in scores["angular"].values() for d in row)
    assert len(scores["bi"]) == 30 and all(0 <= b <= 2 for b in scores["bi"])
    start, _ = best_block(scores["angular"], 8, 30)

    eval_ids = calibration_blocks(DataSpec(source=str(WIKITEXT), samples=4, seq_len=128, seed=1),
                                  smollm2.tokenizer)
    dense_ppl = _perplexity(smollm2.model, eval_ids)
    fresh = load_model("smollm2-135m")          # prune edits the model in place: keep the session fixture intact
    plan = prune(fresh, method="angular", n=8, scores=tmp_path / "scores" / "scores.json",
                 output=tmp_path / "pruned")
    assert plan.removed_layers == list(range(start, start + 8))
    metadata = json.loads((tmp_path / "pruned" / "depthprune.json").read_text())
    assert metadata["removed_layers"] == plan.removed_layers and metadata["num_layers"] == 22

    pruned = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned").eval()
    pruned_ppl = _perplexity(pruned, eval_ids)
    assert math.isfinite(pruned_ppl) and pruned_ppl > dense_ppl
