"""LaCo layer collapse: fold rear layers into a prior one while the model's output stays close (arXiv 2402.11187).

The merge (the paper's RDSC, "reserving differences while seeking common"): for a base layer ``l`` and the next
``m`` layers, every weight and bias of layer l's attention and MLP becomes ``W_l + sum_{k=1..m} (W_{l+k} - W_l)``.
Layer l keeps its OWN norms (every parameter owned by a norm module: input/post-attention norms, Qwen3/Gemma3
q/k norms, ...) and its own per-layer config (e.g. its sliding/full attention type); layers l+1..l+m are deleted.
Mixture-of-experts layers are merged expert by expert (expert i with expert i) and the router the same way; a
group mixing layers of different structure (a dense MLP with a sparse MoE block, as in Qwen2-MoE) is refused.

Note that with ``m = 1`` the formula gives ``W_{l+1}``: folding one layer replaces l's weights with its
successor's (under l's norms). Paper and notebook merges differ only when two or more layers are folded at once.

``merge="notebook"`` reproduces the official notebooks, which update the base weights in place inside the loop
(``W_l += W_{l+k} - W_l`` with the already updated ``W_l``), so layer l ends up with a COPY of layer ``l+m``'s
weights. That is a known bug of the reference code (LaCo issues 4 and 5); it is offered, labelled, only so that
published numbers can be reproduced.

The representation compared by the acceptance walk: the decoder's last hidden state AFTER the final norm, exactly
as the model's own forward hands it to the head (what the official notebooks compare; on OPT-350m-style models it
is also after ``project_out``), of shape
``(seq_len, hidden)`` per calibration block, flattened into one vector per block; the similarity is the cosine of
the original model's and the candidate's vectors, in float32, averaged over the blocks. Calibration blocks are
fixed-length token blocks, so there is no padding to exclude.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch
from torch import nn

from .adapter import ModelAdapter
from .data import DataSpec, calibration_blocks
from .errors import DepthpruneError
from .loading import LoadedModel, load_model
from .plan import PrunePlan, format_layer_list
from .metadata import COLLAPSE_KEY
from .saving import check_output_dir, read_metadata

logger = logging.getLogger(__name__)

MERGE_MODES = ("paper", "notebook")
MERGE_LABELS = {
    "paper": "paper (RDSC: W_l + sum_k (W_{l+k} - W_l))",
    "notebook": "notebook (official notebooks' in-place bug: layer l takes layer l+m's weights)",
}
METHOD_NAMES = {"paper": "laco", "notebook": "laco-notebook"}
REPRESENTATION = ("last hidden state after the final norm (the head's input), flattened per calibration block; "
                  "cosine in float32, mean over blocks")
PLOT_FILE = "collapse_similarity.png"


# ------------------------------------------------------------------------------------------------ merge maths
def rdsc_merge(base: torch.Tensor, folded: Sequence[torch.Tensor]) -> torch.Tensor:
    """The paper's merge ``W_l + sum_k (W_{l+k} - W_l)``, computed in float32 and returned in ``base``'s dtype.

    Args:
        base: layer l's tensor.
        folded: the same tensor of layers l+1..l+m (may be empty: the result is then ``base``).
    """
    merged = base.detach().to(torch.float32).clone()
    for tensor in folded:
        if tensor.shape != base.shape:
            raise DepthpruneError(f"cannot merge tensors of shapes {tuple(base.shape)} and {tuple(tensor.shape)}; "
                                  "LaCo merges layers of identical structure only")
        merged += tensor.detach().to(torch.float32) - base.detach().to(torch.float32)
    return merged.to(base.dtype)


def notebook_merge(base: torch.Tensor, folded: Sequence[torch.Tensor]) -> torch.Tensor:
    """What the official notebooks compute: the in-place update leaves a copy of the LAST folded tensor."""
    for tensor in folded:
        if tensor.shape != base.shape:
            raise DepthpruneError(f"cannot merge tensors of shapes {tuple(base.shape)} and {tuple(tensor.shape)}; "
                                  "LaCo merges layers of identical structure only")
    return (folded[-1] if folded else base).detach().clone()


_MERGE_FUNCTIONS = {"paper": rdsc_merge, "notebook": notebook_merge}


def check_merge_mode(merge: str) -> str:
    """``merge`` if it names a merge mode, else an error listing them (and the closest one)."""
    if merge not in MERGE_MODES:
        import difflib

        close = difflib.get_close_matches(str(merge), MERGE_MODES, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise DepthpruneError(f"unknown merge {merge!r}; use one of {', '.join(MERGE_MODES)} (paper is the "
                              f"default).{hint}")
    return merge


def merge_state_dicts(base: Mapping[str, torch.Tensor], folded: Sequence[Mapping[str, torch.Tensor]],
                      keep: set[str] | frozenset[str] = frozenset(), merge: str = "paper") -> dict[str, torch.Tensor]:
    """Merge one layer's parameters with those of the layers folded into it.

    Args:
        base: layer l's parameters, by name relative to the layer (``self_attn.q_proj.weight``).
        folded: the parameters of layers l+1..l+m, with exactly the same names and shapes.
        keep: names that stay layer l's unchanged (its norms).
        merge: ``paper`` (RDSC) or ``notebook`` (copy of layer l+m's tensors; the official code's bug).

    Returns:
        The merged parameters, every name of ``base``.
    """
    merge_function = _MERGE_FUNCTIONS[check_merge_mode(merge)]
    for position, other in enumerate(folded, start=1):
        if set(other) != set(base):
            only_base = sorted(set(base) - set(other))[:3]
            only_other = sorted(set(other) - set(base))[:3]
            raise DepthpruneError(f"cannot merge layers of different structure (only in the base: {only_base}; only "
                                  f"in folded layer +{position}: {only_other}); choose --low/--high so that every "
                                  "layer in the range has the same kind of attention and MLP")
    return {name: tensor.detach().clone() if name in keep else merge_function(tensor, [o[name] for o in folded])
            for name, tensor in base.items()}


def mean_flat_cosine(reference: torch.Tensor, candidate: torch.Tensor) -> float:
    """Mean over blocks of ``cos(flatten(reference[i]), flatten(candidate[i]))``, in float32.

    Args:
        reference: ``(blocks, seq, hidden)`` last hidden states of the original model.
        candidate: the same for the candidate model.
    """
    if reference.shape != candidate.shape:
        raise DepthpruneError(f"hidden states differ in shape: {tuple(reference.shape)} vs {tuple(candidate.shape)}")
    a = reference.reshape(reference.shape[0], -1).to(torch.float32)   # (blocks, seq * hidden)
    b = candidate.reshape(candidate.shape[0], -1).to(torch.float32)
    cosines = torch.nn.functional.cosine_similarity(a, b, dim=1).clamp(-1.0, 1.0)  # (blocks,)
    return float(cosines.mean())


# ------------------------------------------------------------------------------------------------ the walk
@dataclass(frozen=True)
class CollapseStep:
    """One candidate of the walk, in the CURRENT numbering (``base``, ``count``) and the walk's input numbering."""

    step: int
    base: int                    # current index of layer l
    count: int                   # m: layers folded into it
    depth: int                   # layers in the model before this candidate
    into: int                    # layer l, input numbering
    folded: tuple[int, ...]      # the folded layers, input numbering (each may already hold earlier merges)
    similarity: float
    accepted: bool


@dataclass
class WalkResult:
    """The outcome of one walk: every candidate, and which input layers each remaining layer now holds."""

    steps: list[CollapseStep]
    groups: list[tuple[int, ...]]   # per remaining layer: input layers it holds, its own first

    @property
    def kept_layers(self) -> list[int]:
        return [group[0] for group in self.groups]

    @property
    def removed_layers(self) -> list[int]:
        return sorted(i for group in self.groups for i in group[1:])

    @property
    def accepted(self) -> list[CollapseStep]:
        return [s for s in self.steps if s.accepted]

    @property
    def rejected(self) -> list[CollapseStep]:
        return [s for s in self.steps if not s.accepted]


# similarity(history, base, count): history is the tuple of accepted (base, count) merges so far, in the current
# numbering at the time of each merge; it determines the current model exactly.
SimilarityFunction = Callable[[tuple[tuple[int, int], ...], int, int], float]


def acceptance_walk(num_layers: int, combine: int, low: int, high: int, interval: int, threshold: float,
                    similarity: SimilarityFunction, max_removed: int | None = None) -> WalkResult:
    """LaCo's procedure, exactly as the paper and notebooks run it.

    Start at ``l = high - combine``; while ``l >= low``: the candidate folds ``m = min(combine - 1, layers after
    l)`` layers into l; accept when ``similarity > threshold``, then ``l -= interval`` (and, as the notebooks do, if
    l is now past the end, ``l = depth - 1 - combine``); otherwise ``l -= 1``. With ``interval >= 1`` that clamp
    never fires (a merge at l leaves at least l + 1 layers), but it is kept for fidelity.

    Args:
        num_layers: layers of the model the walk starts from.
        combine: C, layers combined per merge (so up to C - 1 are folded into the base).
        low, high: the range, in the starting numbering; the walk starts at ``high - combine``.
        interval: I, how far to step down after an accepted merge.
        threshold: T; a candidate is accepted when its similarity is strictly above it.
        similarity: called once per candidate (see :data:`SimilarityFunction`).
        max_removed: target mode: stop once this many layers are gone; the last merge folds only the layers
            still needed.

    Returns:
        Every step and the final grouping of input layers.
    """
    groups: list[tuple[int, ...]] = [(i,) for i in range(num_layers)]
    history: tuple[tuple[int, int], ...] = ()
    steps: list[CollapseStep] = []
    removed = 0
    layer = high - combine
    while layer >= low:
        if max_removed is not None and removed >= max_removed:
            break
        depth = len(groups)
        count = min(combine - 1, depth - layer - 1)
        if max_removed is not None:
            count = min(count, max_removed - removed)
        if count < 1:
            layer -= 1
            continue
        value = float(similarity(history, layer, count))
        accepted = value > threshold
        steps.append(CollapseStep(step=len(steps), base=layer, count=count, depth=depth, into=groups[layer][0],
                                  folded=tuple(groups[layer + k][0] for k in range(1, count + 1)),
                                  similarity=value, accepted=accepted))
        if accepted:
            merged = tuple(i for group in groups[layer:layer + count + 1] for i in group)
            groups[layer:layer + count + 1] = [merged]
            history = history + ((layer, count),)
            removed += count
            layer -= interval
            if layer >= len(groups):
                layer = len(groups) - 1 - combine
        else:
            layer -= 1
    return WalkResult(steps=steps, groups=groups)


def search_threshold(walk: Callable[[float], WalkResult], target_removed: int, iterations: int = 24
                     ) -> tuple[float, WalkResult, list[dict]]:
    """Target mode: the highest T (to ``2 / 2**iterations``) whose walk removes ``target_removed`` layers.

    ``walk(T)`` must stop at the target (``max_removed``). Bisection assumes fewer layers go at a higher T, which
    holds in practice but not by construction; the returned T always reaches the target, whatever the shape.

    Returns:
        ``(threshold, its walk, the search trace [{threshold, removed}])``.
    """
    lowest = -1.0 - 1e-6    # every cosine is above this: every candidate accepted
    trace = []
    result = walk(lowest)
    trace.append({"threshold": lowest, "removed": len(result.removed_layers)})
    if len(result.removed_layers) < target_removed:
        raise DepthpruneError(f"even accepting every merge removes only {len(result.removed_layers)} layers, not "
                              f"{target_removed}; widen --low/--high or lower the target")
    lo, hi, lo_result = lowest, 1.0, result
    for _ in range(iterations):
        mid = (lo + hi) / 2
        result = walk(mid)
        trace.append({"threshold": mid, "removed": len(result.removed_layers)})
        if len(result.removed_layers) >= target_removed:
            lo, lo_result = mid, result
        else:
            hi = mid
    return lo, lo_result, trace


# ------------------------------------------------------------------------------------------------ config
@dataclass
class LacoConfig:
    """LaCo's hyper-parameters. Defaults are the paper's Llama2-13B settings (C=7, I=1, T=0.45, whole range).

    Attributes:
        combine: C, layers combined per merge (C - 1 folded into the base); at least 2.
        low: lowest base layer considered (0-based).
        high: top of the range; the walk starts at ``high - combine``. None: the last layer.
        interval: I, step down after an accepted merge; at least 1.
        threshold: T, accept when the similarity is above it. None: 0.45, or searched in target mode.
        merge: ``paper`` (RDSC, default) or ``notebook`` (the official notebooks' in-place bug).
        remove: target mode: remove exactly this many layers, searching T.
        remove_ratio: target mode as a fraction of the layers removed (rounded).
        target_depth: target mode as the number of layers kept.
    """

    combine: int = 7
    low: int = 0
    high: int | None = None
    interval: int = 1
    threshold: float | None = None
    merge: str = "paper"
    remove: int | None = None
    remove_ratio: float | None = None
    target_depth: int | None = None

    DEFAULT_THRESHOLD = 0.45

    def resolved(self, num_layers: int) -> "LacoConfig":
        """A copy with ``high``, ``threshold`` and ``remove`` (the layers to remove, in target mode) filled in,
        validated for a model's depth."""
        check_merge_mode(self.merge)
        high = num_layers - 1 if self.high is None else self.high
        if not isinstance(self.combine, int) or self.combine < 2:
            raise DepthpruneError(f"--combine must be an integer >= 2 (layers per merge), got {self.combine!r}")
        if not isinstance(self.interval, int) or self.interval < 1:
            raise DepthpruneError(f"--interval must be an integer >= 1, got {self.interval!r}")
        if not 0 <= self.low < high <= num_layers - 1:
            raise DepthpruneError(f"need 0 <= --low < --high <= {num_layers - 1} for this {num_layers}-layer model "
                                  f"(got low {self.low}, high {high})")
        if high - self.combine < self.low:
            raise DepthpruneError(f"the walk starts at high - combine = {high - self.combine}, below --low "
                                  f"{self.low}: nothing to merge; widen the range or lower --combine")
        remove = self._layers_to_remove(num_layers)
        if remove is not None and self.threshold is not None:
            raise DepthpruneError("give --threshold or a target (--remove/--remove-ratio/--target-depth), not both: "
                                  "the target mode searches the threshold")
        threshold = self.threshold
        if threshold is None and remove is None:
            threshold = self.DEFAULT_THRESHOLD
        if threshold is not None and not -1.0 <= threshold <= 1.0:
            raise DepthpruneError(f"--threshold is a cosine similarity in [-1, 1], got {threshold}")
        return dataclasses.replace(self, high=high, threshold=threshold, remove=remove)

    def _layers_to_remove(self, num_layers: int) -> int | None:
        """The target as a count of layers removed (None: threshold mode), from whichever target was given."""
        given = [name for name in ("remove", "remove_ratio", "target_depth") if getattr(self, name) is not None]
        if len(given) > 1:
            raise DepthpruneError(f"give one of --remove, --remove-ratio, --target-depth, not "
                                  f"{' and '.join('--' + name.replace('_', '-') for name in given)}")
        if self.remove_ratio is not None:
            if not 0 < self.remove_ratio < 1:
                raise DepthpruneError(f"--remove-ratio must be between 0 and 1, got {self.remove_ratio}")
            remove = round(self.remove_ratio * num_layers)
            if remove < 1:
                raise DepthpruneError(f"--remove-ratio {self.remove_ratio} of {num_layers} layers removes none; "
                                      "raise it")
            return remove
        if self.target_depth is not None:
            if not isinstance(self.target_depth, int) or not 1 <= self.target_depth <= num_layers - 1:
                raise DepthpruneError(f"--target-depth must be between 1 and {num_layers - 1} (the layers kept), "
                                      f"got {self.target_depth!r}")
            return num_layers - self.target_depth
        if self.remove is not None and (not isinstance(self.remove, int) or not 1 <= self.remove <= num_layers - 1):
            raise DepthpruneError(f"--remove must be between 1 and {num_layers - 1}, got {self.remove!r}")
        return self.remove

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ------------------------------------------------------------------------------------------------ model side
def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, (nn.LayerNorm, nn.GroupNorm)) or "norm" in type(module).__name__.lower()


def norm_parameter_names(layer: nn.Module) -> set[str]:
    """Names (relative to the layer) of parameters owned by norm modules: these stay the base layer's."""
    names = set()
    for module_name, module in layer.named_modules():
        if _is_norm(module):
            prefix = f"{module_name}." if module_name else ""
            names.update(prefix + name for name, _ in module.named_parameters(recurse=False))
    return names


def shared_copy(model: nn.Module) -> nn.Module:
    """A structural copy of ``model`` (new modules and config) that SHARES every parameter and buffer tensor."""
    memo = {id(t): t for t in list(model.parameters()) + list(model.buffers())}
    return copy.deepcopy(model, memo)


def _set_parameter(layer: nn.Module, name: str, value: torch.Tensor) -> None:
    """Give ``layer`` a NEW parameter ``name`` (the old tensor may be shared with other models)."""
    module_name, _, leaf = name.rpartition(".")
    module = layer.get_submodule(module_name) if module_name else layer
    old = module._parameters[leaf]
    module._parameters[leaf] = nn.Parameter(value, requires_grad=old.requires_grad)


def merge_into(model: nn.Module, base: int, count: int, merge: str = "paper") -> nn.Module:
    """A new model with layers ``base+1..base+count`` folded into ``base`` (current numbering).

    ``model`` is not modified: the result shares every tensor but the merged layer's. The folded layers are
    deleted with :meth:`ModelAdapter.keep_layers`, which re-indexes layers and fixes per-layer config entries.
    """
    adapter = ModelAdapter(model)
    depth = adapter.num_layers
    if not 0 <= base < depth or count < 0 or base + count > depth - 1:
        raise DepthpruneError(f"cannot fold layers {base + 1}..{base + count} into {base}: the model has {depth} "
                              "layers")
    if count == 0:
        return shared_copy(model)
    layers = adapter.layers
    base_state = dict(layers[base].named_parameters())
    folded_states = [dict(layers[base + k].named_parameters()) for k in range(1, count + 1)]
    try:
        merged = merge_state_dicts(base_state, folded_states, keep=norm_parameter_names(layers[base]), merge=merge)
    except DepthpruneError as error:
        kinds = ", ".join(f"{base + k}: {type(layers[base + k]).__name__}/"
                          f"{type(getattr(layers[base + k], 'mlp', None)).__name__}" for k in range(count + 1))
        raise DepthpruneError(f"layers {base}..{base + count} cannot be merged ({kinds}): {error}") from None
    candidate = shared_copy(model)
    candidate_adapter = ModelAdapter(candidate)
    target_layer = candidate_adapter.layers[base]
    for name, tensor in merged.items():
        _set_parameter(target_layer, name, tensor)
    kept = [i for i in range(depth) if not base < i <= base + count]
    candidate_adapter.keep_layers(kept)
    return candidate


def check_mergeable(model: nn.Module, low: int, high: int) -> None:
    """Refuse up front a range whose layers differ in structure (e.g. dense and sparse-MoE layers mixed).

    :func:`collapse` checks from ``low`` to the LAST layer: once merges shrink the model, the walk can fold layers
    above ``high`` (the paper's algorithm and the official code only use ``high`` to choose the start).
    """
    layers = ModelAdapter(model).layers
    reference = {n: tuple(p.shape) for n, p in layers[low].named_parameters()}
    for index in range(low + 1, high + 1):
        shapes = {n: tuple(p.shape) for n, p in layers[index].named_parameters()}
        if shapes != reference:
            differing = sorted(set(shapes) ^ set(reference)) or sorted(n for n in shapes if shapes[n] !=
                                                                       reference[n])
            raise DepthpruneError(
                f"layers {low} and {index} differ in structure ({', '.join(differing[:3])}): merging them weight by "
                "weight is not sound (e.g. a dense MLP with a sparse MoE block); raise --low so that the layers from "
                "it to the last are of one kind, or use prune")


@torch.no_grad()
def last_hidden_states(model: nn.Module, blocks: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
    """The decoder's last hidden state as the model's forward hands it to the head (after the final norm and any
    projection such as OPT-350m's ``project_out``), ``(blocks, seq, hidden)`` float32 on CPU."""
    decoder = ModelAdapter(model).decoder
    device = next(model.parameters()).device
    outputs = []
    for start in range(0, blocks.shape[0], batch_size):
        batch = blocks[start:start + batch_size].to(device)
        hidden = decoder(input_ids=batch, use_cache=False)[0]   # (batch, seq, hidden)
        outputs.append(hidden.to(torch.float32).cpu())
    return torch.cat(outputs, dim=0)


class CandidateEvaluator:
    """Builds candidates from the walk's merge history and scores them against the original model, with caches.

    Similarities are cached per (history, base, count), so the repeated walks of target mode only evaluate new
    candidates. Models are cached along the current history only (each costs one merged layer: the rest is
    shared with the original), so memory stays at one extra layer per accepted merge.
    """

    def __init__(self, model: nn.Module, blocks: torch.Tensor, merge: str, batch_size: int = 8,
                 progress: bool = True):
        from tqdm.auto import tqdm

        self.merge = merge
        self.blocks = blocks
        self.batch_size = batch_size
        self.reference = last_hidden_states(model, blocks, batch_size)   # (blocks, seq, hidden)
        self.models: dict[tuple, nn.Module] = {(): shared_copy(model)}
        self.similarities: dict[tuple, float] = {}
        self.progress = tqdm(desc=f"LaCo candidates ({merge} merge)", unit="candidate", disable=not progress)

    def model_for(self, history: tuple[tuple[int, int], ...]) -> nn.Module:
        if history not in self.models:
            *earlier, (base, count) = history
            self.models[history] = merge_into(self.model_for(tuple(earlier)), base, count, self.merge)
        return self.models[history]

    def __call__(self, history: tuple[tuple[int, int], ...], base: int, count: int) -> float:
        key = (history, base, count)
        if key not in self.similarities:
            candidate_history = history + ((base, count),)
            self.models = {key: model for key, model in self.models.items()
                           if key == candidate_history[:len(key)]}
            candidate = self.model_for(candidate_history)
            value = mean_flat_cosine(self.reference, last_hidden_states(candidate, self.blocks, self.batch_size))
            self.similarities[key] = value
            self.progress.update(1)
            self.progress.set_postfix(base=base, folded=count, similarity=f"{value:.4f}")
        return self.similarities[key]

    def close(self) -> None:
        self.progress.close()


# ------------------------------------------------------------------------------------------------ outputs
def similarity_plot(steps: Sequence[CollapseStep], threshold: float, title: str) -> bytes:
    """PNG of the similarity of every candidate in walk order, accepted and rejected apart, with T drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 4))
    for accepted, colour, label in ((True, "tab:green", "accepted merge"), (False, "tab:red", "rejected")):
        chosen = [s for s in steps if s.accepted == accepted]
        axes.scatter([s.step for s in chosen], [s.similarity for s in chosen], c=colour, label=label, zorder=3)
    axes.plot([s.step for s in steps], [s.similarity for s in steps], c="0.7", lw=1, zorder=2)
    for s in steps:
        axes.annotate(f"{s.into}<-{','.join(map(str, s.folded))}", (s.step, s.similarity), fontsize=6,
                      textcoords="offset points", xytext=(0, 5), ha="center")
    axes.axhline(threshold, ls="--", c="k", lw=1, label=f"threshold T={threshold:.4f}")
    axes.set_xlabel("candidate (walk order)")
    axes.set_ylabel("mean cosine of last hidden states")
    axes.set_title(title, fontsize=9)
    axes.legend(fontsize=7)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    plt.close(figure)
    return buffer.getvalue()


@dataclass
class CollapseResult:
    """What :func:`collapse` did: the collapsed model, the plan in its numbering, and the walk in the original's."""

    model: nn.Module
    tokenizer: object
    plan: PrunePlan
    config: LacoConfig
    threshold: float
    walk: WalkResult
    merges: list[dict]       # accepted: {"into", "from", "similarity"} in original numbering
    rejected: list[dict]     # {"into", "from", "similarity"} in original numbering
    removed_original: list[int] = field(default_factory=list)
    candidates_evaluated: int = 0    # forward passes over the calibration blocks, all walks of the search included
    threshold_search: list[dict] = field(default_factory=list)
    groups_original: list[list[int]] = field(default_factory=list)   # per remaining layer: original layers held
    plot_png: bytes | None = None
    output: Path | None = None

    def summary(self) -> str:
        label = MERGE_LABELS[self.config.merge]
        return (f"LaCo [{label}]: {self.plan.num_layers} -> {len(self.plan.kept_layers)} layers at "
                f"T={self.threshold:.4f}; {len(self.merges)} merges accepted, {len(self.rejected)} rejected; "
                f"removed (original numbering) [{format_layer_list(self.removed_original)}]")


def _step_record(step: CollapseStep, to_original: Sequence[int]) -> dict:
    """A walk step in original numbering: ``from`` names the folded layers by their own original number."""
    return {"into": to_original[step.into], "from": [to_original[i] for i in step.folded],
            "similarity": step.similarity}


def collapse_needs(model, data="builtin", plots: bool = True) -> list[tuple[str, str]]:
    """The optional packages ``collapse`` will need, as ``(module, purpose)`` pairs."""
    from .extras import data_needs, model_needs

    needs = model_needs(model) + data_needs(data)
    if plots:
        needs.append(("matplotlib", "collapse's similarity plot (--no-plots skips it)"))
    return needs


def collapse(model: str | LoadedModel, data: str | DataSpec = "builtin", output: str | Path | None = None, *,
             combine: int = 7, low: int = 0, high: int | None = None, interval: int = 1,
             threshold: float | None = None, merge: str = "paper", remove: int | None = None,
             remove_ratio: float | None = None, target_depth: int | None = None, samples: int = 5,
             seq_len: int = 128, seed: int = 0, text_field: str | None = None, chat_template: bool = False,
             force: bool = False, dry_run: bool = False, plots: bool = True, batch_size: int = 8,
             progress: bool = True, dtype="auto", device="cpu", trust_remote_code: bool = False) -> CollapseResult:
    """Collapse layers with LaCo and save an ordinary checkpoint (``depthprune collapse MODEL ...``).

    Args:
        model: anything :func:`depthprune.load_model` accepts, or a loaded model (left unmodified: the result
            holds a new model that shares every tensor but the merged layers').
        data: calibration text (a data spec or :class:`DataSpec`); a handful of blocks is enough.
        output: destination folder (required unless ``dry_run``).
        combine, low, high, interval, threshold, merge, remove, remove_ratio, target_depth: see
            :class:`LacoConfig` (at most one of the three targets).
        samples, seq_len, seed, text_field, chat_template: how the calibration blocks are cut (when ``data`` is
            a string).
        force: replace an existing ``output``.
        dry_run: run the walk, save nothing.
        plots: draw the similarity of every candidate into ``collapse_similarity.png`` (needs matplotlib).
        batch_size: blocks per forward pass.
        progress: show a progress bar per evaluated candidate.

    Returns:
        A :class:`CollapseResult`; ``depthprune.json`` in the output records every accepted merge (``into``,
        ``from``, similarity) and every rejected candidate in the ORIGINAL model's numbering.
    """
    config = LacoConfig(combine=combine, low=low, high=high, interval=interval, threshold=threshold, merge=merge,
                        remove=remove, remove_ratio=remove_ratio, target_depth=target_depth)
    check_merge_mode(merge)
    if output is None and not dry_run:
        raise DepthpruneError("no --output given; name the folder for the collapsed model (or use --dry-run)")
    if output is not None and not dry_run:
        check_output_dir(output, force)     # fail before loading anything
    from .extras import require_all

    require_all(collapse_needs(model, data, plots))   # before loading anything
    loaded = model if isinstance(model, LoadedModel) else load_model(model, dtype=dtype, device=device,
                                                                      trust_remote_code=trust_remote_code)
    num_layers = ModelAdapter(loaded.model).num_layers
    config = config.resolved(num_layers)
    check_mergeable(loaded.model, config.low, num_layers - 1)
    spec = data if isinstance(data, DataSpec) else DataSpec(source=str(data), samples=samples, seq_len=seq_len,
                                                             seed=seed, text_field=text_field,
                                                             chat_template=chat_template)
    blocks = calibration_blocks(spec, loaded.tokenizer, model=loaded.model)   # (samples, seq_len)
    outcome = _walk_and_merge(loaded, blocks, config, spec, batch_size=batch_size, progress=progress, plots=plots)
    if dry_run:
        return outcome

    from .prune import save_pruned

    extra_files = {PLOT_FILE: outcome.plot_png} if outcome.plot_png is not None else None
    saved = dataclasses.replace(loaded, model=outcome.model)
    outcome.output = save_pruned(saved, outcome.plan, output, force=force,
                                 extra_metadata={COLLAPSE_KEY: _collapse_metadata(outcome, spec)},
                                 extra_files=extra_files)
    return outcome


def _walk_and_merge(loaded: LoadedModel, blocks: torch.Tensor, config: LacoConfig, spec: DataSpec, *,
                    batch_size: int, progress: bool, plots: bool) -> CollapseResult:
    """Run the walk (searching the threshold in target mode) and build the collapsed model, its plan and plot."""
    num_layers = ModelAdapter(loaded.model).num_layers
    evaluator = CandidateEvaluator(loaded.model, blocks, config.merge, batch_size=batch_size, progress=progress)
    try:
        def walk(value: float) -> WalkResult:
            return acceptance_walk(num_layers, config.combine, config.low, config.high, config.interval, value,
                                   evaluator, max_removed=config.remove)

        search = []
        if config.remove is not None:
            found, result, search = search_threshold(walk, config.remove)
        else:
            found, result = config.threshold, walk(config.threshold)
        collapsed = evaluator.model_for(tuple((s.base, s.count) for s in result.accepted))
    finally:
        evaluator.close()

    parent = read_metadata(loaded.checkpoint_dir)
    to_original = parent["kept_layers"] if parent and "kept_layers" in parent else list(range(num_layers))
    plan = PrunePlan(num_layers=num_layers, removed_layers=result.removed_layers, method=METHOD_NAMES[config.merge],
                     scores={"similarity_per_step": [dataclasses.asdict(s) for s in result.steps]},
                     settings={**config.to_dict(), "threshold_used": found, **spec.describe()})
    title = (f"LaCo {MERGE_LABELS[config.merge]}: {num_layers} -> {len(result.groups)} layers, "
             f"C={config.combine} I={config.interval} T={found:.4f}")
    png = similarity_plot(result.steps, found, title) if plots and result.steps else None
    return CollapseResult(model=collapsed, tokenizer=loaded.tokenizer, plan=plan, config=config, threshold=found,
                          walk=result, merges=[_step_record(step, to_original) for step in result.accepted],
                          rejected=[_step_record(step, to_original) for step in result.rejected],
                          removed_original=[to_original[i] for i in result.removed_layers],
                          candidates_evaluated=len(evaluator.similarities), threshold_search=search,
                          plot_png=png, groups_original=[[to_original[i] for i in g] for g in result.groups])


def _collapse_metadata(outcome: CollapseResult, spec: DataSpec) -> dict:
    """What depthprune.json records of a collapse, every layer in the original (base model) numbering."""
    return {
        "merge": outcome.config.merge,
        "merge_label": MERGE_LABELS[outcome.config.merge],
        "norms": "each merged layer keeps its own (base layer's) norms",
        "representation": REPRESENTATION,
        "threshold": outcome.threshold,
        "threshold_searched": outcome.config.remove is not None,
        "threshold_search": outcome.threshold_search,
        "candidates_evaluated": outcome.candidates_evaluated,
        "settings": outcome.config.to_dict(),
        "calibration": spec.describe(),
        "merges": outcome.merges,
        "rejected": outcome.rejected,
        "groups": outcome.groups_original,
        "numbering": "original (base model) layer numbers, 0-based",
    }
