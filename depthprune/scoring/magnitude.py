"""Weight magnitude (Shortened LLaMA's baseline): ``I_l = sum of |w|`` over layer l's weights. Needs no data."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch

from .base import EDGE_KEEP_FIRST, EDGE_KEEP_LAST, Criterion, Scorer, ScorerConfig, register


def weight_magnitude(tensors: Iterable[torch.Tensor]) -> float:
    """``sum |w|`` over every element of every tensor, accumulated in float64."""
    return float(sum(t.detach().abs().double().sum() for t in tensors))


@dataclass
class MagnitudeConfig(ScorerConfig):
    """Magnitude keeps Shortened LLaMA's first-4/last-2 rule on by default."""

    keep_first: int = EDGE_KEEP_FIRST
    keep_last: int = EDGE_KEEP_LAST


class MagnitudeScorer(Scorer):
    streaming = False

    def __init__(self, config: MagnitudeConfig, num_layers: int):
        super().__init__(config, num_layers)
        self.values: list[float] = []

    def compute(self, context) -> None:
        from tqdm.auto import tqdm

        from ..adapter import ModelAdapter

        layers = ModelAdapter(context.model).layers
        values = []
        bar = tqdm(range(self.num_layers), desc="magnitude", unit="layer", disable=not context.show_progress)
        for index in bar:
            params = list(layers[index].parameters())
            if context.weights is not None and any(p.device.type == "meta" for p in params):
                names = context.weights.layer_names(context.layers_path, index)
                values.append(weight_magnitude(context.weights.read(names).values()))   # one layer at a time
            else:
                values.append(weight_magnitude(params))
        self.values = values

    def finalize(self) -> dict:
        return {"magnitude": self.values}


CRITERION = register(Criterion(
    name="magnitude", selection="lowest", config_class=MagnitudeConfig, scorer_class=MagnitudeScorer,
    needs_data=False, description="sum of |w| per layer (Shortened LLaMA baseline); no data"))
