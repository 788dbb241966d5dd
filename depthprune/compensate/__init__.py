"""Training-free compensation of a depth cut, folded into existing weights (``depthprune prune --compensate``).

One module per method, each with its config dataclass and its entry in :data:`COMPENSATIONS`:

- ``linear`` — ReplaceMe's least-squares map (arXiv 2505.02819), folded into the MLP output before each gap;
- ``cosine`` — ReplaceMe's cosine-distance objective, refined from the least-squares map;
- ``scale`` — Prune&Comp's magnitude ratio (arXiv 2507.18212), folded as 1/s into the layers after each gap;
- ``none`` — plain removal (the default).

The result is an ordinary checkpoint with the same config as plain pruning: only existing tensors change.
:func:`compensate` applies a method to a dense model given the plan and calibration tokens.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from ..errors import DepthpruneError
from . import cosine, linear, scale  # noqa: F401  (each registers its entry)
from .base import COMPENSATIONS, CompensationEntry, Gap, calibration_token_count, gaps_of, split_batches
from .cosine import CosineConfig
from .linear import LinearConfig
from .scale import ScaleConfig

NONE = "none"


@dataclass
class NoneConfig:
    """``--compensate none`` has no options: the layers are removed and nothing is folded."""


def _run_none(model, plan, gaps, batches, config, on_pruned, show_progress=True, **allow):
    from ..prune import apply_plan

    apply_plan(model, plan, **allow)
    on_pruned(model)
    return [{"fitted_on": None, "folded_into": []} for _ in gaps]


COMPENSATIONS.register(CompensationEntry(name=NONE, config_class=NoneConfig, description="plain removal",
                                         run=_run_none, check=lambda model, gaps, config: None))


# Real tokens the in-sample perplexities of the record are measured on (the leading calibration batches)
MEASURE_TOKENS = 8192


def leading_batches(batches: list, tokens: int) -> list:
    """The first batches that together hold at least ``tokens`` real tokens (all of them if fewer)."""
    taken, count = [], 0
    for ids, mask in batches:
        if count >= tokens:
            break
        taken.append((ids, mask))
        count += int(mask.sum())
    return taken


def compensate(model, plan, method: str, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               config=None, batch_size: int = 8, measure: bool = True, original_layers: list[int] | None = None,
               data: dict | None = None, show_progress: bool = True, **allow) -> dict:
    """Remove the plan's layers from the DENSE ``model`` (in place) and fold ``method``'s compensation into it.

    Args:
        model: the dense causal LM; pruned in place.
        plan: a :class:`~depthprune.plan.PrunePlan` for this model.
        method: a name of :data:`COMPENSATIONS` (linear, cosine, scale, none).
        input_ids: calibration tokens ``(samples, seq_len)``; ``attention_mask`` (1 = real token) excludes padding.
        config: the method's config dataclass (default: its defaults).
        batch_size: samples per forward.
        measure: also measure calibration perplexity of the dense, the plainly pruned and the compensated model
            (in-sample, since the fit saw these tokens): three more passes over the leading batches that hold
            :data:`MEASURE_TOKENS` real tokens, so that a large calibration set does not cost three more full
            passes (at 32,768 tokens they took longer than the fit itself).
        original_layers: the base model's index of each of this model's layers (when it is already pruned), so
            that the record uses the original numbering.
        data: the calibration data's description, for the record.
        allow: ``allow_final_layer``, ``allow_first_layer``, ``allow_single_layer`` (see ``check_removal``).

    Returns:
        The ``compensation`` section of ``depthprune.json``: method, settings, calibration tokens, one record per
        gap (removed layers, the kept layer before it, what was fitted on, the tensors changed, fit errors) and
        the calibration perplexities when measured.
    """
    from ..adapter import ModelAdapter
    from ..quality_gate import calibration_perplexity

    entry = COMPENSATIONS.get(method)
    config = entry.config_class() if config is None else config
    if not isinstance(config, entry.config_class):
        raise DepthpruneError(f"--compensate {method} takes a {entry.config_class.__name__}, not "
                              f"{type(config).__name__}")
    ModelAdapter(model).check_removal(plan.removed_layers, **allow)
    gaps = gaps_of(plan.removed_layers)
    if not gaps:
        raise DepthpruneError("the plan removes no layers; there is nothing to compensate")
    entry.check(model, gaps, config)                       # refuse before any work
    batches = split_batches(input_ids, attention_mask, batch_size)
    quality, measured = {}, leading_batches(batches, MEASURE_TOKENS)
    if measure:
        quality["dense"] = calibration_perplexity(model, measured, desc="calibration ppl: dense")

    def on_pruned(pruned) -> None:
        if measure:
            quality["pruned"] = calibration_perplexity(pruned, measured, desc="calibration ppl: pruned")

    records = entry.run(model, plan, gaps, batches, config, on_pruned, show_progress, **allow)
    if measure:
        quality["compensated"] = calibration_perplexity(model, measured, desc="calibration ppl: compensated")
        quality["tokens"] = calibration_token_count(measured)
    number = original_layers if original_layers is not None else list(range(plan.num_layers))
    gap_records = [{"removed_layers": [number[i] for i in gap.layers],
                    "kept_before": number[gap.kept_before] if gap.kept_before is not None else None, **record}
                   for gap, record in zip(gaps, records)]
    return {"method": method, "description": entry.description, "settings": asdict(config), "data": data,
            "calibration_tokens": calibration_token_count(batches), "gaps": gap_records,
            "calibration_ppl": quality or None}


__all__ = ["COMPENSATIONS", "CompensationEntry", "CosineConfig", "Gap", "LinearConfig", "NONE", "NoneConfig",
           "ScaleConfig", "compensate", "gaps_of"]
