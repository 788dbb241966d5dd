"""Write outputs so that nothing on disk is ever half-written or silently overwritten."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import stat
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from .errors import DepthpruneError
from .metadata import METADATA_FILE

logger = logging.getLogger(__name__)
# Our checkpoints are written by transformers 5: older versions read rope_parameters wrongly without a word.
TRANSFORMERS_REQUIREMENT = "transformers>=5.0"
# Written into every temporary output folder: the proof that depthprune made it, so a later run may remove it.
TEMP_MARKER = ".depthprune-temp.json"


def check_output_dir(out_dir: str | os.PathLike, force: bool = False) -> Path:
    """Refuse an existing output folder unless ``force``; returns the path. Call before any expensive work."""
    out = Path(out_dir)
    if out.exists() and not force:
        raise DepthpruneError(f"output {out} already exists; choose another --output or pass --force to replace it")
    if out.exists() and not out.is_dir():
        raise DepthpruneError(f"output {out} exists and is not a folder; remove it or choose another --output")
    check_writable_parent(out)
    return out


def check_writable_parent(out: Path) -> None:
    """The nearest existing folder above ``out`` must be a writable folder (we create the missing ones)."""
    parent = out.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise DepthpruneError(f"cannot write {out}: {parent} is a file, not a folder; choose another --output")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise DepthpruneError(f"cannot write {out}: {parent} is not writable by you; choose another --output")


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block ends, then deliver them.

    Used around steps that must not be split (a pair of renames, creating a temporary folder and its marker, removing
    it): Ctrl-C there would leave a state no later run can recognise. Outside the main thread (where handlers cannot
    be changed) the block runs unprotected.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(signum)
        if handler in (signal.SIG_IGN, None):
            continue   # an ignored signal stays ignored
        previous[signum] = handler
        signal.signal(signum, lambda number, frame: received.append(number))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if received:
            signal.raise_signal(received[0])   # now handled as it would have been (KeyboardInterrupt, exit, ...)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # someone else's process: alive
        return True
    return True


def remove_stale_temp_dirs(out_dir: str | os.PathLike) -> list[Path]:
    """Remove temporary folders beside ``out_dir`` that an interrupted or killed depthprune run left behind.

    Only folders named ``.NAME.tmp-PID-*`` that hold our marker file naming this host and the same PID, whose process
    no longer runs, are removed: anything else (a user's folder, a run still in progress) is never touched.

    Returns:
        The folders removed.
    """
    out = Path(out_dir)
    if not out.parent.is_dir():
        return []
    removed = []
    prefix = f".{out.name}.tmp-"
    for candidate in out.parent.iterdir():
        if not candidate.name.startswith(prefix) or candidate.is_symlink() or not candidate.is_dir():
            continue
        try:
            marker = json.loads((candidate / TEMP_MARKER).read_text())
        except (OSError, ValueError):
            continue   # no marker: not ours
        pid = marker.get("pid") if isinstance(marker, dict) else None
        if (not isinstance(pid, int) or marker.get("host") != socket.gethostname()
                or not candidate.name.startswith(f"{prefix}{pid}-") or _process_alive(pid)):
            continue
        with deferred_interrupts():
            shutil.rmtree(candidate, ignore_errors=True)
        logger.info("removed %s, left by an interrupted depthprune run (process %d)", candidate, pid)
        removed.append(candidate)
    return removed


def _make_temp_dir(out: Path) -> Path:
    """A new marked temporary folder beside ``out``, made with os.mkdir so that it gets the umask's permissions.

    (tempfile.mkdtemp makes 0700 folders, and the mode would survive the final rename.) Call it with interrupts
    deferred, so that the folder never exists without its marker.
    """
    for _ in range(100):
        tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
        try:
            os.mkdir(tmp)
        except FileExistsError:
            continue
        marker = {"pid": os.getpid(), "host": socket.gethostname(), "for": str(out),
                  "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        (tmp / TEMP_MARKER).write_text(json.dumps(marker) + "\n")
        return tmp
    raise DepthpruneError(f"could not create a temporary folder beside {out}; check the folder's permissions")


def current_umask() -> int:
    """The process's umask, read without changing it where the system allows (Linux: /proc/self/status)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)   # elsewhere the only portable way is to set it and put it back
    os.umask(mask)
    return mask


def give_ordinary_permissions(folder: Path) -> None:
    """Give every file and folder below ``folder`` the mode an ordinary write gives under the umask.

    Some writers make private files whatever the umask (safetensors 0.8 writes 0600 via a temporary file), and the
    mode would survive the final rename; an output is meant to be shared like anything else the user writes.
    Executable bits are kept.
    """
    umask = current_umask()
    os.chmod(folder, 0o777 & ~umask)   # the temporary folder itself becomes the output
    for root, folders, files in os.walk(folder):
        for name in folders + files:
            path = os.path.join(root, name)
            if os.path.islink(path):
                continue   # a link's target is not ours to change
            executable = os.path.isdir(path) or os.stat(path).st_mode & 0o111
            os.chmod(path, (0o777 if executable else 0o666) & ~umask)


@contextlib.contextmanager
def atomic_output_dir(out_dir: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``out_dir`` that becomes ``out_dir`` only if the block completes.

    On an exception, Ctrl-C or (under the CLI) SIGTERM the temporary folder is deleted and an existing ``out_dir`` is
    left untouched; a folder left by a killed run is removed by the next run writing the same output. With ``force``
    an existing ``out_dir`` is replaced only after the new one is complete. The output folder and its files get the
    permissions an ordinary write gives under the user's umask.
    """
    out = check_output_dir(out_dir, force)
    with temp_dir_beside(out) as tmp:
        yield tmp
        give_ordinary_permissions(tmp)
        with deferred_interrupts():   # both renames happen, or neither; the replaced folder is gone afterwards
            (tmp / TEMP_MARKER).unlink()
            old = None
            if out.exists():
                old = out.with_name(f".{out.name}.old-{os.getpid()}")
                out.rename(old)
            try:
                tmp.rename(out)
            except OSError:
                if old is not None:
                    old.rename(out)   # put the previous output back
                raise
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def temp_dir_beside(out: Path) -> Iterator[Path]:
    """A marked temporary folder beside ``out``, deleted if the block fails (or is interrupted).

    The shared part of every atomic output, a folder or a single file: a folder left by an earlier ``kill -9`` of a
    run writing ``out`` is removed first. Moving the result into place is the caller's, inside the block.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_dirs(out)
    tmp = None
    try:
        with deferred_interrupts():
            tmp = _make_temp_dir(out)
        yield tmp
    except BaseException:
        if tmp is not None:
            with deferred_interrupts():
                shutil.rmtree(tmp, ignore_errors=True)   # already gone when only a delivered interrupt is raised
        raise


def write_bytes_atomic(path: str | os.PathLike, content: bytes) -> None:
    """Write ``content`` to ``path`` via a temporary file and a rename: readers see the old file or the new one.

    A new file gets the umask's permissions, a replaced one keeps its own, as an ordinary write would.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        mode = None
    try:
        descriptor = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)   # 0o666 & ~umask
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_json_atomic(path: str | os.PathLike, data) -> None:
    """Write JSON to ``path`` via a temporary file and a rename (see :func:`write_bytes_atomic`)."""
    text = json.dumps(data, indent=2, default=_json_default) + "\n"   # a value that cannot be written writes nothing
    write_bytes_atomic(path, text.encode())


def _json_default(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def read_metadata(checkpoint_dir: str | os.PathLike | None, num_layers: int | None = None) -> dict | None:
    """The ``depthprune.json`` of a checkpoint we wrote, or None when there is none.

    A file that is not a JSON object, whose layer lists are not lists of layer numbers, or (given ``num_layers``,
    the layer count of the weights beside it) whose ``kept_layers`` do not match the weights, is an error: its
    provenance would be carried into every output made from this checkpoint.
    """
    if checkpoint_dir is None:
        return None
    path = Path(checkpoint_dir) / METADATA_FILE
    if not path.is_file():
        return None
    fix = "remove or rename it if it does not belong to these weights"
    try:
        metadata = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DepthpruneError(f"{path} is not valid JSON ({error}); {fix}") from None
    if not isinstance(metadata, dict):
        raise DepthpruneError(f"{path} holds a JSON {type(metadata).__name__}, not the object depthprune writes; {fix}")
    for key in ("kept_layers", "removed_layers"):
        values = metadata.get(key)
        if values is not None and not (isinstance(values, list) and all(isinstance(v, int) and not isinstance(v, bool)
                                                                          and v >= 0 for v in values)):
            raise DepthpruneError(f"{path}: {key!r} is not a list of layer numbers; {fix}")
    kept = metadata.get("kept_layers")
    if num_layers is not None and kept is not None and len(kept) != num_layers:
        raise DepthpruneError(f"{path} lists {len(kept)} kept layers but the model beside it has {num_layers}; {fix}")
    return metadata


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


def complete_metadata(metadata: dict | None, num_layers: int) -> dict:
    """``metadata`` plus what every saved model's ``depthprune.json`` holds: layer count, version, date, requirement."""
    from . import __version__

    metadata = dict(metadata or {})
    metadata.setdefault("num_layers", num_layers)
    metadata["depthprune_version"] = __version__
    metadata["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    metadata["requires"] = TRANSFORMERS_REQUIREMENT
    return metadata


def write_provenance(folder: Path, metadata: dict, extra_files: dict[str, object] | None = None) -> None:
    """Write ``depthprune.json``, the model card and ``extra_files`` into a (temporary) output folder."""
    write_json_atomic(folder / METADATA_FILE, metadata)
    (folder / "README.md").write_text(_model_card(metadata))
    for name, content in (extra_files or {}).items():
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            write_json_atomic(target, content)


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
    from .adapter import ModelAdapter

    metadata = complete_metadata(metadata, ModelAdapter(model).num_layers)
    with atomic_output_dir(out_dir, force=force) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        write_provenance(tmp, metadata, extra_files)
    return Path(out_dir)
