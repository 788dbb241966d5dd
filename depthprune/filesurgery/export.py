"""Write a changed model (healed, collapsed, compensated, or just pruned) back as GGUF beside its GGUF source.

``depthprune export MODEL_DIR --to-gguf OUT.gguf [--source SRC.gguf]``: the output has the source's metadata (per-layer
arrays filtered by the model's kept layers, ``depthprune.*`` keys added) and one tensor per source tensor of a kept
block or outside the blocks. A tensor whose values equal the source's (as transformers reads the GGUF) is copied
byte for byte; a changed one is quantised to the source tensor's type where the gguf package can
(:data:`QUANTISABLE`), else to Q8_0, with one line naming llama.cpp's ``llama-quantize`` for the K-quants.

The GGUF <-> transformers tensor names and value transforms are transformers' own (``get_gguf_hf_weights_map`` and
its tensor processors); writing needs the inverse of the processor, known here for the identity and Llama's q/k
row permutation, and refused for the others.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np

from ..errors import DepthpruneError

logger = logging.getLogger(__name__)

QUANTISABLE = ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0")
FALLBACK = "Q8_0"


def _permute(weights: np.ndarray, n_head: int, n_head_kv: int | None) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf permutation of q/k rows; transformers' reverse_permute undoes it."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def _inverse_processor(processor, config: dict, source_path: Path):
    """``gguf_name, hf_values -> gguf values``: the inverse of transformers' processor for this architecture."""
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor, TensorProcessor

    if type(processor) is TensorProcessor:
        return lambda name, values: values
    if type(processor) is LlamaTensorProcessor:
        heads, kv_heads = config.get("num_attention_heads"), config.get("num_key_value_heads")

        def inverse(name, values):
            if ".attn_q." in name and heads:
                return _permute(values, heads, heads)
            if ".attn_k." in name and heads and kv_heads:
                return _permute(values, heads, kv_heads)
            return values

        return inverse
    raise DepthpruneError(f"exporting to GGUF is not supported yet for {source_path.name}'s architecture "
                          f"(transformers reads it with {type(processor).__name__}, whose inverse depthprune does not "
                          "know); save safetensors and convert with llama.cpp's convert_hf_to_gguf.py")


def _source_from_metadata(model_dir: Path, metadata: dict | None) -> Path:
    from .route import gguf_source

    for key in ("base_model_source", "base_model"):
        value = (metadata or {}).get(key)
        if value is not None:
            path = gguf_source(value)
            if path is not None and path.is_file():
                return path
    raise DepthpruneError(f"{model_dir} does not name a GGUF source (depthprune.json base_model_source); pass "
                          "--source SRC.gguf, the GGUF the model was made from")


def _hf_tensor_names(model_dir: Path) -> dict[str, Path]:
    from .checkpoint import checkpoint_layout
    from .safetensors_files import read_header

    layout = checkpoint_layout(model_dir)
    if layout is None:
        raise DepthpruneError(f"{model_dir} is not a safetensors checkpoint folder (config.json + model.safetensors "
                              "or shards); give the folder depthprune wrote")
    return {name: shard for shard in layout.shards for name in read_header(shard).tensors}


def export_gguf(model: str | Path, to_gguf: str | Path, source: str | Path | None = None,
                force: bool = False) -> dict:
    """Write the checkpoint folder ``model`` as GGUF ``to_gguf``, tensors matched to the GGUF ``source``.

    Args:
        model: a safetensors checkpoint folder made (by depthprune) from a GGUF source.
        to_gguf: the GGUF file to write (atomically; an existing one needs ``force``).
        source: the GGUF the model was made from; default: the ``base_model_source`` in its ``depthprune.json``.

    Returns:
        ``{"copied": n, "quantised": {type: n}, "fallback": {type: n}, "block_bytes": ..., "tensor_bytes": ...}``.
    """
    from ..extras import require

    require("gguf", purpose="exporting to GGUF")
    from ..saving import complete_metadata, read_metadata
    from .gguf_files import GgufModel, write_gguf
    from .output import atomic_output_file, check_output_file

    model_dir = Path(model)
    if not model_dir.is_dir():
        raise DepthpruneError(f"{model_dir} is not a checkpoint folder; give the folder depthprune wrote")
    check_output_file(to_gguf, force)
    metadata = read_metadata(model_dir)
    source_path = Path(source) if source is not None else _source_from_metadata(model_dir, metadata)
    if not source_path.is_file():
        raise DepthpruneError(f"GGUF source {source_path} does not exist; check --source")
    gguf = GgufModel.open(source_path)
    config = json.loads((model_dir / "config.json").read_text())
    kept = _kept_layers(metadata, config, gguf)
    replacements, report = _changed_tensors(model_dir, gguf, kept)
    provenance = complete_metadata({**(metadata or {}), "exported_from": str(model_dir.resolve()),
                                    "gguf_source": str(source_path.resolve())}, len(kept))
    with atomic_output_file(to_gguf, force=force) as target:
        stats = write_gguf(gguf, target, kept, provenance, replacements=replacements, progress_label="writing GGUF")
    if report["fallback"]:
        kinds = ", ".join(f"{n} x {kind}" for kind, n in sorted(report["fallback"].items()))
        print(f"depthprune: {kinds} changed tensors written as {FALLBACK} (the gguf package cannot quantise that "
              f"type); for K-quants requantise with llama.cpp: llama-quantize --allow-requantize {to_gguf} OUT "
              "Q4_K_M", file=sys.stderr)
    return {**report, **stats, "output": str(to_gguf)}


def _kept_layers(metadata: dict | None, config: dict, gguf) -> list[int]:
    """The source blocks the model's layers are, in order (``kept_layers`` in the source's numbering)."""
    from ..adapter import architecture_table

    kept = (metadata or {}).get("kept_layers")
    original = (metadata or {}).get("num_layers_original")
    model_type = config.get("model_type")
    spec = architecture_table().get(model_type)
    count_key = spec.num_layers_key if spec else "num_hidden_layers"
    count = config.get(count_key, config.get("text_config", {}).get(count_key))
    if kept is None:             # not pruned by depthprune: the model has every block of its source
        kept, original = list(range(gguf.num_layers)), gguf.num_layers
    if original != gguf.num_layers or len(kept) != count:
        raise DepthpruneError(f"the model's layers ({count}, from {original} original layers) do not come from "
                              f"{gguf.path.name}, which has {gguf.num_layers} blocks; pass the GGUF the model was made "
                              "from as --source")
    return list(kept)


def _transformers_view(gguf):
    """How transformers reads ``gguf``: its tensor processor, that processor's inverse and GGUF -> HF tensor names."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.modeling_gguf_pytorch_utils import (TENSOR_PROCESSORS, TensorProcessor, get_gguf_hf_weights_map,
                                                          load_gguf_checkpoint)

    parsed = load_gguf_checkpoint(str(gguf.path), return_tensors=False)
    source_config = AutoConfig.from_pretrained(str(gguf.path.parent), gguf_file=gguf.path.name)
    with torch.device("meta"):
        source_skeleton = AutoModelForCausalLM.from_config(source_config)
    processor = TENSOR_PROCESSORS.get(gguf.arch, TensorProcessor)(config=parsed["config"])
    inverse = _inverse_processor(processor, parsed["config"], gguf.path)
    return parsed, processor, inverse, get_gguf_hf_weights_map(source_skeleton, processor)


def _target_type(kind, report: dict):
    """The type a changed tensor of source type ``kind`` is written in (counted in ``report``)."""
    from gguf import GGMLQuantizationType

    if kind.name in QUANTISABLE:
        report["quantised"][kind.name] = report["quantised"].get(kind.name, 0) + 1
        return kind
    report["fallback"][kind.name] = report["fallback"].get(kind.name, 0) + 1
    return GGMLQuantizationType[FALLBACK]


def _check_all_placed(model_dir: Path, gguf, hf_files: dict, used: set) -> None:
    """Refuse a model holding tensors the GGUF has no place for (their changes would be lost silently)."""
    import torch
    from safetensors import safe_open

    unplaced = sorted(set(hf_files) - used)
    if unplaced == ["lm_head.weight"] and all(t.name != "output.weight" for t in gguf.reader.tensors):
        head, embedding = (safe_open(hf_files[n], framework="pt").get_tensor(n)
                           for n in ("lm_head.weight", "model.embed_tokens.weight"))
        unplaced = [] if torch.equal(head, embedding) else unplaced    # a tied head saved twice is one tensor
    if unplaced:
        raise DepthpruneError(f"{model_dir} holds {unplaced[0]}, which has no tensor in {gguf.path.name} (a tensor the "
                              "source does not have, e.g. an untied head); it cannot be exported beside this source")


def _changed_tensors(model_dir: Path, gguf, kept: list[int]):
    """New GGUF tensor name -> (data, type) for every tensor whose values differ from the source's."""
    import torch
    from gguf import dequantize, quantize
    from safetensors import safe_open
    from tqdm.auto import tqdm

    from .gguf_files import BLOCK_NAME

    parsed, processor, inverse, gguf_to_hf = _transformers_view(gguf)
    hf_files = _hf_tensor_names(model_dir)
    layers_prefix = "model.layers."   # the GGUF-readable architectures' layers in transformers
    new_index = {old: new for new, old in enumerate(kept)}
    replacements, report = {}, {"copied": 0, "quantised": {}, "fallback": {}}
    handles, used = {}, set()
    for tensor in tqdm(gguf.reader.tensors, desc="comparing tensors with the source", unit="tensor"):
        match = BLOCK_NAME.match(tensor.name)
        if match is not None and int(match[1]) not in new_index:
            continue
        hf_name = gguf_to_hf.get(tensor.name)
        if hf_name is None:
            report["copied"] += 1     # not a transformers parameter (e.g. rope_freqs): nothing to change
            continue
        new_name = tensor.name
        if match is not None:         # source block i is the model's layer new_index[i]
            new_name = f"blk.{new_index[int(match[1])]}.{match[2]}"
            hf_name = hf_name.replace(f"{layers_prefix}{match[1]}.", f"{layers_prefix}{new_index[int(match[1])]}.", 1)
        if hf_name not in hf_files:
            raise DepthpruneError(f"{model_dir} has no tensor {hf_name} for {tensor.name}; it is not a model "
                                  f"made from {gguf.path.name}")
        if hf_files[hf_name] not in handles:
            handles[hf_files[hf_name]] = safe_open(hf_files[hf_name], framework="pt")
        values = handles[hf_files[hf_name]].get_tensor(hf_name)
        used.add(hf_name)
        read = processor.process(weights=dequantize(tensor.data, tensor.tensor_type), name=tensor.name,
                                 tensor_key_mapping=gguf_to_hf, parsed_parameters=parsed).weights
        read = torch.from_numpy(np.array(read, dtype=np.float32)).to(values.dtype)   # as transformers reads it
        if read.shape == values.shape and torch.equal(read, values):
            report["copied"] += 1
            continue
        kind = _target_type(tensor.tensor_type, report)
        gguf_values = np.ascontiguousarray(inverse(tensor.name, values.float().numpy()), dtype=np.float32)
        replacements[new_name] = (quantize(gguf_values, kind), kind)
    _check_all_placed(model_dir, gguf, hf_files, used)
    return replacements, report
