"""Perplexity on removal (Shortened LLaMA, arXiv 2402.02834): calibration perplexity of the model without layer l.

Inside the one pass, ``h[l]`` is in hand when layer l is reached, and the model without layer l is exactly the
kept layers ``l+1 .. L-1`` run on it: L(L-1)/2 layer runs in all, about half of re-running the model L times.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .base import Criterion, Scorer, ScorerConfig, register


def perplexity_from_nll(nll_sum: float, count: int = 1) -> float:
    """``exp(nll_sum / count)``, the perplexity of a summed (or, with ``count`` 1, mean) NLL; inf when it overflows."""
    mean = nll_sum / max(count, 1)
    return math.exp(mean) if mean < 700 else math.inf


@dataclass
class PPLConfig(ScorerConfig):
    """The perplexity criterion has no options beyond the keep-set."""


class PPLScorer(Scorer):
    def __init__(self, config: PPLConfig, num_layers: int):
        super().__init__(config, num_layers)
        self.nll = [0.0] * num_layers
        self.count = [0] * num_layers
        self.dense = [0.0, 0]

    def bind(self, calibration_pass) -> None:
        if calibration_pass.sequential:
            from ..errors import DepthpruneError

            raise DepthpruneError("metric 'ppl' re-runs later layers for every layer and needs them all in memory; "
                                  "drop --sequential or score ppl separately")
        self.calibration = calibration_pass

    def update(self, layer_index, hidden_in, hidden_out, attention_mask):
        run = self.calibration
        batch = run.current_batch
        later = range(layer_index + 1, self.num_layers)
        total, count = run.nll(run.run_layers(hidden_in, batch, later), batch)   # the model without this layer
        self.nll[layer_index] += total
        self.count[layer_index] += count
        if layer_index == self.num_layers - 1:
            total, count = run.nll(hidden_out, batch)
            self.dense[0] += total
            self.dense[1] += count

    def finalize(self) -> dict:
        return {"ppl": [perplexity_from_nll(t, c) for t, c in zip(self.nll, self.count)],
                "dense_ppl": perplexity_from_nll(*self.dense)}


CRITERION = register(Criterion(
    name="ppl", selection="lowest", config_class=PPLConfig, scorer_class=PPLScorer, needs_whole_model=True,
    description="calibration perplexity with layer l removed (Shortened LLaMA); removes the lowest",
    evidence_keys=("dense_ppl",)))
