"""Angular distance between the input and output of a block of layers (Gromov et al., arXiv 2403.17887).

``d(l, n) = arccos(cos(h[l]_T, h[l+n]_T)) / pi`` on the last real token T (or every real token), averaged over
samples. One pass keeps ``h[l]_T`` for every l, which gives the whole table for every block size n at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import DepthpruneError
from .base import Criterion, CriterionOption, Scorer, ScorerConfig, last_real_token, real_token_mask, register
from .plots import angular_plots

TOKEN_MODES = ("last", "all")


def angular_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise ``arccos(cos(a, b)) / pi`` in float32, cosine clamped to [-1, 1]; ``(N, H), (N, H) -> (N,)``."""
    a, b = a.float(), b.float()
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1, eps=1e-12)
    return torch.arccos(cos.clamp(-1.0, 1.0)) / math.pi


def angular_distance_table(states: list[torch.Tensor]) -> dict[int, list[float]]:
    """Every block's mean angular distance from the states entering each layer.

    Args:
        states: ``L + 1`` tensors ``(N, H)``: row i of ``states[l]`` is token i's state entering layer l
            (``states[L]`` is the last layer's pre-norm output).

    Returns:
        ``{n: [d(0, n), d(1, n), ..., d(L - n, n)]}`` for n = 1 .. L-1, each the mean over the N rows.
    """
    num_layers = len(states) - 1
    if num_layers < 2:
        raise DepthpruneError(f"the angular table needs at least 2 layers (got {num_layers})")
    units = [torch.nn.functional.normalize(s.float(), dim=-1, eps=1e-12) for s in states]
    table = {}
    for n in range(1, num_layers):
        table[n] = [float((torch.arccos((units[l] * units[l + n]).sum(-1).clamp(-1.0, 1.0)) / math.pi).mean())
                    for l in range(num_layers - n + 1)]
    return table


@dataclass
class AngularConfig(ScorerConfig):
    """Attributes:
        tokens: ``last`` (the paper: last real token of each sample) or ``all`` (mean over every real token; keeps
            a unit-normalised copy of every layer's states on CPU: (L+1) x tokens x hidden x 4 bytes).
    """

    tokens: str = "last"

    def __post_init__(self):
        if self.tokens not in TOKEN_MODES:
            raise DepthpruneError(f"unknown --token-positions {self.tokens!r}; use one of {', '.join(TOKEN_MODES)}")


class AngularScorer(Scorer):
    def __init__(self, config: AngularConfig, num_layers: int):
        super().__init__(config, num_layers)
        self.states: list[list[torch.Tensor]] = [[] for _ in range(num_layers + 1)]   # [layer][batch] (N_b, H)

    def _select(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.config.tokens == "last":
            last = last_real_token(attention_mask)                         # (batch,)
            rows = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]   # (batch, hidden)
        else:
            rows = hidden[real_token_mask(attention_mask)]                 # (real tokens, hidden)
        return torch.nn.functional.normalize(rows.float(), dim=-1, eps=1e-12).cpu()

    def update(self, layer_index, hidden_in, hidden_out, attention_mask):
        if layer_index == 0:
            self.states[0].append(self._select(hidden_in, attention_mask))
        self.states[layer_index + 1].append(self._select(hidden_out, attention_mask))

    def finalize(self) -> dict:
        states = [torch.cat(per_batch) for per_batch in self.states]
        table = angular_distance_table(states)
        return {"angular": {str(n): values for n, values in table.items()}, "angular_tokens": self.config.tokens}


CRITERION = register(Criterion(
    name="angular", selection="block", config_class=AngularConfig, scorer_class=AngularScorer,
    description="angular distance d(l, n) between a block's input and output (Gromov et al.); removes the best "
                "block",
    options=(CriterionOption("token_positions", "tokens", choices=TOKEN_MODES, default="last",
                             help="angular distance on the last real token of each sample, or on all real tokens"),),
    evidence_keys=("angular_tokens",), plot=angular_plots))
