"""Training-free compensation on tiny models: each fit against the slow obvious computation, each fold against the
model's own forward with the same operation applied by a hook, and only the intended tensors changed."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM

from depthprune import DepthpruneError
from depthprune.adapter import ModelAdapter
from depthprune.compensate import COMPENSATIONS, compensate, gaps_of
from depthprune.compensate.base import Gap, branch_projection, fold_output_transform, split_batches
from depthprune.compensate.cosine import mean_cosine_distance, refine_cosine
from depthprune.compensate.linear import LeastSquaresAccumulator, LeastSquaresFit, LinearConfig, run_transform_fit
from depthprune.plan import PrunePlan
from depthprune.prune import apply_plan
from tiny_models import VOCAB, tiny_config, tiny_model


def _ids(samples=6, seq_len=24, seed=1):
    return torch.randint(3, VOCAB, (samples, seq_len), generator=torch.Generator().manual_seed(seed))


def _plan(num_layers, removed):
    return PrunePlan(num_layers=num_layers, removed_layers=sorted(removed))


@torch.no_grad()
def _logits(model, ids):
    return model(input_ids=ids, use_cache=False).logits


def _relative_difference(a, b) -> float:
    """Largest difference relative to the largest value (random tiny models have logits of about 1e-3)."""
    return float((a - b).abs().max() / a.abs().max())


def test_every_entry_instantiates_from_its_defaults():
    assert COMPENSATIONS.names() == ("linear", "cosine", "scale", "none")
    for entry in COMPENSATIONS:
        assert entry.config_class() is not None and entry.description
    with pytest.raises(DepthpruneError, match="did you mean 'linear'"):
        COMPENSATIONS.get("lineer")


def test_gaps_of_a_removal_set():
    assert gaps_of([8, 3, 4]) == [Gap(3, 4, 3), Gap(8, 8, 6)]
    assert gaps_of([0, 1]) == [Gap(0, 1, 0)] and gaps_of([0, 1])[0].kept_before is None
    assert gaps_of([5])[0].kept_before == 4 and gaps_of([]) == []


def test_least_squares_equals_lstsq_over_the_same_activations():
    generator = torch.Generator().manual_seed(0)
    mlp_out = torch.randn(300, 16, generator=generator) * torch.linspace(0.1, 5, 16)    # uneven channel scales
    residual_target = mlp_out @ torch.randn(16, 16, generator=generator) + 0.1 * torch.randn(300, 16,
                                                                                               generator=generator)
    accumulator = LeastSquaresAccumulator(16)
    for chunk_m, chunk_r in zip(mlp_out.split(70), residual_target.split(70)):    # streamed in uneven chunks
        accumulator.update(chunk_m, chunk_r)
    m, r = mlp_out.double(), residual_target.double()
    assert torch.allclose(accumulator.solve(0.0), torch.linalg.lstsq(m, r).solution, atol=1e-9)
    # the ridge pulls towards the identity: least squares on [M; sqrt(a) I] T = [R; sqrt(a) I]
    ridge = 0.05
    alpha = ridge * float((m * m).sum()) / 16
    eye = torch.eye(16, dtype=torch.float64)
    expected = torch.linalg.lstsq(torch.cat([m, alpha ** 0.5 * eye]), torch.cat([r, alpha ** 0.5 * eye])).solution
    transform = accumulator.solve(ridge)
    assert torch.allclose(transform, expected, atol=1e-9)
    assert accumulator.squared_error(transform) == pytest.approx(float(((m @ transform - r) ** 2).sum()), rel=1e-9)
    assert accumulator.errors(transform)["mse_plain"] == pytest.approx(float(((m - r) ** 2).sum()) / 300, rel=1e-9)


@pytest.mark.parametrize("model_type", ["llama", "gpt2", "gpt_neox", "falcon", "opt"])
def test_folding_a_transform_equals_applying_it_by_a_hook(model_type):
    """W <- Tᵀ W (Conv1D: W <- W T), b <- b T gives the logits of multiplying the projection's output by T."""
    model = tiny_model(model_type, num_layers=4)
    adapter = ModelAdapter(model)
    projection = branch_projection(adapter, 1, "mlp", "linear")
    if getattr(projection, "bias", None) is not None:
        torch.nn.init.normal_(projection.bias, std=0.5)     # a bias that matters (they start at zero)
    transform = torch.eye(64) + 0.3 * torch.randn(64, 64, generator=torch.Generator().manual_seed(2))
    ids = _ids(2, 12)
    handle = projection.register_forward_hook(lambda module, args, output: output @ transform)
    hooked = _logits(model, ids)
    handle.remove()
    plain = _logits(model, ids)
    fold_output_transform(projection, transform)
    folded = _logits(model, ids)
    assert not torch.allclose(plain, hooked, atol=1e-3)        # the transform matters
    assert torch.allclose(folded, hooked, atol=2e-4, rtol=1e-4)


def _slow_activations(model, rows, kept_before, end):
    """M, h_i and L of the dense model, row by row without padding, read by hooks and output_hidden_states."""
    projection = branch_projection(ModelAdapter(model), kept_before, "mlp", "test")
    mlp_outputs, streams, targets = [], [], []
    handle = projection.register_forward_hook(lambda module, args, output: mlp_outputs.append(output[0]))
    with torch.no_grad():
        for row in rows:
            hidden = model(input_ids=row[None], output_hidden_states=True, use_cache=False).hidden_states
            streams.append(hidden[kept_before + 1][0])
            targets.append(hidden[end + 1][0])        # a layer before the last: hidden_states are pre-norm there
    handle.remove()
    return torch.cat(mlp_outputs).double(), torch.cat(streams).double(), torch.cat(targets).double()


class _Recording:
    """Wraps a fit and keeps the transform it returns."""

    def __init__(self, fit, sink):
        self.fit, self.sink = fit, sink

    def update(self, *args):
        self.fit.update(*args)

    def solve(self, show_progress=True):
        transform, stats = self.fit.solve(show_progress)
        self.sink.append(transform)
        return transform, stats


def test_linear_fit_is_lstsq_on_real_tokens_only():
    """The pipeline's T, from a padded batch with its mask, equals lstsq over the unpadded rows' activations."""
    model = tiny_model("llama", num_layers=6)
    ids = _ids(4, 40)
    mask = torch.ones_like(ids)
    mask[1, 26:] = 0                                     # right padding: garbage tokens after row 1's end
    mask[3, 14:] = 0
    rows = [ids[i, :int(mask[i].sum())] for i in range(4)]
    m, h, target = _slow_activations(model, rows, kept_before=1, end=3)
    r = target - (h - m)
    ridge = 1e-2
    config = LinearConfig(ridge=ridge)

    def fitted(attention_mask):
        transforms = []
        run_transform_fit(copy.deepcopy(model), _plan(6, [2, 3]), gaps_of([2, 3]),
                          split_batches(ids, attention_mask, 3), config,
                          lambda dim: _Recording(LeastSquaresFit(dim, config), transforms), "linear",
                          on_pruned=lambda pruned: None, show_progress=False)
        return transforms[0]

    alpha = (ridge * float((m * m).sum()) / m.shape[1]) ** 0.5
    eye = torch.eye(m.shape[1], dtype=torch.float64)
    expected = torch.linalg.lstsq(torch.cat([m, alpha * eye]), torch.cat([r, alpha * eye])).solution
    assert torch.allclose(fitted(mask), expected, atol=1e-4)
    assert not torch.allclose(fitted(None), expected, atol=1e-2)     # the padding would have changed the fit


def test_compensated_linear_lowers_the_stream_error_and_changes_one_tensor():
    model = tiny_model("llama", num_layers=6)
    plain = copy.deepcopy(model)
    apply_plan(plain, _plan(6, [2, 3]))
    record = compensate(model, _plan(6, [2, 3]), "linear", _ids(), show_progress=False)
    assert model.config.to_dict() == plain.config.to_dict()           # the same config as plain pruning
    (gap,) = record["gaps"]
    assert gap["removed_layers"] == [2, 3] and gap["kept_before"] == 1 and gap["fitted_on"] == "dense model"
    assert gap["folded_into"] == ["model.layers.1.mlp.down_proj"]
    assert gap["mse_compensated"] < gap["mse_plain"] and 0 <= gap["error_left"] < 1
    assert record["calibration_tokens"] == 6 * 24 and set(record["calibration_ppl"]) == {"dense", "pruned",
                                                                                          "compensated", "tokens"}
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, plain.state_dict()[k])]
    assert changed == ["model.layers.1.mlp.down_proj.weight"]


def _perplexity_by_hand(model, ids) -> float:
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).double(), ids[:, 1:].flatten())
    return float(torch.exp(nll))


def test_record_perplexities_are_measured_on_the_leading_blocks_only(monkeypatch):
    import depthprune.compensate as compensation

    monkeypatch.setattr(compensation, "MEASURE_TOKENS", 50)     # batches of 2 x 24 tokens: the first two reach it
    model, ids = tiny_model("llama", num_layers=6), _ids(samples=12)
    dense, plain = copy.deepcopy(model), copy.deepcopy(model)
    apply_plan(plain, _plan(6, [2, 3]))
    record = compensate(model, _plan(6, [2, 3]), "linear", ids, batch_size=2, show_progress=False)
    quality, leading = record["calibration_ppl"], ids[:4]
    assert record["calibration_tokens"] == 12 * 24 and quality["tokens"] == 4 * 24    # the fit saw all twelve
    assert quality["dense"] == pytest.approx(_perplexity_by_hand(dense, leading), rel=1e-5)
    assert quality["pruned"] == pytest.approx(_perplexity_by_hand(plain, leading), rel=1e-5)
    assert quality["compensated"] == pytest.approx(_perplexity_by_hand(model, leading), rel=1e-5)
    assert quality["dense"] != pytest.approx(_perplexity_by_hand(dense, ids), rel=1e-5)


def test_several_gaps_sequential_fit_uses_the_compensated_model_and_differs_from_the_dense_fit():
    model = tiny_model("llama", num_layers=6)
    plan = _plan(6, [1, 3, 4])
    sequential, dense = copy.deepcopy(model), copy.deepcopy(model)
    record = compensate(sequential, plan, "linear", _ids(), config=LinearConfig(fit="sequential"), measure=False,
                        show_progress=False)
    dense_record = compensate(dense, plan, "linear", _ids(), measure=False, show_progress=False)   # the default
    assert [g["fitted_on"] for g in record["gaps"]] == ["dense model", "pruned model, earlier gaps compensated"]
    assert [g["fitted_on"] for g in dense_record["gaps"]] == ["dense model", "dense model"]
    assert [g["folded_into"] for g in record["gaps"]] == [["model.layers.0.mlp.down_proj"],
                                                          ["model.layers.1.mlp.down_proj"]]
    first = "model.layers.0.mlp.down_proj.weight"
    second = "model.layers.1.mlp.down_proj.weight"
    assert torch.allclose(sequential.state_dict()[first], dense.state_dict()[first])   # same first fit
    assert not torch.allclose(sequential.state_dict()[second], dense.state_dict()[second], atol=1e-5)
    assert all(g["error_left"] < 1 for g in record["gaps"] + dense_record["gaps"])


def _rms_model(eps: float, num_layers=6):
    config = tiny_config("llama", num_layers)
    config.rms_norm_eps = eps
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).float().eval()
    with torch.no_grad():     # layers that change the stream visibly (random ones barely do), so s matters
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.mul_(20)
            layer.mlp.down_proj.weight.mul_(20)
    return model


@pytest.mark.parametrize("removed", [[2, 3], [1, 3, 4]])
def test_scale_equals_scaling_the_stream_before_each_cut(removed):
    """Prune&Comp's form (the stream before each cut times s) and ours (1/s after it) give the same logits."""
    ids = _ids(3, 16)
    results = {}
    for eps in (1e-12, 1.0):
        model = _rms_model(eps)
        reference = copy.deepcopy(model)
        record = compensate(model, _plan(6, removed), "scale", _ids(), measure=False, show_progress=False)
        apply_plan(reference, _plan(6, removed))
        layers = ModelAdapter(reference).layers
        handles = [layers[gap.position - 1].register_forward_hook(
            lambda module, args, output, s=entry["scale"]: output * s)
            for gap, entry in zip(gaps_of(removed), record["gaps"])]
        results[eps] = (_logits(model, ids), _logits(reference, ids))
        for handle in handles:
            handle.remove()
        assert all(entry["scale"] > 0 for entry in record["gaps"])
        assert _relative_difference(_logits(reference, ids), results[eps][0]) > 1e-2    # the scale matters
    assert _relative_difference(*results[1e-12]) < 1e-4
    assert _relative_difference(*results[1.0]) > 1e-2    # a large eps breaks the scale invariance of the norms


def test_scale_changes_only_the_output_projections_after_the_cut():
    model = tiny_model("llama", num_layers=6)
    plain = copy.deepcopy(model)
    apply_plan(plain, _plan(6, [2, 3]))
    record = compensate(model, _plan(6, [2, 3]), "scale", _ids(), measure=False, show_progress=False)
    changed = sorted(k for k, v in model.state_dict().items() if not torch.equal(v, plain.state_dict()[k]))
    expected = sorted(f"model.layers.{i}.{name}.weight" for i in (2, 3) for name in ("self_attn.o_proj",
                                                                                     "mlp.down_proj"))
    assert changed == expected
    assert record["gaps"][0]["folded_into"] == [name[:-len(".weight")] for name in
                                                ["model.layers.2.self_attn.o_proj.weight",
                                                 "model.layers.2.mlp.down_proj.weight",
                                                 "model.layers.3.self_attn.o_proj.weight",
                                                 "model.layers.3.mlp.down_proj.weight"]]


def test_scale_needs_no_kept_layer_before_the_gap_but_linear_refuses():
    model = tiny_model("llama", num_layers=6)
    with pytest.raises(DepthpruneError, match="no kept layer before it"):
        compensate(copy.deepcopy(model), _plan(6, [0, 1]), "linear", _ids(), allow_first_layer=True)
    record = compensate(model, _plan(6, [0, 1]), "scale", _ids(), allow_first_layer=True, measure=False,
                        show_progress=False)
    assert record["gaps"][0]["kept_before"] is None and record["gaps"][0]["scale"] > 0


@pytest.mark.parametrize("model_type, method, message", [
    ("gemma2", "linear", "pass through post_attention_layernorm"),
    ("gemma2", "scale", "pass through post_attention_layernorm"),
    ("mixtral", "linear", "mixture-of-experts"),
    ("mixtral", "scale", "mixture-of-experts"),
])
def test_refusals_are_one_line_before_any_change(model_type, method, message):
    model = tiny_model(model_type, num_layers=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(DepthpruneError, match=message) as error:
        compensate(model, _plan(4, [2]), method, _ids())
    assert "\n" not in str(error.value)
    assert ModelAdapter(model).num_layers == 4
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_parallel_blocks_fold_on_the_mlp_output_and_lower_the_error():
    """GPT-NeoX's parallel attention/MLP: Y holds the attention term, T rides on the MLP output alone."""
    model = tiny_model("gpt_neox", num_layers=6)
    record = compensate(model, _plan(6, [2, 3]), "linear", _ids(), measure=False, show_progress=False)
    assert record["gaps"][0]["folded_into"] == ["gpt_neox.layers.1.mlp.dense_4h_to_h"]
    assert record["gaps"][0]["error_left"] < 1


def test_cosine_refinement_lowers_the_cosine_distance():
    generator = torch.Generator().manual_seed(3)
    mlp_out = torch.randn(512, 12, generator=generator)
    # not linear in M, and tokens of very different sizes: least squares fits the large ones, cosine weighs all
    sizes = torch.logspace(-2, 2, 512)[torch.randperm(512, generator=generator)][:, None]
    residual_target = torch.tanh(mlp_out @ torch.randn(12, 12, generator=generator)) * sizes
    accumulator = LeastSquaresAccumulator(12)
    accumulator.update(mlp_out, residual_target)
    start = accumulator.solve(0.0)
    refined = refine_cosine(mlp_out, residual_target, start, epochs=30, lr=1e-2, batch_tokens=128,
                            show_progress=False)
    before = mean_cosine_distance(mlp_out, residual_target, start)
    after = mean_cosine_distance(mlp_out, residual_target, refined)
    assert after < 0.9 * before, (before, after)


def test_cosine_compensation_records_its_distances():
    model = tiny_model("llama", num_layers=6)
    from depthprune.compensate import CosineConfig

    record = compensate(model, _plan(6, [2, 3]), "cosine", _ids(), config=CosineConfig(epochs=3),
                        measure=False, show_progress=False)
    gap = record["gaps"][0]
    assert gap["cosine_distance_compensated"] <= gap["cosine_distance_least_squares"] + 1e-4
    assert gap["folded_into"] == ["model.layers.1.mlp.down_proj"]
