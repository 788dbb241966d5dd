"""What every compensation method shares: the registry, the gaps of a plan, the streams it reads, the folds it makes.

Words used throughout (layers 0-based, ``h[p]`` is the residual stream entering layer ``p``):

- a *gap* is a maximal run of removed layers ``start..end``; in the pruned model it sits at stream position
  ``position`` (the number of kept layers before it), between kept layer ``start - 1`` and kept layer ``end + 1``;
- its *target* is the dense model's ``h[end + 1]``, the stream the removed block would have produced;
- a *branch output* is the output of a layer's attention or MLP output projection, the term added to the residual
  stream; the architecture table (``mlp_output``, ``attn_output``) says where those projections are.

Activations are captured with forward hooks on the model's own forward (masks and rotary embeddings built as
usual), on real tokens only (``attention_mask == 1``), in float32 on CPU, and the forward stops after the deepest
layer that is needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

from ..adapter import ModelAdapter, _get_path
from ..errors import DepthpruneError
from ..registry import Registry

FITS = ("sequential", "dense")


@dataclass(frozen=True)
class CompensationEntry:
    """One compensation method: its name, config dataclass, one-line description and the function that runs it.

    ``run(model, plan, gaps, batches, config, show_progress)`` prunes the DENSE ``model`` in place by ``plan``,
    folds the compensation into its weights and returns one record per gap (a dict for ``depthprune.json``).
    ``check(model, gaps, config)`` refuses, before any work, what the method cannot do on this model.
    """

    name: str
    config_class: type
    description: str
    run: Callable
    check: Callable


COMPENSATIONS: Registry[CompensationEntry] = Registry("compensation method", "--compensate")


@dataclass(frozen=True)
class Gap:
    """A maximal run of removed layers ``start..end`` (the plan's numbering) and where it sits after pruning."""

    start: int
    end: int
    position: int       # stream position in the pruned model: kept layers before the gap

    @property
    def kept_before(self) -> int | None:
        """The kept layer just before the gap (plan numbering), or None when the gap starts at layer 0."""
        return self.start - 1 if self.start > 0 else None

    @property
    def layers(self) -> list[int]:
        return list(range(self.start, self.end + 1))


def gaps_of(removed_layers: Sequence[int]) -> list[Gap]:
    """The gaps of a removal set, in order: ``[3, 4, 8]`` -> gaps 3-4 (position 3) and 8 (position 6)."""
    removed = sorted(set(removed_layers))
    gaps: list[Gap] = []
    for layer in removed:
        if gaps and gaps[-1].end == layer - 1:
            gaps[-1] = Gap(gaps[-1].start, layer, gaps[-1].position)
        else:
            gaps.append(Gap(layer, layer, layer - sum(len(g.layers) for g in gaps)))
    return gaps


# ----------------------------------------------------------------------------------------------- architecture
def _linear_types() -> tuple[type, ...]:
    from transformers.pytorch_utils import Conv1D   # GPT-2's transposed linear

    return (nn.Linear, Conv1D)


def check_foldable(adapter: ModelAdapter, method: str) -> None:
    """Refuse architectures whose branch outputs do not reach the residual stream through a plain linear map."""
    spec, config = adapter.spec, adapter.text_config
    if spec.branch_output_norms:
        raise DepthpruneError(f"--compensate {method} cannot fold into {spec.model_type}: its attention and MLP "
                              f"outputs pass through {', '.join(spec.branch_output_norms)} before the residual add, "
                              "which would undo a folded matrix or scale; use --compensate none")
    for key, bad in spec.compensation_refuse_if.items():
        if getattr(config, key, None) == bad:
            raise DepthpruneError(f"--compensate {method} cannot fold into this {spec.model_type} model: with "
                                  f"config.{key}={bad!r} the layer normalises the residual stream after the add, so "
                                  "a folded matrix or scale is not exact; use --compensate none")


def branch_projection(adapter: ModelAdapter, layer_index: int, branch: str, method: str) -> nn.Module:
    """Layer ``layer_index``'s ``mlp`` or ``attn`` output projection (nn.Linear or GPT-2's Conv1D), or refuse."""
    path = adapter.spec.mlp_output if branch == "mlp" else adapter.spec.attn_output
    layer = adapter.layers[layer_index]
    module = _get_path(layer, path)
    if not isinstance(module, _linear_types()):
        owner = _get_path(layer, path.rpartition(".")[0]) if "." in path else layer
        what = type(owner).__name__ if owner is not None else type(layer).__name__
        moe = " (a mixture-of-experts block: one projection per expert)" if "moe" in what.lower() or \
            hasattr(owner, "experts") else ""
        raise DepthpruneError(f"--compensate {method}: layer {layer_index} has no single {branch} output projection "
                              f"at {path!r} ({what}{moe}); this method folds into one linear map — use "
                              "--compensate none for this model")
    return module


def projection_name(adapter: ModelAdapter, layer_index: int, branch: str) -> str:
    path = adapter.spec.mlp_output if branch == "mlp" else adapter.spec.attn_output
    return f"{adapter.layers_path}.{layer_index}.{path}"


# ------------------------------------------------------------------------------------------------ the folds
@torch.no_grad()
def fold_output_transform(projection: nn.Module, transform: torch.Tensor) -> None:
    """Make ``projection`` output ``y @ T`` instead of ``y`` (``T`` is ``(d, d)``), in its own weights.

    nn.Linear computes ``y = x Wᵀ + b`` with ``W`` ``(d, d_in)``, so ``y T = x (Tᵀ W)ᵀ + b T``: ``W <- Tᵀ W``,
    ``b <- b T``. GPT-2's Conv1D computes ``y = x W + b`` with ``W`` ``(d_in, d)``: ``W <- W T``. The product is
    taken in float64 and stored in the projection's dtype.
    """
    weight = projection.weight
    transform = transform.to(torch.float64).to(weight.device)
    if isinstance(projection, nn.Linear):
        weight.copy_((transform.T @ weight.to(torch.float64)).to(weight.dtype))
    else:
        weight.copy_((weight.to(torch.float64) @ transform).to(weight.dtype))
    bias = getattr(projection, "bias", None)
    if bias is not None:
        bias.copy_((bias.to(torch.float64) @ transform).to(bias.dtype))


@torch.no_grad()
def scale_output(projection: nn.Module, factor: float) -> None:
    """Multiply a projection's output by ``factor`` (weight and bias)."""
    projection.weight.mul_(factor)
    if getattr(projection, "bias", None) is not None:
        projection.bias.mul_(factor)


# --------------------------------------------------------------------------------------------- the streams
class _StopForward(Exception):
    """Raised after the deepest layer a capture needs: nothing after it has to run."""


def _hidden_of(output) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output[0]


def split_batches(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, batch_size: int) -> list:
    """``[(ids, mask), ...]`` of at most ``batch_size`` rows; mask all ones when not given."""
    if input_ids.dim() != 2 or input_ids.shape[1] < 2:
        raise DepthpruneError(f"calibration ids must be (samples, seq_len >= 2), got {tuple(input_ids.shape)}")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    return list(zip(input_ids.split(batch_size), attention_mask.split(batch_size)))


@torch.no_grad()
def iterate_streams(model: nn.Module, batches: list, streams: Sequence[int] = (), mlp_outputs: Sequence[int] = (),
                    desc: str = "calibration", show_progress: bool = True) -> Iterator[dict]:
    """Per batch, the residual stream at some positions and some layers' MLP outputs, on real tokens.

    Args:
        model: a causal LM (its current layers: dense or pruned).
        batches: ``[(ids, mask), ...]`` from :func:`split_batches`.
        streams: positions ``p``: ``h[p]``, the stream entering layer ``p`` (``p = L``: the last layer's output,
            before the final norm).
        mlp_outputs: layers whose MLP output projection's output (the term added to the stream) is wanted.

    Yields:
        ``{"stream": {p: (tokens, d)}, "mlp": {layer: (tokens, d)}}`` float32 on CPU, the real tokens of the batch
        in row-major order.
    """
    from tqdm.auto import tqdm

    adapter = ModelAdapter(model)
    layers = adapter.layers
    device = next(model.parameters()).device
    deepest = max([p - 1 for p in streams] + list(mlp_outputs) + [0])
    sink: dict = {}
    handles = []

    def keep(kind, key, tensor):
        sink[kind][key] = tensor[sink["mask"]].detach().float().cpu()   # (tokens, d): indexing copies

    try:
        for position in streams:
            if position == 0:
                def pre_hook(module, args, kwargs):
                    keep("stream", 0, args[0] if args else kwargs["hidden_states"])
                handles.append(layers[0].register_forward_pre_hook(pre_hook, with_kwargs=True))
            else:
                handles.append(layers[position - 1].register_forward_hook(
                    lambda module, args, output, p=position: keep("stream", p, _hidden_of(output))))
        for index in mlp_outputs:
            projection = branch_projection(adapter, index, "mlp", "capture")
            handles.append(projection.register_forward_hook(
                lambda module, args, output, i=index: keep("mlp", i, output)))

        def stop(module, args, output):
            raise _StopForward
        handles.append(layers[deepest].register_forward_hook(stop))
        for ids, mask in tqdm(batches, desc=desc, unit="batch", disable=not show_progress):
            sink.update(stream={}, mlp={}, mask=mask.to(device).bool())
            try:
                adapter.decoder(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
            except _StopForward:
                pass
            yield {"stream": dict(sink["stream"]), "mlp": dict(sink["mlp"])}
    finally:
        for handle in handles:
            handle.remove()


def calibration_token_count(batches: list) -> int:
    return int(sum(int(mask.sum()) for _, mask in batches))
