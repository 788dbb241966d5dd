"""Taylor+ (Shortened LLaMA, arXiv 2402.02834): ``I_l = sum over weights w of layer l of |dLoss/dw * w|``.

The loss is the mean next-token loss over all calibration tokens; its gradient is accumulated batch by batch.
Memory: the whole model plus one gradient per weight (2x the weights) plus one batch's activations for backward,
so Taylor cannot run in sequential mode. "+" is the keep-set (first 4, last 2 layers never candidates), on by
default here as in the paper.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch

from ..errors import DepthpruneError
from .base import EDGE_KEEP_FIRST, EDGE_KEEP_LAST, Criterion, Scorer, ScorerConfig, register


def taylor_importance(weights_and_grads: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """``sum |w * g|`` over every element of every (weight, gradient) pair, in float64."""
    return float(sum((w.detach().double() * g.detach().double()).abs().sum() for w, g in weights_and_grads))


@dataclass
class TaylorConfig(ScorerConfig):
    """Taylor keeps Shortened LLaMA's first-4/last-2 rule on by default."""

    keep_first: int = EDGE_KEEP_FIRST
    keep_last: int = EDGE_KEEP_LAST


class TaylorScorer(Scorer):
    streaming = False

    def __init__(self, config: TaylorConfig, num_layers: int):
        super().__init__(config, num_layers)
        self.values: list[float] = []

    def compute(self, context) -> None:
        from tqdm.auto import tqdm

        from ..adapter import ModelAdapter

        run = context.calibration
        if run.sequential:
            raise DepthpruneError("metric 'taylor' needs gradients through the whole model; drop --sequential")
        model = context.model
        layers = ModelAdapter(model).layers
        params = list(model.parameters())
        saved_flags = [p.requires_grad for p in params]
        total_tokens = sum(int(((mask[:, 1:] > 0) & (mask[:, :-1] > 0)).sum()) for _, mask in run.batches)
        try:
            for p in params:
                p.requires_grad_(True)
                p.grad = None
            with torch.enable_grad():
                for ids, mask in tqdm(run.batches, desc="taylor: gradients", unit="batch",
                                      disable=not run.show_progress):
                    ids, mask = ids.to(run.device), mask.to(run.device)
                    labels = ids.masked_fill(mask == 0, -100)
                    labels[:, 1:] = labels[:, 1:].masked_fill(mask[:, :-1] == 0, -100)
                    count = int(((mask[:, 1:] > 0) & (mask[:, :-1] > 0)).sum())
                    loss = model(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False).loss
                    (loss * count / total_tokens).backward()      # gradient of the mean over all tokens
            self.values = [
                taylor_importance((p, p.grad) for p in layers[i].parameters() if p.grad is not None)
                for i in range(self.num_layers)
            ]
        finally:
            for p, flag in zip(params, saved_flags):
                p.grad = None
                p.requires_grad_(flag)

    def finalize(self) -> dict:
        return {"taylor": self.values}


CRITERION = register(Criterion(
    name="taylor", selection="lowest", config_class=TaylorConfig, scorer_class=TaylorScorer, needs_gradients=True,
    description="sum |w * dLoss/dw| per layer (Shortened LLaMA Taylor+); removes the lowest"))
