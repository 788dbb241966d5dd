"""What every criterion shares: its config base, the scorer protocol, its registry entry and the registry.

A criterion is one module holding a config dataclass, a scorer class and one ``register(Criterion(...))`` call
(peft's one-module-per-method shape). Its :class:`Criterion` entry says everything the rest of depthprune needs —
how its scores become layers to remove, whether it needs data, gradients or the whole model, its options, its plot,
its help — so ``score --metrics``, ``prune --method``, ``sweep --methods``, recipes and the report read criteria
from :data:`CRITERIA` alone. Lookups fail loudly: an unknown name lists the valid ones and the closest.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Callable

import torch

from ..errors import DepthpruneError
from ..registry import Registry
from ..selection import SELECTIONS

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
    """How a criterion computes its scores (what it needs is said by its :class:`Criterion` entry).

    Streaming scorers (``streaming = True``) receive ``update(layer_index, hidden_in, hidden_out, attention_mask)``
    for every layer and calibration batch of the one pass; the others do their work in ``compute(context)``, called
    after the pass. ``finalize()`` returns the entries this criterion adds to ``scores.json``.
    """

    name = ""                     # set by :func:`register`
    streaming = True

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


def real_token_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """``(batch, seq)`` bool: True where the token is real (not padding)."""
    return attention_mask.to(torch.bool)


def last_real_token(attention_mask: torch.Tensor) -> torch.Tensor:
    """``(batch,)`` index of the last real token of each sample (works for left and right padding)."""
    mask = attention_mask.to(torch.long)
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return torch.where(mask > 0, positions, torch.full_like(positions, -1)).max(dim=1).values


# ------------------------------------------------------------------------------------------------ the registry
@dataclass(frozen=True)
class CriterionOption:
    """A scoring option of a criterion, as the command line, recipes and the Python API name it.

    Attributes:
        name: the option's name: ``token_positions`` is ``--token-positions`` on the command line and
            ``token_positions=`` in Python.
        field: the config attribute it sets.
        help: its ``--help`` text.
        type: converts the command-line text (``int``, ``float``; ``str`` keeps it).
        choices: the values allowed, or None for any.
        default: what the command line shows as default; None leaves the config's own default.
    """

    name: str
    field: str
    help: str
    type: Callable = str
    choices: tuple | None = None
    default: Any = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


@dataclass(frozen=True)
class Criterion:
    """Everything depthprune needs to know about one criterion (or score-free selection, such as ``last``).

    Attributes:
        name: what ``--metrics``, ``--method`` and ``--methods`` call it, and its key in ``scores.json``.
        description: one line for ``--help``: what it measures, the paper.
        selection: how its scores become the layers to remove, a key of :data:`depthprune.selection.SELECTIONS`:
            ``block`` (the contiguous block of n with the lowest score; scores ``{n: [score of the block at l]}``),
            ``lowest`` (the n lowest of one score per layer), ``order`` (the first n of a removal order; scores a
            list of layers) or ``chop`` (by position, no scores).
        config_class, scorer_class: its :class:`ScorerConfig` and :class:`Scorer`; both None for ``chop``.
        needs_data: reads calibration data.
        needs_gradients: backpropagates through the model (so it needs the whole model too).
        needs_whole_model: needs every layer in memory (re-runs later layers); cannot score sequentially.
        options: its own scoring options beyond the keep-set (``--keep-edges``), which every criterion has.
        count_option: the option that ``prune --n`` and ``sweep --n`` set (the layers an ``order`` must reach).
        evidence_keys: further ``scores.json`` keys it writes that go into a plan's evidence (for an ``order``:
            lists of one number per round, refused when NaN).
        plot: ``plot(plt, scores, folder, removed_layers) -> [file names]``: its own figures, drawn by ``score``.
    """

    name: str
    description: str
    selection: str
    config_class: type | None = None
    scorer_class: type | None = None
    needs_data: bool = True
    needs_gradients: bool = False
    needs_whole_model: bool = False
    options: tuple[CriterionOption, ...] = ()
    count_option: str | None = None
    evidence_keys: tuple[str, ...] = ()
    plot: Callable | None = None

    def __post_init__(self):
        if self.selection not in SELECTIONS:
            raise RuntimeError(f"criterion {self.name!r}: unknown selection {self.selection!r}; one of "
                               f"{', '.join(SELECTIONS)}")
        if (self.selection == "chop") != (self.scorer_class is None) or \
                (self.config_class is None) != (self.scorer_class is None):
            raise RuntimeError(f"criterion {self.name!r}: a 'chop' selection has no config or scorer, every other "
                               "selection has both")
        if self.count_option is not None and self.count_option not in {o.name for o in self.options}:
            raise RuntimeError(f"criterion {self.name!r}: count_option {self.count_option!r} is not one of its "
                               "options")
        if self.needs_gradients:
            object.__setattr__(self, "needs_whole_model", True)

    @property
    def scored(self) -> bool:
        """Whether it computes scores (``chop`` chooses by position alone)."""
        return self.scorer_class is not None

    @property
    def keeps_edges(self) -> bool:
        """Whether its config keeps Shortened LLaMA's first/last layers out of reach by default."""
        if self.config_class is None:
            return False
        defaults = {f.name: f.default for f in fields(self.config_class)}
        return bool(defaults.get("keep_first") or defaults.get("keep_last"))

    def make_config(self, keep_edges: bool | None = None, **options) -> ScorerConfig:
        """Its config from shared option values (by :attr:`CriterionOption.name`; None keeps the default).

        Args:
            keep_edges: True: the first-4/last-2 keep-set; False: none; None: the config's default.
            options: values of any criterion's options; those this criterion does not take are not used.
        """
        kwargs = {o.field: options[o.name] for o in self.options if options.get(o.name) is not None}
        if keep_edges is True:
            kwargs.update(keep_first=EDGE_KEEP_FIRST, keep_last=EDGE_KEEP_LAST)
        elif keep_edges is False:
            kwargs.update(keep_first=0, keep_last=0)
        return self.config_class(**kwargs)


CRITERIA: Registry[Criterion] = Registry("criterion", "--metrics")


def register(entry: Criterion) -> Criterion:
    """Add a criterion to :data:`CRITERIA` (each criterion module calls it once, at import)."""
    CRITERIA.register(entry)
    if entry.scorer_class is not None:
        entry.scorer_class.name = entry.name
    return entry


def scored_names() -> list[str]:
    """The criteria that compute scores (what ``--metrics`` takes), in registration order."""
    return [entry.name for entry in CRITERIA if entry.scored]


def criterion_options() -> dict[str, CriterionOption]:
    """Every registered criterion's options by name (two criteria sharing an option share its first definition)."""
    options: dict[str, CriterionOption] = {}
    for entry in CRITERIA:
        for option in entry.options:
            options.setdefault(option.name, option)
    return options


def owners_of(option_name: str) -> list[str]:
    """The criteria that take option ``option_name``."""
    return [entry.name for entry in CRITERIA if any(o.name == option_name for o in entry.options)]


def parse_metrics(text: str | list[str] | tuple[str, ...]) -> list[str]:
    """``"angular,bi"`` -> ``["angular", "bi"]``, each checked against the registry, duplicates refused."""
    names = [n.strip() for n in text.split(",")] if isinstance(text, str) else list(text)
    names = [n for n in names if n]
    scored = scored_names()
    if not names:
        raise DepthpruneError(f"no metric given; choose from {', '.join(scored)}")
    for name in names:
        if name in CRITERIA and not CRITERIA.get(name).scored:
            raise DepthpruneError(f"{name!r} chooses layers by position and has no scores; use it with "
                                  f"prune --method / sweep --methods, and score with {', '.join(scored)}")
        CRITERIA.get(name, option="--metrics", valid=scored)
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DepthpruneError(f"metric(s) {duplicates} listed twice; list each once")
    return names
