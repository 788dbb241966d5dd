"""Remove decoder layers from a model and save the result: the Python side of ``depthprune prune``."""

from __future__ import annotations

import logging
from pathlib import Path

from .adapter import ModelAdapter
from .errors import DepthpruneError
from .loading import LoadedModel, load_model
from .plan import PrunePlan, format_layer_list, parse_layer_list
from .saving import check_output_dir, read_metadata, save

logger = logging.getLogger(__name__)


def original_numbering(loaded: LoadedModel, plan: PrunePlan) -> dict:
    """Provenance fields in the ORIGINAL base model's numbering, following an earlier depthprune step if any.

    Pruning an already pruned checkpoint composes: its ``kept_layers`` map our indices back to the base model.
    """
    parent = read_metadata(loaded.checkpoint_dir)
    if parent and "kept_layers" in parent:
        base_kept = parent["kept_layers"]
        if len(base_kept) != plan.num_layers:
            raise DepthpruneError(f"{loaded.checkpoint_dir}/depthprune.json lists {len(base_kept)} kept layers but the "
                                  f"model has {plan.num_layers}; the file does not belong to these weights")
        kept = [base_kept[i] for i in plan.kept_layers]
        original_count = parent.get("num_layers_original", len(base_kept))
        return {
            "base_model": parent.get("base_model", loaded.description),
            "parent_model": loaded.description,
            "parent_steps": parent.get("steps", []) + [{k: v for k, v in parent.items() if k != "steps"}],
            "num_layers_original": original_count,
            "kept_layers": kept,
            "removed_layers": [i for i in range(original_count) if i not in set(kept)],
        }
    return {"base_model": loaded.description, "num_layers_original": plan.num_layers,
            "kept_layers": plan.kept_layers, "removed_layers": sorted(plan.removed_layers)}


def apply_plan(model, plan: PrunePlan, allow_final_layer: bool = False) -> None:
    """Remove the plan's layers from ``model`` in place (validating the plan against the model first)."""
    adapter = ModelAdapter(model)
    if adapter.num_layers != plan.num_layers:
        raise DepthpruneError(f"the plan is for {plan.num_layers} layers but the model has {adapter.num_layers}")
    _, kept = adapter.check_removal(plan.removed_layers, allow_final_layer=allow_final_layer)
    adapter.keep_layers(kept)


def save_pruned(loaded: LoadedModel, plan: PrunePlan, output, force: bool = False, extra_metadata: dict | None = None,
                extra_files: dict | None = None) -> Path:
    """Save an already pruned ``loaded.model`` with the plan and its provenance in ``depthprune.json``."""
    metadata = {**original_numbering(loaded, plan), "method": plan.method, "plan": plan.to_dict()}
    metadata.update(extra_metadata or {})
    return save(loaded.model, loaded.tokenizer, output, metadata=metadata, force=force, extra_files=extra_files)


def prune(model: str | LoadedModel, layers: str | list[int], output: str | Path | None = None, force: bool = False,
          dry_run: bool = False, allow_final_layer: bool = False, dtype="float32", device="cpu",
          trust_remote_code: bool = False) -> PrunePlan:
    """Remove the given layers and save an ordinary checkpoint (``depthprune prune MODEL --layers ...``).

    Args:
        model: anything :func:`depthprune.load_model` accepts, or an already loaded model.
        layers: 0-based layers to remove, as a list or a string such as ``"20-27,3"``.
        output: destination folder (required unless ``dry_run``).
        force: replace an existing ``output``.
        dry_run: only build and return the plan.
        allow_final_layer: permit removing the last layer.

    Returns:
        The executed (or, with ``dry_run``, proposed) plan.
    """
    layer_list = parse_layer_list(layers) if isinstance(layers, str) else list(layers)
    if output is None and not dry_run:
        raise DepthpruneError("no --output given; name the folder for the pruned model (or use --dry-run)")
    if output is not None and not dry_run:
        check_output_dir(output, force)   # fail before loading anything
    loaded = model if isinstance(model, LoadedModel) else load_model(model, dtype=dtype, device=device,
                                                                      trust_remote_code=trust_remote_code)
    adapter = ModelAdapter(loaded.model)
    removed, _ = adapter.check_removal(layer_list, allow_final_layer=allow_final_layer)
    plan = PrunePlan(num_layers=adapter.num_layers, removed_layers=removed, method="manual",
                     settings={"layers": format_layer_list(removed)})
    if dry_run:
        return plan
    apply_plan(loaded.model, plan, allow_final_layer=allow_final_layer)
    save_pruned(loaded, plan, output, force=force)
    return plan
