"""Prune&Comp (arXiv 2507.18212): undo the drop in residual-stream magnitude a cut causes, in the weights.

Removing the block ``start..end`` hands layer ``end + 1`` the stream ``h[start]`` instead of ``h[end+1]``, which is
usually larger. Per gap ``s = E|h[end+1]| / E|h[start]|``, the mean absolute value over real calibration tokens and
channels of the dense model's stream after and before the block (a ratio of means: a per-channel ratio is
dominated by channels that are near zero before the block). The paper multiplies the embedding and every
attention/MLP output projection BEFORE the cut by s. With tied embeddings that would also scale the logits, so we
fold the equivalent form that leaves the embedding alone: every attention and MLP output projection (weight and
bias) of every kept layer AFTER the cut is multiplied by 1/s; several gaps multiply (the layers after gap g carry
1/(s_1 ... s_g)).

Where the two forms are equal: if every branch after the cut reads the stream through a scale-invariant norm
(pre-norm layers: ``norm(s x) = norm(x)``) and the final norm is one too, then stream(paper) = s · stream(ours) at
every position after the cut (by induction: each branch sees the same normalised input and ours adds 1/s of its
output), and the final norm removes the factor, so the logits are the same. A LayerNorm's bias is added after the
normalisation and biases of the output projections are scaled with their weights, so neither breaks it. What
breaks it: the norms' eps — ``x / sqrt(mean(x²) + eps)`` is scale-invariant only up to a relative error of about
``eps / mean(x²)``, negligible on trained models whose streams are far larger than eps, visible on a random tiny
model with eps 1e-6; a branch whose input is not normalised (post-norm layouts: OPT-350m) and a norm applied to a
branch output before the add (Gemma 2/3, OLMo 2), both refused. A gap with no layer after it (the final layer
removed) changes nothing: the final norm absorbs any scale.

``fit="sequential"`` (default) measures E|h[start]| of each later gap on the pruned model with earlier gaps
already scaled (times the factor the paper's form would carry there), ``fit="dense"`` on the dense model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..adapter import ModelAdapter
from ..errors import DepthpruneError
from .base import (COMPENSATIONS, CompensationEntry, Gap, branch_projection, calibration_token_count,
                   check_foldable, iterate_streams, projection_name, scale_output)
from .linear import check_fit


@dataclass
class ScaleConfig:
    """Options of ``--compensate scale``.

    Attributes:
        fit: ``sequential`` (later gaps measured on the model with earlier gaps compensated) or ``dense``.
    """

    fit: str = "sequential"

    def __post_init__(self):
        check_fit(self.fit)


def magnitude_ratio(abs_sum_after: float, abs_sum_before: float) -> float:
    """``s = E|h_after| / E|h_before|`` from sums of absolute values over the same tokens and channels."""
    if not abs_sum_before > 0:
        raise DepthpruneError("the residual stream before a removed block is all zeros on the calibration tokens; "
                              "give --data with real text")
    return float(abs_sum_after) / float(abs_sum_before)


def _check(model, gaps: list[Gap], config) -> None:
    adapter = ModelAdapter(model)
    check_foldable(adapter, "scale")
    removed = {layer for gap in gaps for layer in gap.layers}
    for layer in range(gaps[0].end + 1, adapter.num_layers):
        if layer not in removed:
            branch_projection(adapter, layer, "attn", "scale")
            branch_projection(adapter, layer, "mlp", "scale")


def _abs_sum(tensor: torch.Tensor) -> float:
    return float(tensor.to(torch.float64).abs().sum())


def _run(model, plan, gaps, batches, config, on_pruned, show_progress=True, **allow):
    from ..prune import apply_plan

    on_dense = gaps if config.fit == "dense" else gaps[:1]
    after = {gap: 0.0 for gap in gaps}
    before = {gap: 0.0 for gap in on_dense}
    streams = sorted({g.end + 1 for g in gaps} | {g.start for g in on_dense})
    for captured in iterate_streams(model, batches, streams, desc="dense model: calibration streams",
                                    show_progress=show_progress):
        for gap in gaps:
            after[gap] += _abs_sum(captured["stream"][gap.end + 1])
            if gap in on_dense:
                before[gap] += _abs_sum(captured["stream"][gap.start])
    apply_plan(model, plan, **allow)
    on_pruned(model)
    adapter = ModelAdapter(model)
    hidden = adapter.text_config
    elements = calibration_token_count(batches) * (getattr(hidden, "hidden_size", None) or getattr(hidden, "n_embd"))
    records, factor = [], 1.0      # factor: what the paper's form would have multiplied the stream by so far
    for number, gap in enumerate(gaps):
        if gap not in on_dense:
            before[gap] = factor * sum(_abs_sum(c["stream"][gap.position]) for c in iterate_streams(
                model, batches, [gap.position], desc=f"pruned model: gap {number + 1} of {len(gaps)}",
                show_progress=show_progress))
        ratio = magnitude_ratio(after[gap], before[gap])
        factor *= ratio
        names = []
        for layer in range(gap.position, adapter.num_layers):     # every kept layer after the cut
            for branch in ("attn", "mlp"):
                scale_output(branch_projection(adapter, layer, branch, "scale"), 1.0 / ratio)
                names.append(projection_name(adapter, layer, branch))
        records.append({"fitted_on": "dense model" if gap in on_dense else "pruned model, earlier gaps compensated",
                        "scale": ratio, "cumulative_scale": factor, "mean_abs_before": before[gap] / elements,
                        "mean_abs_after": after[gap] / elements, "folded_into": names,
                        "note": None if names else "no layer after the cut: the final norm absorbs any scale"})
    return records


COMPENSATIONS.register(CompensationEntry(
    name="scale", config_class=ScaleConfig,
    description="Prune&Comp: the residual stream's magnitude ratio across each cut, folded as 1/s into the output "
                "projections of every layer after it",
    run=_run, check=_check))
