"""Prune a GGUF file at the file level: kept ``blk.N.*`` tensors byte-copied, renumbered, quantisation unchanged.

Metadata follows llama.cpp's reading of it: ``{arch}.block_count`` is the layer count, and an ``{arch}.*`` array with
exactly ``block_count`` entries is per layer (llama.cpp refuses any other length for such keys), so it is filtered
by the KEPT indices — never truncated. Everything else (tokenizer, chat template, rope, other tensors) is copied as
it is; ``general.name`` says the model was pruned, and the plan is stored under ``depthprune.*`` keys.

Some architectures derive a layer's kind from its position in llama.cpp's code instead of the file
(:data:`POSITION_PATTERNS`); a removal that would move a layer to a position of another kind is refused.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import DepthpruneError

BLOCK_NAME = re.compile(r"^blk\.(\d+)\.(.+)$")
METADATA_PREFIX = "depthprune."
METADATA_JSON_KEY = "depthprune.metadata"
# {arch}.* arrays that are not per layer even when their length equals the block count.
NOT_PER_LAYER = ("rope.dimension_sections",)
# {arch}.* integers meaning "the first N blocks" (re-counted over the kept blocks).
LEADING_COUNTS = ("leading_dense_block_count",)
# llama.cpp architectures whose sliding-window layers are fixed by position: every p-th layer is global
# (llama.cpp: swa_layers[il] = il % p < p - 1), unless the file carries the pattern as a per-layer array.
POSITION_PATTERNS = {"gemma2": 2, "gemma3": 6, "cohere2": 4}
SWA_PATTERN_KEY = "attention.sliding_window_pattern"


def _reader(path: Path):
    from gguf import GGUFReader

    try:
        return GGUFReader(path)
    except (ValueError, OSError) as error:
        raise DepthpruneError(f"{path} is not a readable GGUF file ({error}); check the file") from None


def field_value(reader, key: str):
    field = reader.get_field(key)
    return field.contents() if field is not None else None


@dataclass
class GgufModel:
    """A GGUF file opened for surgery: its reader, architecture and layer count."""

    path: Path
    reader: object
    arch: str
    num_layers: int

    @classmethod
    def open(cls, path: str | Path) -> "GgufModel":
        path = Path(path)
        reader = _reader(path)
        arch = field_value(reader, "general.architecture")
        count = field_value(reader, f"{arch}.block_count") if arch else None
        if not isinstance(arch, str) or not isinstance(count, int):
            raise DepthpruneError(f"{path} has no general.architecture or {arch}.block_count; it is not a model GGUF")
        return cls(path, reader, arch, count)

    def parent_metadata(self) -> dict | None:
        """The ``depthprune.json`` of an earlier depthprune step stored in this file, if any."""
        text = field_value(self.reader, METADATA_JSON_KEY)
        if not isinstance(text, str):
            return None
        try:
            metadata = json.loads(text)
        except json.JSONDecodeError:
            raise DepthpruneError(f"{self.path}: {METADATA_JSON_KEY} is not JSON; remove the key if it does not "
                                  "belong to these weights") from None
        kept = metadata.get("kept_layers") if isinstance(metadata, dict) else None
        if not isinstance(kept, list) or len(kept) != self.num_layers:
            raise DepthpruneError(f"{self.path}: {METADATA_JSON_KEY} does not match the file's {self.num_layers} "
                                  "blocks; remove the key if it does not belong to these weights")
        return metadata

    def check_removal(self, layers, allow_final_layer=False, allow_first_layer=False, allow_single_layer=False):
        """:meth:`ModelAdapter.check_removal` for a file: the same index checks plus llama.cpp's position rules."""
        from ..adapter import check_layer_indices

        removed = check_layer_indices(layers, self.num_layers, allow_final_layer=allow_final_layer,
                                      allow_first_layer=allow_first_layer, allow_single_layer=allow_single_layer)
        kept = [i for i in range(self.num_layers) if i not in set(removed)]
        self._check_positions(kept)
        return removed, kept

    def _check_positions(self, kept: list[int]) -> None:
        period = POSITION_PATTERNS.get(self.arch)
        if period and self.reader.get_field(f"{self.arch}.{SWA_PATTERN_KEY}") is None:
            sliding = [i % period < period - 1 for i in range(self.num_layers)]
            moved = [old for new, old in enumerate(kept) if sliding[old] != sliding[new]]
            if moved:
                raise DepthpruneError(
                    f"llama.cpp fixes which {self.arch} layers use sliding-window attention by position (every "
                    f"{period}th layer is global); this removal moves layer {moved[0]} to a position of the other "
                    f"kind; remove whole runs of {period} layers, or prune to safetensors instead")
        step = field_value(self.reader, f"{self.arch}.interleave_moe_layer_step")
        if isinstance(step, int) and step > 1:
            moved = [old for new, old in enumerate(kept) if (old + 1) % step != (new + 1) % step]
            if moved:
                raise DepthpruneError(f"llama.cpp places {self.arch}'s MoE layers by position (every {step}th); "
                                      f"this removal moves layer {moved[0]} to a position of the other kind; remove "
                                      f"whole runs of {step} layers")
        nextn = field_value(self.reader, f"{self.arch}.nextn_predict_layers")
        if isinstance(nextn, int) and nextn > 0 and any(i not in kept for i in range(self.num_layers - nextn,
                                                                                   self.num_layers)):
            raise DepthpruneError(f"the last {nextn} blocks of this {self.arch} file are next-token prediction "
                                  "layers, which llama.cpp finds by position; keep them")


def _metadata_fields(model: GgufModel, kept: list[int], metadata: dict):
    """``(key, value, type, sub_type)`` for every metadata field of the pruned file, in the source's order."""
    from gguf import GGUFValueType

    arch, old_count = model.arch, model.num_layers
    fields = []
    name_seen = False
    for field in model.reader.fields.values():
        name = field.name
        if name == "general.architecture" or name.startswith("GGUF.") or name.startswith(METADATA_PREFIX):
            continue   # the writer adds the architecture; GGUF.* are the reader's virtual fields; ours are renewed
        value_type = field.types[0]
        sub_type = field.types[-1] if value_type == GGUFValueType.ARRAY else None
        if value_type == GGUFValueType.ARRAY and len(field.types) > 2:
            raise DepthpruneError(f"{model.path}: {name} is an array of arrays, which depthprune cannot copy yet")
        value = field.contents()
        local = name[len(arch) + 1:] if name.startswith(arch + ".") else None
        if local == "block_count":
            value = len(kept)
        elif local in LEADING_COUNTS and isinstance(value, int):
            value = sum(1 for i in kept if i < value)
        elif (local is not None and value_type == GGUFValueType.ARRAY and len(value) == old_count
              and local not in NOT_PER_LAYER):
            value = [value[i] for i in kept]
        elif name == "general.name":
            value = f"{value} (depth-pruned {old_count}->{len(kept)} layers)"
            name_seen = True
        fields.append((name, value, value_type, sub_type))
    if not name_seen:
        fields.append(("general.name", f"depth-pruned {old_count}->{len(kept)} layers", GGUFValueType.STRING, None))
    fields += plan_fields(metadata)
    return fields


def plan_fields(metadata: dict) -> list[tuple]:
    """The ``depthprune.*`` keys: the plan as typed values, and the whole ``depthprune.json`` as one JSON string."""
    from gguf import GGUFValueType

    from ..saving import _json_default

    fields = [("depthprune.base_model", str(metadata.get("base_model")), GGUFValueType.STRING, None),
              ("depthprune.method", str(metadata.get("method")), GGUFValueType.STRING, None),
              ("depthprune.num_layers_original", int(metadata.get("num_layers_original") or 0),
               GGUFValueType.UINT32, None)]
    for key in ("kept_layers", "removed_layers"):
        values = [int(v) for v in metadata.get(key) or []]
        if values:     # GGUF arrays cannot be empty in the gguf writer
            fields.append((f"depthprune.{key}", values, GGUFValueType.ARRAY, GGUFValueType.INT32))
    fields.append((METADATA_JSON_KEY, json.dumps(metadata, default=_json_default), GGUFValueType.STRING, None))
    return fields


def write_gguf(model: GgufModel, target: Path, kept: list[int], metadata: dict, replacements: dict | None = None,
               progress_label: str = "copying kept tensors") -> dict:
    """Write ``model`` with only the ``kept`` blocks (renumbered) to ``target``.

    Args:
        replacements: new tensor name -> ``(numpy data, GGMLQuantizationType)`` written instead of the source's bytes
            (what :mod:`depthprune.filesurgery.export` passes for changed weights); every other tensor is copied.

    Returns:
        ``{"tensors": n, "block_bytes": bytes of blk.* tensors, "tensor_bytes": all tensor bytes}``.
    """
    from gguf import GGUFWriter

    replacements = replacements or {}
    new_index = {old: new for new, old in enumerate(kept)}
    selected = []
    for tensor in model.reader.tensors:
        match = BLOCK_NAME.match(tensor.name)
        if match is None:
            selected.append((tensor.name, tensor))
        elif int(match[1]) in new_index:
            selected.append((f"blk.{new_index[int(match[1])]}.{match[2]}", tensor))
    writer = GGUFWriter(target, arch=model.arch, endianess=model.reader.endianess)
    alignment = field_value(model.reader, "general.alignment")
    if isinstance(alignment, int):
        writer.data_alignment = alignment
    for key, value, value_type, sub_type in _metadata_fields(model, kept, metadata):
        writer.add_key_value(key, value, value_type, sub_type=sub_type)
    payloads = []     # (source tensor, None) to copy its bytes, or (None, new data)
    for name, tensor in selected:
        data, kind = replacements.get(name, (tensor.data, tensor.tensor_type))
        writer.add_tensor_info(name, data.shape, data.dtype, data.nbytes, kind)
        payloads.append((None, data) if name in replacements else (tensor, None))
    sizes = [int(tensor.n_bytes if tensor is not None else data.nbytes) for tensor, data in payloads]
    stats = {"tensors": len(selected), "tensor_bytes": sum(sizes),
             "block_bytes": sum(size for (name, _), size in zip(selected, sizes) if BLOCK_NAME.match(name))}
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    _write_tensor_data(writer, model.path, payloads, sizes, progress_label)
    writer.close()
    return stats


def _write_tensor_data(writer, source: Path, payloads: list, sizes: list[int], progress_label: str) -> None:
    """The data section: source tensors copied by the kernel from the file, new data written from memory.

    GGUFWriter.write_tensor_data would read a source tensor through the reader's memory map, and every page of a
    map that is touched counts in the process's resident memory: a 40 GB GGUF would show 40 GB. The layout is the
    writer's own: each tensor starts at the data alignment and is padded to it.
    """
    from tqdm.auto import tqdm

    from .safetensors_files import _copy_range

    handle = writer.fout[0]
    source_fd = os.open(source, os.O_RDONLY)
    try:
        with tqdm(total=sum(sizes), desc=progress_label, unit="B", unit_scale=True) as bar:
            for (tensor, data), size in zip(payloads, sizes):
                writer.write_padding(handle, handle.tell())
                if tensor is None:
                    data.tofile(handle)
                else:
                    handle.flush()     # the kernel appends at the descriptor's position
                    _copy_range(source_fd, handle.fileno(), int(tensor.data_offset), size)
                writer.write_padding(handle, size)
                bar.update(size)
    finally:
        os.close(source_fd)
    handle.flush()


def prune_gguf(model: GgufModel, plan, output, force: bool, metadata: dict, allow: dict) -> Path:
    """Write the pruned GGUF of ``model`` to ``output`` (a file), atomically."""
    from ..saving import complete_metadata
    from .output import atomic_output_file

    if plan.num_layers != model.num_layers:
        raise DepthpruneError(f"the plan is for {plan.num_layers} layers but {model.path} has {model.num_layers} "
                              "blocks")
    _, kept = model.check_removal(plan.removed_layers, **allow)
    metadata = complete_metadata(metadata, len(kept))
    with atomic_output_file(output, force=force) as target:
        write_gguf(model, target, kept, metadata)
    return Path(output)
