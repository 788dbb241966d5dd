"""What every criterion shares: its config base, the scorer protocol and the registry.

A criterion is one module holding a config dataclass, a scorer class and a ``register(...)`` call (peft's
one-module-per-method shape). The registry fails loudly: an unknown name lists the valid ones and the closest.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import DepthpruneError

# Shortened LLaMA's keep-set: the first 4 and last 2 layers are never removal candidates.
EDGE_KEEP_FIRST = 4
EDGE_KEEP_LAST = 2


@dataclass
class ScorerConfig:
    """Options every criterion has.

    Attributes:
        keep_first: this many first layers are never removal candidates (Shortened LLaMA's "+" uses 4).
        keep_last: this many last layers are never removal candidates (Shortened LLaMA's "+" uses 2). The final
            layer is protected by selection anyway unless removing it is explicitly allowed.
    """

    keep_first: int = 0
    keep_last: int = 0

    def protected_layers(self, num_layers: int) -> list[int]:
        first = range(min(self.keep_first, num_layers))
        last = range(max(num_layers - self.keep_last, 0), num_layers)
        return sorted(set(first) | set(last))


@dataclass
class ScoringContext:
    """What a scorer may use: the model, the calibration pass (None without data) and the weight reader."""

    model: Any
    num_layers: int
    calibration: Any = None          # CalibrationPass, or None when no data was given
    weights: Any = None              # SafetensorsWeights in sequential mode, else None
    layers_path: str = ""
    show_progress: bool = True


class Scorer:
    """A layer-importance criterion.

    Streaming scorers (``streaming = True``) receive ``update(layer_index, hidden_in, hidden_out, attention_mask)``
    for every layer and calibration batch of the one pass; the others do their work in ``compute(context)``, called
    after the pass. ``finalize()`` returns the entries this criterion adds to ``scores.json``.
    """

    name = ""
    streaming = True
    needs_data = True
    needs_all_layers = False      # cannot run in sequential mode (gradients, or re-running later layers)

    def __init__(self, config: ScorerConfig, num_layers: int):
        self.config = config
        self.num_layers = num_layers

    def bind(self, calibration_pass) -> None:
        self.calibration = calibration_pass

    def update(self, layer_index: int, hidden_in: torch.Tensor, hidden_out: torch.Tensor,
               attention_mask: torch.Tensor) -> None:
        """One layer on one batch: ``hidden_in`` = h[l], ``hidden_out`` = h[l+1] (pre-norm for the last layer)."""

    def compute(self, context: ScoringContext) -> None:
        """Work done after the streaming pass (or instead of it, for criteria that need no activations)."""

    def finalize(self) -> dict:
        raise NotImplementedError


@dataclass(frozen=True)
class ScorerEntry:
    name: str
    config_class: type
    scorer_class: type
    description: str


SCORERS: dict[str, ScorerEntry] = {}


def register(name: str, config_class: type, scorer_class: type, description: str) -> None:
    """Add a criterion to the registry (called once by each criterion module)."""
    if name in SCORERS:
        raise RuntimeError(f"criterion {name!r} registered twice")
    scorer_class.name = name
    SCORERS[name] = ScorerEntry(name, config_class, scorer_class, description)


def get_entry(name: str) -> ScorerEntry:
    """The registry entry of a criterion; an unknown name is an error naming the valid ones and the closest."""
    if name not in SCORERS:
        close = difflib.get_close_matches(name, list(SCORERS), n=1, cutoff=0.4)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise DepthpruneError(f"unknown metric {name!r}; valid metrics: {', '.join(SCORERS)}{hint}")
    return SCORERS[name]


def parse_metrics(text: str | list[str] | tuple[str, ...]) -> list[str]:
    """``"angular,bi"`` -> ``["angular", "bi"]``, each checked against the registry, duplicates refused."""
    names = [n.strip() for n in text.split(",")] if isinstance(text, str) else list(text)
    names = [n for n in names if n]
    if not names:
        raise DepthpruneError(f"no metric given; choose from {', '.join(SCORERS)}")
    for name in names:
        get_entry(name)
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DepthpruneError(f"metric(s) {duplicates} listed twice; list each once")
    return names


def real_token_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """``(batch, seq)`` bool: True where the token is real (not padding)."""
    return attention_mask.to(torch.bool)


def last_real_token(attention_mask: torch.Tensor) -> torch.Tensor:
    """``(batch,)`` index of the last real token of each sample (works for left and right padding)."""
    mask = attention_mask.to(torch.long)
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return torch.where(mask > 0, positions, torch.full_like(positions, -1)).max(dim=1).values
