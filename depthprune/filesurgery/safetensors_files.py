"""Read safetensors headers and write safetensors files whose tensors are byte ranges copied from other files.

The safetensors library writes only from tensors held in memory; pruning a checkpoint larger than memory needs the
other way round: the format is an 8-byte little-endian header length, a JSON header (dtype, shape and
``data_offsets`` of every tensor, relative to the data section) and the data, so a file is written by composing a
header and copying each kept tensor's bytes from its source file with ``copy_file_range`` (in the kernel: no
tensor ever passes through this process's memory). The result is read back by the safetensors library in tests.
"""

from __future__ import annotations

import errno
import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import DepthpruneError

HEADER_LIMIT = 100 * 1024 * 1024   # the safetensors library's own limit on the header size
_COPY_CHUNK = 64 * 1024 * 1024     # bytes per read/write where copy_file_range is not available


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of a safetensors file: its header entry and where its bytes lie in the file (absolute)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


@dataclass
class SafetensorsHeader:
    path: Path
    tensors: dict[str, TensorEntry]     # in the order of their bytes in the file
    metadata: dict | None               # the header's __metadata__ (e.g. {"format": "pt"})


def read_header(path: str | os.PathLike) -> SafetensorsHeader:
    """The header of a safetensors file, with each tensor's absolute byte range; refuses malformed files."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
        if not 0 < length <= min(HEADER_LIMIT, size - 8):
            raise DepthpruneError(f"{path} is not a safetensors file (header length {length}); check the file")
        try:
            header = json.loads(handle.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise DepthpruneError(f"{path} has an unreadable safetensors header ({error}); check the file") from None
    data_start = 8 + length
    metadata = header.pop("__metadata__", None)
    tensors = []
    for name, entry in header.items():
        begin, end = entry["data_offsets"]
        if not 0 <= begin <= end or data_start + end > size:
            raise DepthpruneError(f"{path}: tensor {name!r} lies outside the file; the file is truncated or damaged")
        tensors.append(TensorEntry(name, entry["dtype"], tuple(entry["shape"]), data_start + begin, data_start + end))
    tensors.sort(key=lambda t: t.start)
    return SafetensorsHeader(path=path, tensors={t.name: t for t in tensors}, metadata=metadata)


def _copy_range(source_fd: int, target_fd: int, offset: int, length: int) -> None:
    """Append ``length`` bytes of ``source_fd`` from ``offset`` to ``target_fd`` (at its current position)."""
    copied = 0
    if hasattr(os, "copy_file_range"):
        try:
            while copied < length:
                step = os.copy_file_range(source_fd, target_fd, min(length - copied, 1 << 30), offset + copied)
                if step == 0:
                    break
                copied += step
        except OSError as error:   # another file system, or a kernel without it: copy through a buffer
            if error.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM):
                raise
    while copied < length:
        chunk = os.pread(source_fd, min(_COPY_CHUNK, length - copied), offset + copied)
        if not chunk:
            raise DepthpruneError(f"unexpected end of file while copying a tensor (at byte {offset + copied})")
        view = memoryview(chunk)
        while view:
            written = os.write(target_fd, view)
            view = view[written:]
        copied += len(chunk)


def write_copied_file(target: Path, tensors: list[tuple[str, TensorEntry, Path]], metadata: dict | None,
                      progress=None) -> int:
    """Write a safetensors file holding ``(new_name, entry, source_file)`` tensors, bytes copied from the sources.

    Returns the number of tensor bytes written. ``progress`` (a tqdm bar counting bytes) is advanced per tensor.
    """
    header: dict = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for new_name, entry, _ in tensors:
        if new_name in header:
            raise DepthpruneError(f"internal error: tensor {new_name!r} would be written twice")
        header[new_name] = {"dtype": entry.dtype, "shape": list(entry.shape),
                            "data_offsets": [offset, offset + entry.nbytes]}
        offset += entry.nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)    # the data section starts 8-byte aligned, as the library writes it
    sources: dict[Path, int] = {}
    target_fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        os.write(target_fd, len(text).to_bytes(8, "little") + text)
        for _, entry, source in tensors:
            if source not in sources:
                sources[source] = os.open(source, os.O_RDONLY)
            _copy_range(sources[source], target_fd, entry.start, entry.nbytes)
            if progress is not None:
                progress.update(entry.nbytes)
    finally:
        os.close(target_fd)
        for descriptor in sources.values():
            os.close(descriptor)
    return offset
