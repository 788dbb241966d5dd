"""Which surgery ``prune`` does: in memory (load, remove layers, save) or at the file level (copy kept tensors).

The file level needs the plan's layers to be known without the weights (``--layers``, ``--method`` with
``--scores``, ``--method last``) and a source whose tensors can be copied as they are: a safetensors checkpoint
folder (to a folder) or a GGUF file (to a GGUF file). A GGUF output always comes from the GGUF source's bytes; when
the plan needs the weights (a criterion that scores), the model is loaded for scoring only.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import DepthpruneError

logger = logging.getLogger(__name__)

SURGERY_CHOICES = ("auto", "file", "memory")
FORMAT_CHOICES = ("safetensors", "gguf")


def gguf_source(model) -> Path | None:
    """The GGUF file behind a model spec (a ``.gguf`` path or an alias that names one), else None."""
    from ..loading import MODEL_ALIASES, LoadedModel, resolve_alias

    if model is None or isinstance(model, LoadedModel):
        return None
    text = str(model)
    if text in MODEL_ALIASES:
        return resolve_alias(text)[0] if MODEL_ALIASES[text][1].endswith(".gguf") else None
    path = Path(text).expanduser()
    return path if path.suffix.lower() == ".gguf" else None


def output_format(output, format: str | None) -> str:
    """``gguf`` or ``safetensors``: ``--format`` when given, else from the output's name."""
    if format is not None and format not in FORMAT_CHOICES:
        raise DepthpruneError(f"unknown --format {format!r}; use {' or '.join(FORMAT_CHOICES)}")
    named_gguf = output is not None and str(output).lower().endswith(".gguf")
    if format == "safetensors" and named_gguf:
        raise DepthpruneError(f"--format safetensors writes a folder, but --output {output} is named like a GGUF "
                              "file; drop --format or choose another --output")
    return format or ("gguf" if named_gguf else "safetensors")


@dataclass
class Route:
    kind: str                   # "memory", "safetensors" (file level) or "gguf" (file level, GGUF out)
    source: Path | None         # the file or folder whose tensors are copied
    load_weights: bool          # the plan needs the model in memory (scoring)
    reason: str = ""            # for the one line printed when the file level is chosen
    _gguf: object = None        # the opened GGUF (reading a vocabulary of 50k tokens takes seconds: once)

    def gguf(self):
        """The source GGUF, opened once."""
        if self._gguf is None:
            from .gguf_files import GgufModel

            self._gguf = GgufModel.open(self.source)
        return self._gguf

    @property
    def writes_file(self) -> bool:
        return self.kind == "gguf"

    def announce(self) -> None:
        if self.kind != "memory":
            print(f"depthprune: {self.reason}", file=sys.stderr)


def _safetensors_source(model) -> Path | None:
    from ..loading import LoadedModel
    from .checkpoint import checkpoint_layout

    if model is None or isinstance(model, LoadedModel):
        return None
    path = Path(str(model)).expanduser()
    return path if path.is_dir() and checkpoint_layout(path) is not None else None


def choose_route(model, output, format: str | None, surgery: str, needs_weights: bool, dtype) -> Route:
    """The surgery for this prune; refuses combinations that cannot be done (before anything is loaded)."""
    from ..loading import checkpoint_dtype, parse_dtype

    if surgery not in SURGERY_CHOICES:
        raise DepthpruneError(f"unknown --surgery {surgery!r}; use one of {', '.join(SURGERY_CHOICES)}")
    kind = output_format(output, format)
    if kind == "gguf":
        source = gguf_source(model)
        if source is None:
            raise DepthpruneError("a GGUF output is made from a GGUF source's bytes, and this model is not a .gguf "
                                  "file; convert it with llama.cpp's convert_hf_to_gguf.py first, or write "
                                  "safetensors (an output folder)")
        if surgery == "memory":
            raise DepthpruneError("--surgery memory writes safetensors; a GGUF output is always written at the "
                                  "file level (drop --surgery)")
        if not source.is_file():
            raise DepthpruneError(f"model file {source} does not exist; check the path")
        how = "kept blocks copied from the GGUF, quantisation unchanged"
        return Route("gguf", source, needs_weights, f"pruning at the file level ({how})")
    if surgery == "memory":
        return Route("memory", None, True)
    folder = _safetensors_source(model)
    why_not = None
    if folder is None:
        why_not = "the model is not a local safetensors checkpoint folder"
    elif needs_weights:
        why_not = "the criterion scores the weights, so the model is loaded anyway"
    elif parse_dtype(dtype) not in ("auto", checkpoint_dtype(folder)):
        why_not = f"--dtype {dtype} converts the weights"
    if why_not is not None:
        if surgery == "file":
            raise DepthpruneError(f"--surgery file is not possible here: {why_not}; use --surgery auto")
        logger.info("pruning in memory: %s", why_not)
        return Route("memory", None, True)
    return Route("safetensors", folder, False,
                 "pruning at the file level (kept tensors copied byte for byte; the model is not loaded)")


def open_for_route(route: Route, model, dtype, device, trust_remote_code: bool):
    """``(loaded, adapter)``: the loaded model, or a weightless stand-in when the weights are not needed."""
    from ..adapter import ModelAdapter
    from ..loading import MODEL_ALIASES, LoadedModel, check_device, load_model

    check_device(device)     # the same one line for a bad --device whichever path is taken
    if route.load_weights:
        loaded = model if isinstance(model, LoadedModel) else load_model(model, dtype=dtype, device=device,
                                                                          trust_remote_code=trust_remote_code)
        return loaded, ModelAdapter(loaded.model)
    if route.kind == "gguf":
        gguf = route.gguf()
        text = str(model)
        description = MODEL_ALIASES[text][2] if text in MODEL_ALIASES else str(route.source.resolve())
        return LoadedModel(model=None, tokenizer=None, source=text, description=description), gguf
    from .checkpoint import check_quantization, open_skeleton

    skeleton, _ = open_skeleton(route.source, trust_remote_code=trust_remote_code)
    adapter = ModelAdapter(skeleton)
    check_quantization(route.source, adapter.num_layers)   # before planning, not after
    loaded = LoadedModel(model=skeleton, tokenizer=None, source=str(model),
                         description=str(route.source.resolve()), checkpoint_dir=route.source)
    return loaded, adapter


def gguf_parent(route: Route) -> dict | None:
    """For a GGUF route, the provenance an earlier depthprune step stored in the source file."""
    return route.gguf().parent_metadata() if route.kind == "gguf" else None


def write_route(route: Route, loaded, adapter, plan, output, force: bool, metadata: dict, allow: dict,
                extra_files: dict | None = None) -> Path:
    """Write the pruned model by the route's file-level surgery."""
    if route.kind == "gguf":
        from .gguf_files import prune_gguf

        return prune_gguf(route.gguf(), plan, output, force, metadata, allow)
    from .checkpoint import prune_checkpoint_files

    return prune_checkpoint_files(route.source, loaded.model, adapter, plan, output, force, metadata, extra_files)
