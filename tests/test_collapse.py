"""LaCo layer collapse: the merge maths against independently computed formulas, the acceptance walk against hand
traces, and the saved output against the in-memory model."""

from __future__ import annotations

import json
import re

import pytest
import torch
from transformers import AutoModelForCausalLM

import depthprune.collapse as collapse_module
from depthprune import DepthpruneError, LoadedModel, ModelAdapter, prune
from depthprune.cli import main
from depthprune.collapse import (LacoConfig, acceptance_walk, collapse, mean_flat_cosine, merge_into,
                                 merge_state_dicts, notebook_merge, rdsc_merge, search_threshold)
from tiny_models import tiny_model

# Independent of the code under test: norms recognised by their parameter names in these architectures.
NORM_NAME = re.compile(r"(norm|^ln_)")


def layer_params(model, index: int) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in ModelAdapter(model).layers[index].named_parameters()}


def expected_rdsc(model, base: int, count: int) -> dict[str, torch.Tensor]:
    """The paper's formula, worked in float64 from the original weights, norms taken from the base layer."""
    layers = [layer_params(model, base + k) for k in range(count + 1)]
    expected = {}
    for name, weight in layers[0].items():
        if NORM_NAME.search(name.split(".")[-2] if "." in name else name):
            expected[name] = weight
        else:
            total = weight.double().clone()
            for other in layers[1:]:
                total += other[name].double() - weight.double()
            expected[name] = total.float()
    return expected


def randomize_norms(model, seed: int = 1):
    """Fresh models start every norm at ones/zeros, identical across layers; make each layer's norms its own."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if NORM_NAME.search(name.split(".")[-2]):
                parameter.copy_(1 + 0.1 * torch.randn(parameter.shape, generator=generator))
    return model


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


@pytest.fixture(scope="module")
def ids():
    torch.manual_seed(0)
    return torch.randint(3, 512, (2, 20))


# ------------------------------------------------------------------------------------------------ maths by hand
def test_rdsc_and_notebook_merges_by_hand():
    base = torch.tensor([1.0, 2.0])
    folded = [torch.tensor([3.0, 5.0]), torch.tensor([0.0, 1.0])]
    # [1, 2] + ([3, 5] - [1, 2]) + ([0, 1] - [1, 2]) = [1, 2] + [2, 3] + [-1, -1]
    assert torch.equal(rdsc_merge(base, folded), torch.tensor([2.0, 4.0]))
    assert torch.equal(notebook_merge(base, folded), torch.tensor([0.0, 1.0]))
    assert torch.equal(rdsc_merge(base, []), base)
    # m = 1: the formula is the successor itself, so paper and notebook agree there
    assert torch.equal(rdsc_merge(base, folded[:1]), folded[0])
    # bfloat16 in, bfloat16 out, summed in float32: 256 + (1 - 256) + (1 - 256) would lose the 1s in bf16 steps
    big = torch.tensor([256.0], dtype=torch.bfloat16)
    one = torch.tensor([1.0], dtype=torch.bfloat16)
    merged = rdsc_merge(big, [one, one])
    assert merged.dtype == torch.bfloat16 and merged.item() == -254.0


def test_mean_flat_cosine_by_hand():
    reference = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 1.0], [1.0, 1.0]]])   # (2 blocks, 2 tokens, 2)
    candidate = torch.tensor([[[1.0, 0.0], [0.0, -1.0]], [[2.0, 2.0], [2.0, 2.0]]])
    # block 0: flat [1,0,0,1] . [1,0,0,-1] = 0 -> cos 0; block 1: parallel -> cos 1; mean 0.5
    assert mean_flat_cosine(reference, candidate) == pytest.approx(0.5)


def test_state_dicts_of_different_structure_are_refused():
    with pytest.raises(DepthpruneError, match="different structure"):
        merge_state_dicts({"a": torch.zeros(2)}, [{"b": torch.zeros(2)}])
    with pytest.raises(DepthpruneError, match="shapes"):
        merge_state_dicts({"a": torch.zeros(2)}, [{"a": torch.zeros(3)}])


# ------------------------------------------------------------------------------------------------ on models
@pytest.mark.parametrize("model_type", ["llama", "gpt2", "mixtral", "qwen3", "opt"])
def test_merged_weights_equal_the_formula_computed_independently(model_type, ids):
    original = randomize_norms(tiny_model(model_type, num_layers=6))
    before = {n: p.detach().clone() for n, p in original.state_dict().items()}
    expected_base = expected_rdsc(original, base=1, count=2)
    later = [layer_params(original, 4), layer_params(original, 5)]

    merged = merge_into(original, base=1, count=2, merge="paper")

    adapter = ModelAdapter(merged)
    assert adapter.num_layers == 4 and getattr(merged.config, adapter.spec.num_layers_key) == 4
    got = layer_params(merged, 1)
    assert got.keys() == expected_base.keys()
    for name, value in expected_base.items():
        assert torch.allclose(got[name], value, atol=1e-6, rtol=0), name
    for new_index, old in ((0, layer_params(original, 0)), (2, later[0]), (3, later[1])):
        for name, value in layer_params(merged, new_index).items():
            assert torch.equal(value, old[name]), (new_index, name)
    # the input model is untouched
    for name, value in original.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert ModelAdapter(original).num_layers == 6
    # the merged model runs, and its KV cache is consistent with the new layer numbering
    prompt = ids[:1, :8]
    with_cache = merged.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=True, pad_token_id=0)
    without = merged.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=False, pad_token_id=0)
    assert torch.equal(with_cache, without)


def test_mixtral_experts_and_router_are_merged_expert_by_expert():
    original = tiny_model("mixtral", num_layers=4)
    layers = ModelAdapter(original).layers
    experts = [layers[i].mlp.experts.gate_up_proj.detach().clone() for i in (1, 2, 3)]   # (experts, 2*inter, hidden)
    routers = [layers[i].mlp.gate.weight.detach().clone() for i in (1, 2, 3)]           # (experts, hidden)
    merged = ModelAdapter(merge_into(original, 1, 2)).layers[1]
    for expert in range(experts[0].shape[0]):
        first, second, third = (e[expert] for e in experts)
        want = first + (second - first) + (third - first)
        assert torch.allclose(merged.mlp.experts.gate_up_proj[expert], want, atol=1e-6)
    assert torch.allclose(merged.mlp.gate.weight, routers[1] + routers[2] - routers[0], atol=1e-6)


def test_mixed_dense_and_sparse_moe_layers_are_refused():
    model = tiny_model("qwen2_moe", num_layers=6)   # layers 1, 3, 5 sparse; 0, 2, 4 dense
    with pytest.raises(DepthpruneError, match="differ in structure"):
        collapse_module.check_mergeable(model, 0, 5)
    with pytest.raises(DepthpruneError, match="cannot be merged"):
        merge_into(model, 1, 1)


def test_merging_zero_layers_changes_nothing(ids):
    original = tiny_model("llama", num_layers=4)
    same = merge_into(original, base=2, count=0)
    assert ModelAdapter(same).num_layers == 4
    assert torch.equal(logits(same, ids), logits(original, ids))
    state = {"w": torch.randn(3, 3), "norm.weight": torch.randn(3)}
    assert all(torch.equal(v, state[k]) for k, v in merge_state_dicts(state, [], keep={"norm.weight"}).items())


def test_merging_a_layer_with_exact_copies_of_itself_leaves_it_unchanged():
    model = tiny_model("llama", num_layers=5)
    layers = ModelAdapter(model).layers
    for copy_index in (2, 3):
        layers[copy_index].load_state_dict(layers[1].state_dict())
    before = layer_params(model, 1)
    merged = merge_into(model, base=1, count=2, merge="paper")   # W + (W - W) + (W - W)
    after = layer_params(merged, 1)
    assert all(torch.equal(after[name], before[name]) for name in before)
    name = "self_attn.q_proj.weight"
    assert torch.equal(layer_params(merged, 2)[name], layer_params(model, 4)[name])   # layer 4 moved down to 2


def test_notebook_mode_equals_copying_the_last_folded_layer():
    model = randomize_norms(tiny_model("llama", num_layers=6))
    base_params, last_params = layer_params(model, 1), layer_params(model, 4)
    merged = layer_params(merge_into(model, base=1, count=3, merge="notebook"), 1)
    paper = layer_params(merge_into(model, base=1, count=3, merge="paper"), 1)
    for name in base_params:
        source = base_params if "norm" in name else last_params
        assert torch.equal(merged[name], source[name]), name
    # guard: for three folded layers the paper's formula is something else
    assert not torch.allclose(paper["mlp.up_proj.weight"], merged["mlp.up_proj.weight"])


# ------------------------------------------------------------------------------------------------ the walk
class TableSimilarity:
    """Returns the next value of a table and records every candidate it is asked about."""

    def __init__(self, values):
        self.values = list(values)
        self.calls = []

    def __call__(self, history, base, count):
        self.calls.append((history, base, count))
        return self.values.pop(0)


def test_walk_matches_a_hand_traced_sequence():
    # L=8, C=3, I=2, T=0.5, range [0, 7]. Start l = 7 - 3 = 4.
    # l=4: fold min(2, 8-4-1) = 2 (layers 5, 6); s=0.9 > 0.5 accept -> depth 6, groups 4=(4,5,6); l = 4-2 = 2
    # l=2: fold 2 (current 3 = orig 3, current 4 = orig 4 group); s=0.3 reject -> l = 1
    # l=1: fold 2 (orig 2, 3); s=0.7 accept -> depth 4; l = -1 -> stop
    table = TableSimilarity([0.9, 0.3, 0.7])
    result = acceptance_walk(8, combine=3, low=0, high=7, interval=2, threshold=0.5, similarity=table)
    assert table.calls == [((), 4, 2), (((4, 2),), 2, 2), (((4, 2),), 1, 2)]
    assert result.groups == [(0,), (1, 2, 3), (4, 5, 6), (7,)]
    assert result.kept_layers == [0, 1, 4, 7] and result.removed_layers == [2, 3, 5, 6]
    assert [(s.into, s.folded, s.accepted) for s in result.steps] == [
        (4, (5, 6), True), (2, (3, 4), False), (1, (2, 3), True)]
    assert table.values == []


def test_walk_names_folded_layers_by_their_input_number_after_earlier_merges():
    # L=8, C=3, I=1: l=4 folds 5, 6 (accept, depth 6); l=3 folds current 4 (holds 4, 5, 6) and current 5 (= input 7)
    table = TableSimilarity([0.9, 0.2, 0.8])
    result = acceptance_walk(8, combine=3, low=2, high=7, interval=1, threshold=0.5, similarity=table)
    assert [(s.base, s.into, s.folded, s.accepted) for s in result.steps] == [
        (4, 4, (5, 6), True), (3, 3, (4, 7), False), (2, 2, (3, 4), True)]
    assert result.groups == [(0,), (1,), (2, 3, 4, 5, 6), (7,)]
    assert table.calls[2] == (((4, 2),), 2, 2)


def test_walk_respects_low_threshold_strictly_and_target_cap():
    # similarity exactly T is rejected (s > T), and the walk never goes below low
    table = TableSimilarity([0.5, 0.5, 0.5])
    result = acceptance_walk(6, combine=2, low=1, high=5, interval=1, threshold=0.5, similarity=table)
    assert [c[1:] for c in table.calls] == [(3, 1), (2, 1), (1, 1)] and result.removed_layers == []
    # target mode: L=8, C=3, I=1: l=4 folds 2 (accept, 2 gone); l=3 may fold min(2, 6-3-1, 3-2) = 1 -> stop at 3
    table = TableSimilarity([0.9, 0.9])
    result = acceptance_walk(8, combine=3, low=0, high=7, interval=1, threshold=0.5, similarity=table, max_removed=3)
    assert [c[1:] for c in table.calls] == [(4, 2), (3, 1)]
    assert result.groups == [(0,), (1,), (2,), (3, 4, 5, 6), (7,)]


def test_threshold_search_finds_the_highest_threshold_reaching_the_target():
    similarity_by_base = {7: 0.81, 6: 0.42, 5: 0.93, 4: 0.66, 3: 0.12, 2: 0.58, 1: 0.77, 0: 0.05}

    def walk(threshold):
        return acceptance_walk(10, combine=2, low=0, high=9, interval=1, threshold=threshold, max_removed=3,
                               similarity=lambda history, base, count: similarity_by_base[base])

    found, result, trace = search_threshold(walk, target_removed=3)
    # by brute force over the thresholds that matter (just below each similarity)
    candidates = [s - 1e-9 for s in similarity_by_base.values()]
    best = max(t for t in candidates if len(walk(t).removed_layers) >= 3)
    assert found == pytest.approx(best, abs=1e-5)
    assert len(result.removed_layers) == 3 and len(trace) == 25


def test_candidate_similarity_is_the_cosine_of_last_hidden_states_against_the_original(ids):
    model = tiny_model("llama", num_layers=6)
    evaluator = collapse_module.CandidateEvaluator(model, ids, "paper", progress=False)

    def by_hand(candidate):
        # the slow obvious way: the full model's hidden_states[-1] (after the final norm), one block at a time
        values = []
        for block in ids:
            with torch.no_grad():
                a = model(block[None], output_hidden_states=True).hidden_states[-1].flatten()
                b = candidate(block[None], output_hidden_states=True).hidden_states[-1].flatten()
            values.append(float(a @ b / (a.norm() * b.norm())))
        return sum(values) / len(values)

    first = merge_into(model, 3, 2)
    assert evaluator((), 3, 2) == pytest.approx(by_hand(first), abs=1e-5)
    # a candidate after an accepted merge is built on the merged model and still compared with the original
    assert evaluator(((3, 2),), 1, 2) == pytest.approx(by_hand(merge_into(first, 1, 2)), abs=1e-5)
    assert by_hand(merge_into(first, 1, 2)) != pytest.approx(by_hand(merge_into(model, 1, 2)), abs=1e-3)


# ------------------------------------------------------------------------------------------------ end to end
@pytest.fixture()
def tiny_loaded(tiny_tokenizer):
    return LoadedModel(model=tiny_model("llama", num_layers=8), tokenizer=tiny_tokenizer, source="tiny",
                       description="tiny llama")


def test_collapse_on_a_tiny_model_follows_the_injected_similarities(tiny_loaded, monkeypatch):
    original = tiny_loaded.model
    expected_1 = expected_rdsc(original, 1, 2)
    expected_4 = expected_rdsc(original, 4, 2)
    values = iter([0.9, 0.3, 0.7])     # the trace of test_walk_matches_a_hand_traced_sequence
    monkeypatch.setattr(collapse_module, "mean_flat_cosine", lambda reference, candidate: next(values))
    result = collapse(tiny_loaded, "builtin", dry_run=True, combine=3, interval=2, threshold=0.5, samples=2,
                      seq_len=16, plots=False, progress=False)
    assert result.plan.kept_layers == [0, 1, 4, 7] and result.plan.removed_layers == [2, 3, 5, 6]
    assert result.merges == [{"into": 4, "from": [5, 6], "similarity": 0.9},
                             {"into": 1, "from": [2, 3], "similarity": 0.7}]
    assert result.rejected == [{"into": 2, "from": [3, 4], "similarity": 0.3}]
    for new_index, expected in ((1, expected_1), (2, expected_4)):
        got = layer_params(result.model, new_index)
        assert all(torch.allclose(got[n], expected[n], atol=1e-6) for n in expected)


def test_saved_output_reloads_with_plain_transformers_and_matches(tiny_loaded, ids, tmp_path):
    result = collapse(tiny_loaded, "builtin", tmp_path / "out", combine=3, remove=3, samples=2, seq_len=16,
                      progress=False)
    assert len(result.plan.removed_layers) == 3
    assert all(m["similarity"] > result.threshold for m in result.merges)
    assert all(r["similarity"] <= result.threshold for r in result.rejected)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out").float().eval()
    assert reloaded.config.num_hidden_layers == 5
    assert torch.allclose(logits(reloaded, ids), logits(result.model, ids), atol=1e-5, rtol=0)
    prompt = ids[:1, :8]
    with_cache = reloaded.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=True, pad_token_id=0)
    without = reloaded.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=False, pad_token_id=0)
    assert torch.equal(with_cache, without)
    metadata = json.loads((tmp_path / "out" / "depthprune.json").read_text())
    assert metadata["method"] == "laco" and metadata["collapse"]["merge"] == "paper"
    assert metadata["removed_layers"] == result.plan.removed_layers
    assert metadata["collapse"]["merges"] == result.merges and metadata["collapse"]["rejected"] == result.rejected
    folded = sorted(i for m in result.merges for i in m["from"])
    assert folded == metadata["removed_layers"]   # no nested merges in this run: every removed layer folded once
    assert (tmp_path / "out" / "collapse_similarity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the input model was not modified
    assert ModelAdapter(tiny_loaded.model).num_layers == 8


def test_collapsing_a_pruned_checkpoint_records_the_base_numbering(tiny_tokenizer, tmp_path, monkeypatch):
    model = tiny_model("llama", num_layers=8)
    model.save_pretrained(tmp_path / "base")
    tiny_tokenizer.save_pretrained(tmp_path / "base")
    prune(str(tmp_path / "base"), layers=[1], output=tmp_path / "pruned")   # kept 0, 2, 3, ..., 7
    values = iter([0.9, 0.1, 0.1, 0.1])
    monkeypatch.setattr(collapse_module, "mean_flat_cosine", lambda reference, candidate: next(values))
    result = collapse(str(tmp_path / "pruned"), "builtin", tmp_path / "out", combine=3, interval=1, threshold=0.5,
                      samples=2, seq_len=16, plots=False, progress=False)
    # 7-layer model, start at 6 - 3 = 3: current 3 (base 4) takes current 4, 5 (base 5, 6)
    assert result.merges == [{"into": 4, "from": [5, 6], "similarity": 0.9}]
    assert result.removed_original == [5, 6] and result.plan.removed_layers == [4, 5]   # base vs input numbering
    metadata = json.loads((tmp_path / "out" / "depthprune.json").read_text())
    assert metadata["kept_layers"] == [0, 2, 3, 4, 7] and metadata["removed_layers"] == [1, 5, 6]
    assert [r["into"] for r in metadata["collapse"]["rejected"]] == [3, 2, 0]


@pytest.mark.parametrize("options, message", [
    (dict(combine=1), "--combine"), (dict(interval=0), "--interval"), (dict(low=5, high=5), "--low < --high"),
    (dict(high=9), "--low < --high"), (dict(low=4, combine=4), "nothing to merge"),
    (dict(threshold=1.5), r"\[-1, 1\]"), (dict(threshold=0.5, remove=2), "not both"),
    (dict(remove=2, remove_ratio=0.2), "one of --remove, --remove-ratio, --target-depth"),
    (dict(target_depth=3, remove=5), "one of"), (dict(remove_ratio=1.5), "between 0 and 1"),
    (dict(target_depth=8), "--target-depth must be between 1 and 7"), (dict(target_depth=0), "layers kept"),
    (dict(remove=8), "--remove must be between 1 and 7"), (dict(merge="average"), "unknown merge"),
])
def test_bad_settings_are_refused_in_one_line(options, message):
    with pytest.raises(DepthpruneError, match=message) as error:
        LacoConfig(**options).resolved(8)
    assert "\n" not in str(error.value)


def test_defaults_resolve_to_the_paper_settings():
    config = LacoConfig().resolved(40)
    assert (config.combine, config.low, config.high, config.interval, config.threshold) == (7, 0, 39, 1, 0.45)
    assert LacoConfig(remove_ratio=0.25).resolved(30).remove == 8
    assert LacoConfig(target_depth=22).resolved(30).remove == 8 and LacoConfig(remove=8).resolved(30).remove == 8


def test_cli_collapses_a_checkpoint_folder(tiny_tokenizer, tmp_path, capsys):
    model = tiny_model("llama", num_layers=6)
    model.save_pretrained(tmp_path / "base")
    tiny_tokenizer.save_pretrained(tmp_path / "base")
    argv = ["collapse", str(tmp_path / "base"), "--data", "builtin", "--samples", "2", "--seq-len", "16",
            "--combine", "3", "--target-depth", "4", "--merge", "notebook", "--no-plots", "-o", str(tmp_path / "out")]
    assert main(argv) == 0
    assert "notebook (official notebooks' in-place bug" in capsys.readouterr().out
    metadata = json.loads((tmp_path / "out" / "depthprune.json").read_text())
    assert metadata["method"] == "laco-notebook" and metadata["num_layers"] == 4
    assert main(argv[:-2] + ["--threshold", "0.5", "-o", str(tmp_path / "other")]) == 2
    assert not (tmp_path / "other").exists()
