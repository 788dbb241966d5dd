"""A single output file (a GGUF) written as atomically as an output folder: complete, or not there at all."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Iterator

from ..errors import DepthpruneError
from ..saving import check_writable_parent, deferred_interrupts, give_ordinary_permissions, temp_dir_beside


def check_output_file(out_file: str | os.PathLike, force: bool = False) -> Path:
    """Refuse an existing output file unless ``force``, and a folder in its place always; returns the path."""
    out = Path(out_file)
    if out.is_dir():
        raise DepthpruneError(f"output {out} is a folder; name a file (e.g. {out / 'model.gguf'}) or choose another "
                              "--output")
    if out.exists() and not force:
        raise DepthpruneError(f"output {out} already exists; choose another --output or pass --force to replace it")
    check_writable_parent(out)
    return out


@contextlib.contextmanager
def atomic_output_file(out_file: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Yield a path inside a marked temporary folder beside ``out_file``; it becomes ``out_file`` when the block ends.

    The temporary folder is the same kind :func:`depthprune.saving.atomic_output_dir` makes, so an interrupted run
    leaves nothing and a folder left by ``kill -9`` is removed by the next run writing the same output.
    """
    out = check_output_file(out_file, force)
    with temp_dir_beside(out) as tmp:
        target = tmp / out.name
        yield target
        if not target.is_file():
            raise DepthpruneError(f"internal error: {target} was not written")
        give_ordinary_permissions(tmp)
        with deferred_interrupts():     # the rename and the clean-up happen together
            os.replace(target, out)
            shutil.rmtree(tmp, ignore_errors=True)
