"""Block Influence (ShortGPT, arXiv 2403.03853): ``BI_l = 1 - mean over real tokens of cos(h[l], h[l+1])``."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import Criterion, Scorer, ScorerConfig, real_token_mask, register
from .plots import bi_plots


def block_influence_terms(hidden_in: torch.Tensor, hidden_out: torch.Tensor,
                          attention_mask: torch.Tensor) -> tuple[float, int]:
    """Sum over real tokens of ``cos(h_in, h_out)`` (float32, clamped) and the number of real tokens.

    Shapes: ``(batch, seq, hidden)`` twice and ``(batch, seq)``.
    """
    real = real_token_mask(attention_mask)
    cos = torch.nn.functional.cosine_similarity(hidden_in[real].float(), hidden_out[real].float(), dim=-1,
                                                eps=1e-12).clamp(-1.0, 1.0)
    return float(cos.sum()), int(real.sum())


def block_influence(cos_sum: float, count: int) -> float:
    """``1 - mean cosine``."""
    return 1.0 - cos_sum / count


@dataclass
class BIConfig(ScorerConfig):
    """Block Influence has no options beyond the keep-set."""


class BIScorer(Scorer):
    def __init__(self, config: BIConfig, num_layers: int):
        super().__init__(config, num_layers)
        self.cos_sum = [0.0] * num_layers
        self.count = [0] * num_layers

    def update(self, layer_index, hidden_in, hidden_out, attention_mask):
        cos_sum, count = block_influence_terms(hidden_in, hidden_out, attention_mask)
        self.cos_sum[layer_index] += cos_sum
        self.count[layer_index] += count

    def finalize(self) -> dict:
        return {"bi": [block_influence(s, c) for s, c in zip(self.cos_sum, self.count)]}


CRITERION = register(Criterion(
    name="bi", selection="lowest", config_class=BIConfig, scorer_class=BIScorer, plot=bi_plots,
    description="Block Influence, 1 - cos(h[l], h[l+1]) (ShortGPT); removes the lowest"))
