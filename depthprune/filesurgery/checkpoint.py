"""Prune a safetensors checkpoint folder at the file level: kept tensors copied byte for byte under renumbered names.

The model is never built with weights. A weightless skeleton of it on the meta device gives the same
:class:`~depthprune.ModelAdapter` the in-memory path uses, so the plan is checked and ``config.json`` is fixed by
the same architecture-table logic (layer count, per-layer lists, MoE patterns, thresholds) — the file path and the
in-memory path cannot drift apart. Peak memory is that of the skeleton and the headers; time is about a disk copy.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..errors import DepthpruneError

logger = logging.getLogger(__name__)

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# Files beside the weights that belong to the model and are copied as they are (config.json is rewritten).
COPIED_PATTERNS = ("tokenizer*", "special_tokens_map.json", "added_tokens.json", "vocab.*", "merges.txt",
                   "spiece.model", "*.tiktoken", "chat_template.*", "generation_config.json")
_SHARD_NAME = re.compile(r"^(?P<stem>.+)-(?P<index>\d+)-of-(?P<count>\d+)\.safetensors$")


@dataclass
class CheckpointLayout:
    """The weight files of a checkpoint folder: one file, or shards listed by an index."""

    folder: Path
    shards: list[Path]                 # in index order
    index: dict | None                 # the parsed model.safetensors.index.json, if sharded


def checkpoint_layout(folder: str | Path) -> CheckpointLayout | None:
    """The safetensors weight files of ``folder``, or None when it holds none we can copy tensor by tensor."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        return None
    if (folder / INDEX_FILE).is_file():
        try:
            index = json.loads((folder / INDEX_FILE).read_text())
            weight_map = index["weight_map"]
        except (OSError, ValueError, KeyError, TypeError):
            raise DepthpruneError(f"{folder / INDEX_FILE} is not a safetensors index (no weight_map); fix or "
                                  "remove it") from None
        names = list(dict.fromkeys(weight_map.values()))
        missing = [name for name in names if not (folder / name).is_file()]
        if missing:
            raise DepthpruneError(f"{folder / INDEX_FILE} lists {missing[0]}, which is not in {folder}; the "
                                  "checkpoint is incomplete")
        return CheckpointLayout(folder, [folder / name for name in names], index)
    if (folder / SINGLE_FILE).is_file():
        return CheckpointLayout(folder, [folder / SINGLE_FILE], None)
    return None


def open_skeleton(folder: Path, trust_remote_code: bool = False):
    """A weightless model of the checkpoint on the meta device (config and module tree only) and its dtype."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from ..loading import checkpoint_dtype

    config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
    dtype = checkpoint_dtype(folder)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=trust_remote_code)
    return model.eval(), dtype


def _layer_of(name: str, prefix: str) -> tuple[int, str] | None:
    """``(layer, rest)`` for ``{prefix}.{layer}.{rest}``, else None."""
    if not name.startswith(prefix):
        return None
    index, dot, rest = name[len(prefix):].partition(".")
    return (int(index), rest) if dot and index.isdigit() else None


def quantization_problem(config: dict, num_layers: int) -> str | None:
    """Why a quantisation config cannot be carried over unchanged by a prune (None: it can).

    Quantised tensors (qweight, scales, zeros, ...) are copied like any other, so the config is correct for the
    pruned model unless it names layers: module lists such as ``modules_to_not_convert`` or ``ignore`` with
    layer numbers, per-module overrides (GPTQ ``dynamic``), or a list with one entry per layer.
    """
    quantization = config.get("quantization_config")
    if not isinstance(quantization, dict):
        return None
    layer_name = re.compile(r"(^|[.\\])(layers|h|blocks|block|layer)[.\\]+(\d|\[|\\d)")

    def walk(value, where: str):
        if isinstance(value, str) and layer_name.search(value):
            return f"quantization_config.{where} names a layer ({value!r})"
        if isinstance(value, dict):
            for key, item in value.items():
                if layer_name.search(str(key)):
                    return f"quantization_config.{where}{'.' if where else ''}{key} is set for one layer"
                found = walk(item, f"{where}{'.' if where else ''}{key}")
                if found:
                    return found
        if isinstance(value, list):
            if len(value) == num_layers and num_layers > 1 and all(not isinstance(v, str) for v in value):
                return f"quantization_config.{where} has one entry per layer"
            for item in value:
                found = walk(item, where)
                if found:
                    return found
        return None

    return walk(quantization, "")


def check_quantization(folder: Path, num_layers: int) -> None:
    """Refuse a quantised checkpoint whose quantisation config names layers (see :func:`quantization_problem`)."""
    problem = quantization_problem(json.loads((folder / "config.json").read_text()), num_layers)
    if problem:
        raise DepthpruneError(f"cannot prune this quantised checkpoint at the file level: {problem}, which would "
                              "describe the wrong layers after pruning; prune the unquantised model and quantise "
                              "the result")


def _shard_names(shards: list[Path], kept_shards: list[Path]) -> dict[Path, str]:
    """Output name of each kept shard: ``stem-0000i-of-0000n`` renumbered when shards were dropped."""
    names = {}
    for position, shard in enumerate(kept_shards, start=1):
        match = _SHARD_NAME.match(shard.name)
        if match and len(kept_shards) != len(shards):
            width = len(match["index"])
            names[shard] = f"{match['stem']}-{position:0{width}d}-of-{len(kept_shards):0{width}d}.safetensors"
        else:
            names[shard] = shard.name
    return names


def plan_tensors(layout: CheckpointLayout, layers_prefix: str, num_layers: int, kept: list[int]):
    """Per output shard, the ``(new_name, entry, source)`` tensors to copy; refuses names the plan cannot place."""
    from .safetensors_files import read_header

    new_index = {old: new for new, old in enumerate(kept)}
    seen_layers: set[int] = set()
    per_shard: dict[Path, list] = {}
    headers = {}
    for shard in layout.shards:
        header = read_header(shard)
        headers[shard] = header
        copies = []
        for name, entry in header.tensors.items():
            located = _layer_of(name, layers_prefix)
            if located is None:
                copies.append((name, entry, shard))
                continue
            layer, rest = located
            if layer >= num_layers:
                raise DepthpruneError(f"{shard.name} holds {name} but the config has {num_layers} layers; the "
                                      "checkpoint and its config.json disagree")
            seen_layers.add(layer)
            if layer in new_index:
                copies.append((f"{layers_prefix}{new_index[layer]}.{rest}", entry, shard))
        per_shard[shard] = copies
    if seen_layers != set(range(num_layers)):
        missing = sorted(set(range(num_layers)) - seen_layers)
        raise DepthpruneError(f"no tensors named {layers_prefix}N.* for layer(s) {missing[:5]} in {layout.folder}; "
                              "its tensor names are not the ones this transformers version uses (use --surgery "
                              "memory)")
    return per_shard, headers


def prune_checkpoint_files(folder: Path, skeleton, adapter, plan, output, force: bool, metadata: dict,
                           extra_files: dict | None = None) -> Path:
    """Write the pruned checkpoint of ``folder`` to ``output`` without loading its weights.

    Args:
        folder: the source checkpoint (config.json + model.safetensors or shards with an index).
        skeleton: its meta-device model; ``adapter`` the :class:`ModelAdapter` of it (its config is fixed here).
        plan: the :class:`~depthprune.PrunePlan`, in the checkpoint's numbering.
        metadata: the ``depthprune.json`` content (completed with version and date here).
    """
    from tqdm.auto import tqdm

    from ..saving import atomic_output_dir, complete_metadata, write_json_atomic, write_provenance
    from .safetensors_files import write_copied_file

    layout = checkpoint_layout(folder)
    check_quantization(folder, adapter.num_layers)
    kept = plan.kept_layers
    per_shard, headers = plan_tensors(layout, adapter.layers_path + ".", adapter.num_layers, kept)
    adapter.keep_layers(kept)      # fixes the skeleton's config exactly as in-memory surgery does
    kept_shards = [shard for shard in layout.shards if per_shard[shard]]
    names = _shard_names(layout.shards, kept_shards)
    metadata = complete_metadata(metadata, adapter.num_layers)
    total = sum(entry.nbytes for shard in kept_shards for _, entry, _ in per_shard[shard])
    with atomic_output_dir(output, force=force) as tmp:
        weight_map = {}
        with tqdm(total=total, desc="copying kept tensors", unit="B", unit_scale=True) as bar:
            for shard in kept_shards:
                write_copied_file(tmp / names[shard], per_shard[shard], headers[shard].metadata, progress=bar)
                weight_map.update({new_name: names[shard] for new_name, _, _ in per_shard[shard]})
        if layout.index is not None:
            index = {**layout.index, "metadata": {**(layout.index.get("metadata") or {}), "total_size": total},
                     "weight_map": dict(sorted(weight_map.items()))}
            if "total_parameters" in index["metadata"]:
                index["metadata"].pop("total_parameters")   # not recounted here; transformers does not need it
            write_json_atomic(tmp / INDEX_FILE, index)
        skeleton.config.save_pretrained(tmp)
        for item in sorted(folder.iterdir()):
            if item.is_file() and any(fnmatch.fnmatch(item.name, pattern) for pattern in COPIED_PATTERNS):
                shutil.copy2(item, tmp / item.name)
        write_provenance(tmp, metadata, extra_files)
    return Path(output)
