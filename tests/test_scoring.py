"""Every criterion against an independent computation: hand-worked maths, brute-force loops over
``output_hidden_states`` (plus a hook for the last layer's pre-norm output), layers actually deleted, and autograd
on a 2-layer model."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from depthprune import DepthpruneError, remove_layers
from depthprune.adapter import ModelAdapter
from depthprune.scoring import CRITERIA, make_configs, parse_metrics, score_model
from depthprune.scoring.angular import angular_distance, angular_distance_table
from depthprune.scoring.base import last_real_token
from depthprune.scoring.bi import block_influence, block_influence_terms
from depthprune.scoring.magnitude import weight_magnitude
from depthprune.scoring.taylor import taylor_importance
from tiny_models import tiny_model

NUM_LAYERS = 4


def _ids(samples=5, seq_len=12, seed=1):
    return torch.randint(3, 500, (samples, seq_len), generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------------ pure maths
def test_angular_distance_hand_worked():
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [2.0, 2.0]])
    b = torch.tensor([[0.0, 3.0], [5.0, 0.0], [-1.0, 0.0], [1.0, 0.0]])
    # orthogonal: 1/2; same direction: 0; opposite: 1; 45 degrees: 1/4
    assert torch.allclose(angular_distance(a, b), torch.tensor([0.5, 0.0, 1.0, 0.25]), atol=1e-6)


def test_angular_distance_clamps_cosines_so_parallel_vectors_never_give_nan():
    a = torch.full((3, 1000), 0.1, dtype=torch.float16) * torch.arange(1, 4, dtype=torch.float16)[:, None]
    d = angular_distance(a, a * 3)
    assert torch.isfinite(d).all() and float(d.max()) < 1e-3


def test_angular_table_hand_worked():
    # three states of one token rotating by 90 degrees per layer: d(l,1) = 1/2, d(0,2) = 1 (opposite)
    states = [torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]), torch.tensor([[-1.0, 0.0]])]
    table = angular_distance_table(states)
    assert table == {1: [pytest.approx(0.5), pytest.approx(0.5)]}
    states.append(torch.tensor([[-1.0, 0.0]]))
    table = angular_distance_table(states)
    assert table[2] == [pytest.approx(1.0), pytest.approx(0.5)]
    assert table[1][2] == pytest.approx(0.0)


def test_block_influence_ignores_padding():
    h_in = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [7.0, 7.0]]])
    h_out = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [-7.0, 1.0]]])
    mask = torch.tensor([[1, 1, 0]])
    cos_sum, count = block_influence_terms(h_in, h_out, mask)
    assert (cos_sum, count) == (pytest.approx(1.0), 2)
    assert block_influence(cos_sum, count) == pytest.approx(0.5)


def test_last_real_token_with_left_and_right_padding():
    mask = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1], [1, 0, 0, 0]])
    assert last_real_token(mask).tolist() == [2, 3, 0]


def test_taylor_and_magnitude_hand_worked():
    assert taylor_importance([(torch.tensor([1.0, -2.0]), torch.tensor([3.0, 4.0])),
                              (torch.tensor([[0.5]]), torch.tensor([[-2.0]]))]) == pytest.approx(12.0)
    assert weight_magnitude([torch.tensor([1.0, -2.0]), torch.tensor([[-0.5]])]) == pytest.approx(3.5)


# ------------------------------------------------------------------------------------------------ registry
def test_every_registry_entry_builds_from_its_defaults():
    assert CRITERIA.names() == ("angular", "bi", "ppl", "taylor", "magnitude", "sleb", "last")
    for entry in CRITERIA:
        assert entry.description
        if entry.scored:
            scorer = entry.scorer_class(entry.make_config(), 6)
            assert scorer.name == entry.name and isinstance(scorer.config, entry.config_class)
    assert CRITERIA.get("taylor").make_config().protected_layers(10) == [0, 1, 2, 3, 8, 9]
    assert CRITERIA.get("magnitude").make_config().protected_layers(10) == [0, 1, 2, 3, 8, 9]
    assert CRITERIA.get("bi").make_config().protected_layers(10) == []
    assert CRITERIA.get("bi").make_config(keep_edges=True).protected_layers(10) == [0, 1, 2, 3, 8, 9]
    assert CRITERIA.get("taylor").make_config(keep_edges=False).protected_layers(10) == []
    assert [e.name for e in CRITERIA if e.keeps_edges] == ["taylor", "magnitude"]
    assert [e.name for e in CRITERIA if e.needs_whole_model] == ["ppl", "taylor", "sleb"]
    assert [e.name for e in CRITERIA if not e.needs_data] == ["magnitude", "last"]


def test_unknown_metric_lists_valid_names_and_suggests_the_closest():
    with pytest.raises(DepthpruneError, match=r"unknown criterion 'anglar' for --metrics; valid: angular, bi, ppl, "
                                              r"taylor, magnitude, sleb; did you mean 'angular'"):
        parse_metrics("anglar,bi")
    with pytest.raises(DepthpruneError, match="'last' chooses layers by position and has no scores"):
        parse_metrics("bi,last")
    with pytest.raises(DepthpruneError, match="unknown criterion option.*tokenz"):
        make_configs("angular", tokenz="all")
    with pytest.raises(DepthpruneError, match="listed twice"):
        parse_metrics("bi,bi")
    with pytest.raises(DepthpruneError, match="--token-positions"):
        make_configs("angular", token_positions="first")


def test_metrics_that_need_data_refuse_to_run_without_it():
    model = tiny_model("llama", NUM_LAYERS)
    with pytest.raises(DepthpruneError, match="angular.*need calibration data; pass --data"):
        score_model(model, make_configs("angular,magnitude"), input_ids=None, show_progress=False)
    scores = score_model(model, make_configs("magnitude"), input_ids=None, show_progress=False)
    layers = ModelAdapter(model).layers
    expected = [sum(float(p.detach().abs().sum()) for p in layers[i].parameters()) for i in range(NUM_LAYERS)]
    assert scores["magnitude"] == pytest.approx(expected, rel=1e-6)


# ------------------------------------------------------------------------------------------------ brute force
def _brute_force_states(model, ids, mask):
    """h[0..L] per sample with a plain forward: output_hidden_states for h[0..L-1], a hook for the pre-norm h[L]."""
    layers = ModelAdapter(model).layers
    captured = {}
    handle = layers[-1].register_forward_hook(
        lambda module, args, output: captured.__setitem__("last", output if torch.is_tensor(output) else output[0]))
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False)
    handle.remove()
    return list(out.hidden_states[:-1]) + [captured["last"]]


def _cosine(u, v):
    return float(torch.dot(u.double(), v.double()) / (u.double().norm() * v.double().norm()))


def _acos_distance(u, v):
    return math.acos(max(-1.0, min(1.0, _cosine(u, v)))) / math.pi


@pytest.mark.parametrize("model_type", ["llama", "gemma3_text", "falcon", "gpt2", "qwen2"])
def test_angular_and_bi_match_a_brute_force_loop(model_type):
    model = tiny_model(model_type, NUM_LAYERS)
    ids = _ids()
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0                   # right padding
    mask[3, :4] = 0                   # left padding
    scores = score_model(model, make_configs("angular,bi"), input_ids=ids, attention_mask=mask, batch_size=2,
                         show_progress=False)
    states = _brute_force_states(model, ids, mask)
    num_layers = NUM_LAYERS
    for n in range(1, num_layers):
        expected = []
        for start in range(num_layers - n + 1):
            per_sample = []
            for row in range(ids.shape[0]):
                last = max(i for i in range(ids.shape[1]) if mask[row, i])
                per_sample.append(_acos_distance(states[start][row, last], states[start + n][row, last]))
            expected.append(sum(per_sample) / len(per_sample))
        assert scores["angular"][str(n)] == pytest.approx(expected, abs=1e-5), (model_type, n)
    for layer in range(num_layers):
        cosines = [_cosine(states[layer][r, i], states[layer + 1][r, i])
                   for r in range(ids.shape[0]) for i in range(ids.shape[1]) if mask[r, i]]
        assert scores["bi"][layer] == pytest.approx(1 - sum(cosines) / len(cosines), abs=1e-5), (model_type, layer)


def test_a_bf16_model_is_scored_in_float32():
    # --dtype auto runs a bf16 checkpoint in bf16; the cosines must still be float32 maths on those bf16 states
    # (bf16 arithmetic alone is off by ~1e-2 here, far beyond the tolerance).
    model = tiny_model("llama", NUM_LAYERS).to(torch.bfloat16)
    ids = _ids()
    mask = torch.ones_like(ids)
    scores = score_model(model, make_configs("angular,bi"), input_ids=ids, attention_mask=mask, batch_size=2,
                         show_progress=False)
    states = _brute_force_states(model, ids, mask)
    assert states[1].dtype == torch.bfloat16
    for layer in range(NUM_LAYERS):
        cosines = [_cosine(states[layer][r, i].float(), states[layer + 1][r, i].float())
                   for r in range(ids.shape[0]) for i in range(ids.shape[1])]
        assert scores["bi"][layer] == pytest.approx(1 - sum(cosines) / len(cosines), abs=1e-5), layer
    last = ids.shape[1] - 1
    expected = [sum(_acos_distance(states[l][r, last].float(), states[l + 1][r, last].float())
                    for r in range(ids.shape[0])) / ids.shape[0] for l in range(NUM_LAYERS)]
    assert scores["angular"]["1"] == pytest.approx(expected, abs=1e-5)


def test_angular_all_tokens_matches_a_brute_force_loop():
    model = tiny_model("llama", NUM_LAYERS)
    ids = _ids()
    mask = torch.ones_like(ids)
    mask[2, 7:] = 0
    scores = score_model(model, make_configs("angular", token_positions="all"), input_ids=ids, attention_mask=mask,
                         batch_size=3, show_progress=False)
    states = _brute_force_states(model, ids, mask)
    for n in (1, 3):
        expected = []
        for start in range(NUM_LAYERS - n + 1):
            values = [_acos_distance(states[start][r, i], states[start + n][r, i])
                      for r in range(ids.shape[0]) for i in range(ids.shape[1]) if mask[r, i]]
            expected.append(sum(values) / len(values))
        assert scores["angular"][str(n)] == pytest.approx(expected, abs=1e-5)
    assert scores["angular_tokens"] == "all"


def _perplexity_of(model, ids):
    with torch.no_grad():
        return math.exp(float(model(input_ids=ids, labels=ids, use_cache=False).loss))


@pytest.mark.parametrize("model_type", ["llama", "gemma3_text"])
def test_ppl_criterion_matches_actually_deleting_each_layer(model_type):
    model = tiny_model(model_type, NUM_LAYERS)
    ids = _ids()
    scores = score_model(model, make_configs("ppl"), input_ids=ids, batch_size=2, show_progress=False)
    for layer in range(NUM_LAYERS):
        pruned = copy.deepcopy(model)
        remove_layers(pruned, [layer], allow_final_layer=True, allow_first_layer=True)
        assert scores["ppl"][layer] == pytest.approx(_perplexity_of(pruned, ids), rel=1e-4), layer
    assert scores["dense_ppl"] == pytest.approx(_perplexity_of(model, ids), rel=1e-4)


def test_sleb_first_pick_is_the_ppl_argmin_and_later_picks_match_deleting_layers():
    num_layers = 6
    model = tiny_model("llama", num_layers, seed=3)
    ids = _ids(samples=4, seq_len=10)
    scores = score_model(model, make_configs("ppl,sleb", sleb_n=2), input_ids=ids, batch_size=2,
                         show_progress=False)
    middle = range(1, num_layers - 1)
    assert scores["sleb"][0] == min(middle, key=lambda layer: scores["ppl"][layer])
    first = scores["sleb"][0]
    brute = {}
    for layer in middle:
        if layer == first:
            continue
        pruned = copy.deepcopy(model)
        remove_layers(pruned, [first, layer])
        brute[layer] = _perplexity_of(pruned, ids)
    assert scores["sleb"][1] == min(brute, key=brute.get)
    assert scores["sleb_ppl"][1] == pytest.approx(brute[scores["sleb"][1]], rel=1e-4)


def test_sleb_refuses_more_layers_than_it_has_candidates():
    model = tiny_model("llama", NUM_LAYERS)
    with pytest.raises(DepthpruneError, match="sleb: cannot remove 3 layers; 2 of 4"):
        score_model(model, make_configs("sleb", sleb_n=3), input_ids=_ids(), show_progress=False)


def test_taylor_matches_autograd_on_a_two_layer_model():
    model = tiny_model("llama", 2, seed=5)
    ids = _ids(samples=6, seq_len=10)
    scores = score_model(model, make_configs("taylor"), input_ids=ids, batch_size=2, show_progress=False)
    layers = ModelAdapter(model).layers
    params = [list(layer.parameters()) for layer in layers]
    loss = model(input_ids=ids, labels=ids, use_cache=False).loss          # mean over every token, one batch
    grads = torch.autograd.grad(loss, params[0] + params[1])
    expected = []
    for layer_index in range(2):
        layer_grads = grads[:len(params[0])] if layer_index == 0 else grads[len(params[0]):]
        expected.append(sum(float((w.detach() * g).abs().sum()) for w, g in zip(params[layer_index], layer_grads)))
    assert scores["taylor"] == pytest.approx(expected, rel=1e-4)
    assert all(p.grad is None for p in model.parameters())       # nothing left behind
    assert scores["protected"]["taylor"] == [0, 1]               # keep-set on by default


def test_sleb_refuses_a_nan_loss_instead_of_picking_it():
    # NaN weights in layer 2: the model without layer 1 still runs layer 2 and its loss is NaN. A NaN compares
    # False with everything, so a plain argmin would keep whichever candidate came first (layer 1).
    model = tiny_model("llama", num_layers=NUM_LAYERS)
    with torch.no_grad():
        ModelAdapter(model).layers[2].mlp.down_proj.weight.fill_(float("nan"))
    with pytest.raises(DepthpruneError, match=r"sleb: .*NaN without layer 1 in round 1.*float32"):
        score_model(model, make_configs("sleb", sleb_n=1), input_ids=_ids(), show_progress=False)
