"""Iterative removal (SLEB, arXiv 2402.09025): repeatedly remove the layer whose removal hurts calibration loss least.

Every round re-scores the current model: for each remaining candidate, the loss without it, reusing the states
cached before it so only later layers re-run. The first and last layers are never candidates. The result is the
removal order; the first k entries are SLEB's choice for any k up to ``num_remove``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import DepthpruneError
from .base import Criterion, CriterionOption, Scorer, ScorerConfig, register
from .ppl import perplexity_from_nll


def sleb_candidates(num_layers: int, removed: set[int], protected: set[int]) -> list[int]:
    """Layers SLEB may remove next: not the first, not the last, not already removed, not protected."""
    return [i for i in range(1, num_layers - 1) if i not in removed and i not in protected]


@dataclass
class SLEBConfig(ScorerConfig):
    """Attributes:
        num_remove: how many layers to remove iteratively (None: a quarter of the layers, rounded down, >= 1).
    """

    num_remove: int | None = None


class SLEBScorer(Scorer):
    streaming = False

    def __init__(self, config: SLEBConfig, num_layers: int):
        super().__init__(config, num_layers)
        self.order: list[int] = []
        self.ppl_after: list[float] = []

    def target(self) -> int:
        n = self.config.num_remove if self.config.num_remove is not None else max(self.num_layers // 4, 1)
        protected = set(self.config.protected_layers(self.num_layers))
        available = len(sleb_candidates(self.num_layers, set(), protected))
        if n < 1 or n > available:
            raise DepthpruneError(f"sleb: cannot remove {n} layers; {available} of {self.num_layers} are candidates "
                                  "(never the first, the last or kept ones); choose --n between 1 and "
                                  f"{available}")
        return n

    def compute(self, context) -> None:
        run = context.calibration
        protected = set(self.config.protected_layers(self.num_layers))
        removed: set[int] = set()
        for round_index in range(self.target()):
            candidates = sleb_candidates(self.num_layers, removed, protected)
            losses, _ = run.removal_losses(removed, candidates, desc=f"sleb: round {round_index + 1}")
            not_numbers = [c for c in candidates if math.isnan(losses[c])]
            if not_numbers:     # NaN compares False with everything: an argmin would keep the first candidate
                raise DepthpruneError(f"sleb: the calibration loss is NaN without layer "
                                      f"{', '.join(map(str, not_numbers))} in round {round_index + 1}; a layer "
                                      "produced non-finite activations: re-score in float32 (--dtype float32) and "
                                      "check the model and the data")
            best = min(candidates, key=lambda c: (losses[c], c))
            removed.add(best)
            self.order.append(best)
            self.ppl_after.append(perplexity_from_nll(losses[best]))      # losses are means per token

    def finalize(self) -> dict:
        return {"sleb": self.order, "sleb_ppl": self.ppl_after}


CRITERION = register(Criterion(
    name="sleb", selection="order", config_class=SLEBConfig, scorer_class=SLEBScorer, needs_whole_model=True,
    description="iterative removal by calibration loss (SLEB); removes in its order",
    options=(CriterionOption("sleb_n", "num_remove", type=int, help="layers SLEB removes (default: a quarter)"),),
    count_option="sleb_n", evidence_keys=("sleb_ppl",)))
