"""Write outputs so that nothing on disk is ever half-written or silently overwritten."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from .errors import DepthpruneError
from .metadata import METADATA_FILE

# Our checkpoints are written by transformers 5: older versions read rope_parameters wrongly without a word.
TRANSFORMERS_REQUIREMENT = "transformers>=5.0"


def check_output_dir(out_dir: str | os.PathLike, force: bool = False) -> Path:
    """Refuse an existing output folder unless ``force``; returns the path. Call before any expensive work."""
    out = Path(out_dir)
    if out.exists() and not force:
        raise DepthpruneError(f"output {out} already exists; choose another --output or pass --force to replace it")
    if out.exists() and not out.is_dir():
        raise DepthpruneError(f"output {out} exists and is not a folder; remove it or choose another --output")
    return out


@contextlib.contextmanager
def atomic_output_dir(out_dir: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``out_dir`` that becomes ``out_dir`` only if the block completes.

    On an exception the temporary folder is deleted and an existing ``out_dir`` is left untouched. With ``force`` an
    existing ``out_dir`` is replaced only after the new one is complete.
    """
    out = check_output_dir(out_dir, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_json_atomic(path: str | os.PathLike, data) -> None:
    """Write JSON to ``path`` via a temporary file and a rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=2, default=_json_default)
        handle.write("\n")
    os.replace(tmp, path)


def _json_default(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def read_metadata(checkpoint_dir: str | os.PathLike | None) -> dict | None:
    """The ``depthprune.json`` of a checkpoint we wrote, or None."""
    if checkpoint_dir is None:
        return None
    path = Path(checkpoint_dir) / METADATA_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def _model_card(metadata: dict) -> str:
    removed = metadata.get("removed_layers", [])
    lines = [
        "---",
        "library_name: transformers",
        "tags: [depthprune, depth-pruning]",
        "---",
        f"# {metadata.get('method', 'depth-pruned')} — {metadata.get('num_layers', '?')} layers",
        "",
        f"Made with depthprune {metadata.get('depthprune_version', '')} from `{metadata.get('base_model')}`.",
        "",
        f"- Layers: {metadata.get('num_layers_original', '?')} -> {metadata.get('num_layers', '?')}",
        f"- Removed layers (0-based, original numbering): {removed}",
        f"- Method: {metadata.get('method')}",
        f"- Requires {TRANSFORMERS_REQUIREMENT}: older versions read this config without error but wrongly "
        "(rope settings), so check your version.",
        "",
        "Loads with plain transformers:",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "model = AutoModelForCausalLM.from_pretrained('path/to/this/folder')",
        "tokenizer = AutoTokenizer.from_pretrained('path/to/this/folder')",
        "```",
        "",
        "The full plan, scores and settings are in `depthprune.json`.",
        "",
    ]
    return "\n".join(lines)


def save(model, tokenizer, out_dir: str | os.PathLike, metadata: dict | None = None, force: bool = False,
         extra_files: dict[str, object] | None = None) -> Path:
    """Save a model as an ordinary Hugging Face checkpoint with its provenance.

    Args:
        model: the (pruned) model.
        tokenizer: its tokenizer, or None.
        out_dir: destination folder; refused if it exists unless ``force``.
        metadata: written to ``depthprune.json``; should hold ``base_model``, ``removed_layers`` and
            ``kept_layers`` (0-based, original numbering) and ``method``. Version and date are added.
        extra_files: name -> JSON-serialisable object or bytes, written beside the model (e.g. plots).

    Returns:
        The output folder.
    """
    from . import __version__
    from .adapter import ModelAdapter

    adapter = ModelAdapter(model)
    metadata = dict(metadata or {})
    metadata.setdefault("num_layers", adapter.num_layers)
    metadata["depthprune_version"] = __version__
    metadata["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    metadata["requires"] = TRANSFORMERS_REQUIREMENT
    with atomic_output_dir(out_dir, force=force) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        write_json_atomic(tmp / METADATA_FILE, metadata)
        (tmp / "README.md").write_text(_model_card(metadata))
        for name, content in (extra_files or {}).items():
            target = tmp / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                target.write_bytes(content)
            else:
                write_json_atomic(target, content)
    return Path(out_dir)
