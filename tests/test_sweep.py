"""The sweep: each point is the model with the chosen layers removed, evaluated; checked against hand computations."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from depthprune import DepthpruneError, LoadedModel, remove_layers
from depthprune.data import builtin_texts
from depthprune.sweep import parse_range, sweep
from tiny_models import tiny_model

SEQ = 32


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    (folder / "wikitext2").mkdir()
    (folder / "wikitext2" / "wiki.test.raw").write_text("\n".join(builtin_texts()[-8:]))
    return folder


def hand_ppl(model, tokenizer, data_dir, max_windows):
    """exp(mean next-token NLL) over non-overlapping windows, computed plainly."""
    from depthprune.evaluate.perplexity import load_ppl_text

    ids = torch.tensor(tokenizer(load_ppl_text("wikitext2", data_dir))["input_ids"])
    total, count = 0.0, 0
    for w in range(max_windows):
        window = ids[w * SEQ:(w + 1) * SEQ].unsqueeze(0)
        with torch.no_grad():
            logits = model(window).logits[0, :-1]
        nll = torch.nn.functional.cross_entropy(logits.float(), window[0, 1:], reduction="sum")
        total, count = total + float(nll), count + SEQ - 1
    return math.exp(total / count)


def hand_bi(model, blocks):
    """BI_l = 1 - mean cos(h[l], h[l+1]) over all tokens, from output_hidden_states + a hook for the last layer."""
    captured = {}
    last = model.model.layers[-1]
    handle = last.register_forward_hook(lambda m, i, o: captured.__setitem__("out", o[0] if isinstance(o, tuple)
                                                                             else o))
    with torch.no_grad():
        hidden = list(model(blocks, output_hidden_states=True).hidden_states)
    handle.remove()
    hidden[-1] = captured["out"]
    return [float(1 - torch.nn.functional.cosine_similarity(hidden[i].float(), hidden[i + 1].float(), dim=-1)
                  .mean()) for i in range(len(hidden) - 1)]


def test_points_equal_hand_pruned_models(tiny_tokenizer, data_dir, tmp_path):
    model = tiny_model("llama", num_layers=5)
    loaded = LoadedModel(model=model, tokenizer=tiny_tokenizer, source="tiny", description="tiny")
    result = sweep(loaded, methods="bi,last", n="0:2", eval="wikitext2", data="builtin", samples=4, seq_len=SEQ,
                   eval_seq_len=SEQ, data_dir=data_dir, max_windows=3, output=tmp_path / "sweep")
    points = {(p["method"], p["n"]): p for p in result["points"]}
    assert set(points) == {(m, n) for m in ("bi", "last") for n in (0, 1, 2)}
    dense = hand_ppl(model, tiny_tokenizer, data_dir, 3)
    assert points[("bi", 0)]["wikitext2_ppl"] == pytest.approx(dense, rel=1e-5)
    assert points[("last", 0)]["wikitext2_ppl"] == pytest.approx(dense, rel=1e-5)

    from depthprune.data import calibration_blocks
    bi = hand_bi(model, calibration_blocks("builtin", tiny_tokenizer, samples=4, seq_len=SEQ))
    lowest = min(range(1, 4), key=lambda i: bi[i])         # the first (0) and final (4) layer are never candidates
    assert points[("bi", 1)]["removed_layers"] == [lowest]
    assert points[("last", 2)]["removed_layers"] == [2, 3]  # L-n-1 .. L-2
    for key in (("bi", 1), ("last", 2)):
        pruned = copy.deepcopy(model)
        remove_layers(pruned, points[key]["removed_layers"])
        assert points[key]["wikitext2_ppl"] == pytest.approx(hand_ppl(pruned, tiny_tokenizer, data_dir, 3), rel=1e-5)

    saved = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert saved["points"] == json.loads(json.dumps(result["points"]))
    assert (tmp_path / "sweep" / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    assert model.config.num_hidden_layers == 5            # the caller's model is untouched

    # a scores.json is reused instead of scoring again, and gives the same points
    reused = sweep(loaded, methods="bi", n="1", eval="wikitext2", scores=tmp_path / "sweep" / "scores.json",
                   eval_seq_len=SEQ, data_dir=data_dir, max_windows=3)
    assert reused["points"][0]["removed_layers"] == points[("bi", 1)]["removed_layers"]
    assert reused["points"][0]["wikitext2_ppl"] == pytest.approx(points[("bi", 1)]["wikitext2_ppl"], rel=1e-6)
    with pytest.raises(DepthpruneError, match="re-score"):
        sweep(LoadedModel(model=tiny_model("llama", 4), tokenizer=tiny_tokenizer, source="t", description="t"),
              methods="bi", n="1", scores=tmp_path / "sweep" / "scores.json", data_dir=data_dir)


@pytest.mark.parametrize("text, expected", [("0:3", [0, 1, 2, 3]), ("0:12:4", [0, 4, 8, 12]), ("8,2,4", [2, 4, 8]),
                                            (5, [5])])
def test_parse_range(text, expected):
    assert parse_range(text) == expected


def test_bad_inputs(tiny_tokenizer, data_dir):
    loaded = LoadedModel(model=tiny_model("llama", 4), tokenizer=tiny_tokenizer, source="t", description="t")
    with pytest.raises(DepthpruneError, match="START:END"):
        parse_range("5:1")
    with pytest.raises(DepthpruneError, match="unknown method|valid|choose"):
        sweep(loaded, methods="angualr", n="1", data_dir=data_dir)
    with pytest.raises(DepthpruneError, match="--eval"):
        sweep(loaded, methods="last", n="1", eval="wikitxt", data_dir=data_dir)
    with pytest.raises(DepthpruneError, match="too few"):
        sweep(loaded, methods="last", n="0:3", data_dir=data_dir)


def test_healed_sweep_trains_each_pruned_point(tiny_tokenizer, data_dir):
    loaded = LoadedModel(model=tiny_model("llama", num_layers=4), tokenizer=tiny_tokenizer, source="t",
                         description="t")
    common = dict(methods="last", n="0:1", eval="wikitext2", eval_seq_len=SEQ, data_dir=data_dir, max_windows=2,
                  samples=2, seq_len=SEQ)
    plain = {p["n"]: p for p in sweep(loaded, **common)["points"]}
    healed = {p["n"]: p for p in sweep(loaded, heal_steps=3, heal_method="full", **common)["points"]}
    assert healed[0]["wikitext2_ppl"] == pytest.approx(plain[0]["wikitext2_ppl"])      # dense is never healed
    assert "heal_final_loss" not in healed[0] and math.isfinite(healed[1]["heal_final_loss"])
    assert healed[1]["wikitext2_ppl"] != pytest.approx(plain[1]["wikitext2_ppl"], rel=1e-6)
    assert loaded.model.config.num_hidden_layers == 4
