"""Criteria that need the logits or the last hidden state use the model's OWN path after the decoder layers.

That path is more than "final norm, then head" on several architectures: Granite divides the logits by
``logits_scaling``, OPT-350m-style models have no final norm but a ``project_out`` down to a smaller head, Gemma 2
soft-caps the logits. The expected values here come from the model's own ``forward``: the model with layers
removed by hand (each removed layer replaced by a stand-in that hands its input on unchanged, so every other layer
sees exactly the masks and positions it sees in the dense model), its ``.logits`` turned into a next-token loss by
hand. Every architecture in ``architectures.json`` is covered (``tiny_models.HEAD_CASES``).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from depthprune import ModelAdapter
from depthprune.adapter import architecture_table
from depthprune import DepthpruneError
from depthprune.collapse import CandidateEvaluator, check_mergeable, last_hidden_states, merge_into
from depthprune.scoring import make_configs, score_model
from tiny_models import HEAD_CASES, tiny_case_model

NUM_LAYERS = 4


class _HandsInputOn(nn.Module):
    """A removed layer: runs the real layer only to learn its output format, then returns its input unchanged."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, hidden_states, *args, **kwargs):
        output = self.layer(hidden_states, *args, **kwargs)
        return hidden_states if isinstance(output, torch.Tensor) else (hidden_states,) + tuple(output[1:])


def model_without(model, removed):
    """A copy of ``model`` in which the layers ``removed`` hand their input on unchanged."""
    copied = copy.deepcopy(model)
    layers = ModelAdapter(copied).layers
    for index in removed:
        layers[index] = _HandsInputOn(layers[index])
    return copied


@torch.no_grad()
def own_forward_mean_nll(model, ids) -> float:
    """Mean next-token NLL from ``model(ids).logits`` (all tokens real), in float64."""
    logits = model(input_ids=ids, use_cache=False).logits.double()      # (samples, seq, vocab)
    losses = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    return float(losses)


@pytest.fixture(scope="module")
def ids():
    torch.manual_seed(1)
    return torch.randint(3, 512, (3, 16))      # 3 samples; batch size 2 below gives two batches


def test_cases_cover_every_architecture_in_the_table():
    covered = {tiny_case_model(name, num_layers=2).config.model_type for name in HEAD_CASES}
    assert set(architecture_table()) <= covered


@pytest.mark.parametrize("case", HEAD_CASES)
def test_ppl_criterion_equals_the_models_own_forward_without_each_layer(case, ids):
    model = tiny_case_model(case, num_layers=NUM_LAYERS)
    scores = score_model(model, make_configs("ppl", keep_edges=False), input_ids=ids, batch_size=2,
                         show_progress=False)
    expected = [math.exp(own_forward_mean_nll(model_without(model, [layer]), ids)) for layer in range(NUM_LAYERS)]
    assert scores["ppl"] == pytest.approx(expected, rel=1e-4)
    assert scores["dense_ppl"] == pytest.approx(math.exp(own_forward_mean_nll(model, ids)), rel=1e-4)


@pytest.mark.parametrize("case", HEAD_CASES)
def test_sleb_losses_equal_the_models_own_forward(case, ids):
    model = tiny_case_model(case, num_layers=NUM_LAYERS)
    scores = score_model(model, make_configs("sleb", sleb_n=2), input_ids=ids, batch_size=2, show_progress=False)
    removed: list[int] = []
    for round_index in range(2):      # SLEB's rounds by hand: candidates are every layer but the first and last
        candidates = [i for i in range(1, NUM_LAYERS - 1) if i not in removed]
        losses = {c: own_forward_mean_nll(model_without(model, removed + [c]), ids) for c in candidates}
        best = min(candidates, key=lambda c: (losses[c], c))
        assert scores["sleb"][round_index] == best
        assert scores["sleb_ppl"][round_index] == pytest.approx(math.exp(losses[best]), rel=1e-4)
        removed.append(best)


@torch.no_grad()
def head_input(model, ids) -> torch.Tensor:
    """What the model's own forward hands to its output head, ``(samples, seq, head input)`` float32."""
    seen = []
    hook = model.get_output_embeddings().register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    try:
        model(input_ids=ids, use_cache=False)
    finally:
        hook.remove()
    return seen[0].float()


@pytest.mark.parametrize("case", HEAD_CASES)
def test_laco_compares_what_the_head_receives(case, ids):
    model = tiny_case_model(case, num_layers=NUM_LAYERS)
    assert torch.allclose(last_hidden_states(model, ids, batch_size=2), head_input(model, ids), atol=1e-5)
    try:
        check_mergeable(model, 1, 3)
    except DepthpruneError:     # the tiny Qwen2-MoE alternates dense and sparse layers: nothing to merge
        return
    evaluator = CandidateEvaluator(model, ids, "paper", batch_size=2, progress=False)
    candidate = merge_into(model, 1, 2, "paper")
    reference, merged = head_input(model, ids).flatten(1), head_input(candidate, ids).flatten(1)
    expected = float(torch.nn.functional.cosine_similarity(reference, merged, dim=1).mean())
    assert evaluator((), 1, 2) == pytest.approx(expected, abs=1e-5)
    evaluator.close()
