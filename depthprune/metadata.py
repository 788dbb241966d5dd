"""The one schema of the JSON files depthprune writes; writers and the report share these names (docs/metadata.md).

Files, one per kind of output folder:

- ``depthprune.json`` beside every saved model (prune, collapse, heal): the provenance in the ORIGINAL base model's
  numbering at the top level, a ``collapse`` section when LaCo made the model, a ``compensation`` section when
  ``prune --compensate`` folded a compensation into it, a ``healing`` section when it was
  healed (earlier healings in ``parent_healing``, earlier pruning steps in ``parent_steps``).
- ``scores.json`` (score, prune by criterion, sweep): ``num_layers`` and one entry per criterion.
- ``results.json`` (eval): ``perplexity``, ``tasks``, ``speed`` and ``evaluated`` (which model, how many layers).
- ``sweep.json`` (sweep): ``points``, one per (method, n).
- ``run.json`` (run): what produced every step folder of a recipe.

The accessors below read these files into small dataclasses; they never invent a value a file does not hold.
"""

from __future__ import annotations

from dataclasses import dataclass, field

METADATA_FILE = "depthprune.json"
SCORES_FILE = "scores.json"
RESULTS_FILE = "results.json"
SWEEP_FILE = "sweep.json"
RUN_FILE = "run.json"
# The JSON files a step folder may hold, in the order the report shows them.
KNOWN_FILES = (METADATA_FILE, SCORES_FILE, RESULTS_FILE, SWEEP_FILE)

# Sections of depthprune.json written by the step that made the model.
COLLAPSE_KEY = "collapse"
COMPENSATION_KEY = "compensation"
HEALING_KEY = "healing"
PARENT_HEALING_KEY = "parent_healing"
PARENT_STEPS_KEY = "parent_steps"
# The section of results.json naming the evaluated model.
EVALUATED_KEY = "evaluated"


@dataclass
class ModelRecord:
    """Top level of ``depthprune.json``: what was cut, in the original base model's 0-based numbering."""

    base_model: str | None
    method: str | None
    num_layers_original: int | None
    num_layers: int | None
    removed_layers: list[int]
    kept_layers: list[int]
    parent_methods: list[str] = field(default_factory=list)   # earlier steps' methods, oldest first

    @classmethod
    def from_metadata(cls, metadata: dict) -> "ModelRecord":
        return cls(base_model=metadata.get("base_model"), method=metadata.get("method"),
                   num_layers_original=metadata.get("num_layers_original"), num_layers=metadata.get("num_layers"),
                   removed_layers=list(metadata.get("removed_layers") or []),
                   kept_layers=list(metadata.get("kept_layers") or []),
                   parent_methods=[str(step.get("method")) for step in metadata.get(PARENT_STEPS_KEY) or []
                                   if isinstance(step, dict)])


@dataclass
class MergeRecord:
    """One LaCo candidate: layers ``folded`` into layer ``into`` (original numbering) and its similarity."""

    into: int
    folded: list[int]
    similarity: float


@dataclass
class CollapseRecord:
    """The ``collapse`` section of ``depthprune.json`` (written by :func:`depthprune.collapse`)."""

    merge_label: str
    threshold: float
    threshold_searched: bool
    merges: list[MergeRecord]
    rejected: list[MergeRecord]
    settings: dict

    @classmethod
    def from_section(cls, section: dict) -> "CollapseRecord":
        def merges(key):
            return [MergeRecord(into=m["into"], folded=list(m["from"]), similarity=m["similarity"])
                    for m in section.get(key) or []]

        return cls(merge_label=section.get("merge_label") or section.get("merge", "?"),
                   threshold=section.get("threshold"), threshold_searched=bool(section.get("threshold_searched")),
                   merges=merges("merges"), rejected=merges("rejected"), settings=dict(section.get("settings") or {}))


@dataclass
class HealingRecord:
    """The ``healing`` section of ``depthprune.json`` (written by :func:`depthprune.heal`)."""

    method: str
    method_run: str | None
    preset: str | None
    steps: int | None
    tokens_seen: int | None
    initial_eval_loss: float | None
    final_eval_loss: float | None
    final_train_loss: float | None
    train_losses: list[float]
    eval_losses: list[list]    # [step, loss] pairs
    data: dict
    teacher: str | None

    @classmethod
    def from_section(cls, section: dict) -> "HealingRecord":
        return cls(method=section.get("method", "?"), method_run=section.get("method_run"),
                   preset=section.get("preset"), steps=section.get("steps"), tokens_seen=section.get("tokens_seen"),
                   initial_eval_loss=section.get("initial_eval_loss"), final_eval_loss=section.get("final_eval_loss"),
                   final_train_loss=section.get("final_train_loss"),
                   train_losses=list(section.get("train_losses") or []),
                   eval_losses=[list(pair) for pair in section.get("eval_losses") or []],
                   data=dict(section.get("data") or {}), teacher=section.get("teacher"))


@dataclass
class CompensationRecord:
    """The ``compensation`` section of ``depthprune.json`` (written by :func:`depthprune.compensate.compensate`)."""

    method: str
    settings: dict
    calibration_tokens: int | None
    gaps: list[dict]            # per gap: removed_layers, kept_before (original numbering), fitted_on, folded_into, ...
    calibration_ppl: dict | None    # dense, pruned, compensated (in-sample)
    data: dict | None

    @classmethod
    def from_section(cls, section: dict) -> "CompensationRecord":
        return cls(method=section.get("method", "?"), settings=dict(section.get("settings") or {}),
                   calibration_tokens=section.get("calibration_tokens"), gaps=list(section.get("gaps") or []),
                   calibration_ppl=section.get("calibration_ppl"), data=section.get("data"))


def compensation_of(metadata: dict) -> CompensationRecord | None:
    """The training-free compensation folded into a model, if any (a healed model carries its parent's)."""
    section = metadata.get(COMPENSATION_KEY)
    return CompensationRecord.from_section(section) if isinstance(section, dict) else None


def collapse_of(metadata: dict) -> CollapseRecord | None:
    """The LaCo record of a model, if LaCo made it (a healed collapsed model carries its parent's section)."""
    section = metadata.get(COLLAPSE_KEY)
    return CollapseRecord.from_section(section) if isinstance(section, dict) else None


def healings_of(metadata: dict) -> list[HealingRecord]:
    """Every healing the model went through, oldest first."""
    sections = list(metadata.get(PARENT_HEALING_KEY) or []) + [metadata.get(HEALING_KEY)]
    return [HealingRecord.from_section(s) for s in sections if isinstance(s, dict)]


def evaluated_model(loaded) -> dict:
    """The ``evaluated`` section of ``results.json``: which model, and what was cut from its base model.

    A model depthprune did not write is the dense model: nothing removed.
    """
    from .adapter import ModelAdapter
    from .errors import DepthpruneError
    from .saving import read_metadata

    try:
        num_layers = ModelAdapter(loaded.model).num_layers
    except DepthpruneError:
        num_layers = None
    metadata = read_metadata(loaded.checkpoint_dir) or {}
    record = ModelRecord.from_metadata(metadata)
    return {"model": loaded.description, "num_layers": num_layers,
            "num_layers_original": record.num_layers_original or num_layers,
            "removed_layers": record.removed_layers, "method": record.method,
            "base_model": record.base_model or loaded.description,
            "dense": not record.removed_layers}
