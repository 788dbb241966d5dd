"""``depthprune info``: what a model is, as depthprune sees it."""

from __future__ import annotations

from .adapter import ModelAdapter
from .loading import LoadedModel, load_model
from .saving import read_metadata


def info(model: str | LoadedModel, dtype="auto", device="cpu", trust_remote_code: bool = False) -> dict:
    """Architecture, layer count, parameters and dtype of a model (and its depthprune provenance, if any)."""
    loaded = model if isinstance(model, LoadedModel) else load_model(model, dtype=dtype, device=device,
                                                                      trust_remote_code=trust_remote_code)
    adapter = ModelAdapter(loaded.model)
    summary = {"model": loaded.description, **adapter.describe()}
    metadata = read_metadata(loaded.checkpoint_dir, num_layers=adapter.num_layers)
    if metadata:
        summary["depthprune"] = {k: metadata.get(k) for k in ("base_model", "method", "removed_layers",
                                                               "num_layers_original")}
    return summary
