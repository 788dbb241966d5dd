"""The teacher's top-k next-token logits, computed once and read back from disk (numpy memory maps; never pickle).

A cache folder holds ``values.npy`` (float16) and ``indices.npy`` (int32), both ``(blocks, seq_len - 1, k)``:
the teacher's k largest logits at positions 0..seq_len-2 of every training block and their token ids, plus
``cache.json`` saying what they were made from. The folder's name is a digest of the teacher's identity, the token
blocks and k, so every epoch, every resumed run, and every pruned variant of a ``sweep`` that heals on the same
blocks with the same teacher reads the same folder and the teacher runs once. The folder is written aside and
renamed when complete, so an interrupted pass never leaves a cache that looks finished.

Size: 6·k bytes per token (a float16 value and an int32 index per kept logit), on disk; training reads one
micro-batch of it at a time through the memory map. k = 64: 384 bytes per token, 384 MB per million tokens. The full
float32 logits of SmolLM2's 49,152-token vocabulary would be 197 KB per token, 197 GB per million tokens.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import DepthpruneError

CACHE_FILE = "cache.json"
VALUES_FILE = "values.npy"
INDICES_FILE = "indices.npy"
FORMAT_VERSION = 1
WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".bin")


def bytes_per_token(top_k: int) -> int:
    """Disk bytes per cached token: a float16 value and an int32 token id for each of the k logits."""
    return top_k * (np.dtype(np.float16).itemsize + np.dtype(np.int32).itemsize)


def default_cache_root() -> Path:
    from ..loading import _cache_root

    return _cache_root() / "teacher-topk"


def source_identity(source: str) -> str:
    """What names a teacher given by path, alias or hub id; a local folder or file adds its weight files' sizes and
    modification times, so a checkpoint rewritten in place is not mistaken for the one cached."""
    path = Path(source).expanduser()
    if not path.exists():
        return source
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.suffix in WEIGHT_SUFFIXES)
    stamps = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    return json.dumps([str(path.resolve()), stamps])


def model_identity(description: str, model: torch.nn.Module) -> str:
    """What names a teacher already in memory: its description and a digest of its weights (every tensor's name,
    shape and sum, and its first 4,096 values), cheap next to one forward pass over the healing data."""
    digest = hashlib.sha256(description.encode())
    for name, tensor in model.state_dict().items():
        flat = tensor.detach().reshape(-1)
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}{flat.double().sum().item():.10e}".encode())
        digest.update(flat[:4096].to("cpu", torch.float32).numpy().tobytes())
    return description + "#" + digest.hexdigest()[:16]


def cache_folder(root: str | Path, identity: str, blocks_digest: str, top_k: int) -> Path:
    key = hashlib.sha256(json.dumps([FORMAT_VERSION, identity, blocks_digest, top_k]).encode()).hexdigest()[:20]
    return Path(root).expanduser() / f"top{top_k}-{key}"


@dataclass
class TeacherCache:
    """The cached top-k logits of one teacher over one set of training blocks."""

    folder: Path
    values: np.ndarray       # (blocks, seq_len - 1, k) float16, memory-mapped
    indices: np.ndarray      # (blocks, seq_len - 1, k) int32, memory-mapped

    @property
    def top_k(self) -> int:
        return int(self.values.shape[-1])

    @property
    def nbytes(self) -> int:
        return int(self.values.nbytes + self.indices.nbytes)

    def lookup(self, block_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The teacher's top-k logits and token ids for the blocks ``block_index`` ``(batch,)``: two
        ``(batch, seq_len - 1, k)`` tensors (float16, int64) read from the memory map."""
        rows = block_index.detach().cpu().numpy()
        values = torch.from_numpy(np.ascontiguousarray(self.values[rows]))
        indices = torch.from_numpy(self.indices[rows].astype(np.int64))
        return values, indices


def open_cache(folder: str | Path) -> TeacherCache:
    """Open a finished cache folder read-only (no pickle: plain arrays only)."""
    folder = Path(folder)
    values = np.load(folder / VALUES_FILE, mmap_mode="r", allow_pickle=False)
    indices = np.load(folder / INDICES_FILE, mmap_mode="r", allow_pickle=False)
    return TeacherCache(folder=folder, values=values, indices=indices)


def is_finished(folder: Path, blocks_digest: str, top_k: int) -> bool:
    try:
        record = json.loads((folder / CACHE_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and record.get("blocks_fingerprint") == blocks_digest and \
        record.get("top_k") == top_k and record.get("format") == FORMAT_VERSION


@torch.no_grad()
def write_cache(teacher: torch.nn.Module, blocks: torch.Tensor, top_k: int, folder: Path, record: dict,
                batch_size: int, device="cpu", autocast=None, progress: bool = True) -> None:
    """Run ``teacher`` once over ``blocks`` ``(n, seq_len)`` and write its top-k logits to ``folder`` (aside, then
    renamed).

    Args:
        autocast: ``() -> context manager`` the teacher's forward runs under (accelerate's mixed precision).
    """
    from tqdm.auto import tqdm

    count, seq_len = blocks.shape
    vocab = teacher.get_output_embeddings().weight.shape[0]
    if not 0 < top_k <= vocab:
        raise DepthpruneError(f"--top-k {top_k} must be between 1 and the vocabulary size {vocab}")
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        shape = (count, seq_len - 1, top_k)
        values = np.lib.format.open_memmap(tmp / VALUES_FILE, mode="w+", dtype=np.float16, shape=shape)
        indices = np.lib.format.open_memmap(tmp / INDICES_FILE, mode="w+", dtype=np.int32, shape=shape)
        teacher.eval()
        for start in tqdm(range(0, count, batch_size), desc=f"teacher top-{top_k} logits", unit="batch",
                          disable=not progress):
            batch = blocks[start:start + batch_size].to(device)
            with autocast() if autocast is not None else nullcontext():
                logits = teacher(input_ids=batch).logits[:, :-1]          # (batch, seq_len - 1, vocab)
            top = logits.float().topk(top_k, dim=-1)
            top_values = top.values.to(torch.float16)
            if not torch.isfinite(top_values).all():
                raise DepthpruneError("the teacher's logits exceed float16's range (65,504); use --top-k 0 "
                                      "(the teacher on the fly, in full precision)")
            values[start:start + len(batch)] = top_values.cpu().numpy()
            indices[start:start + len(batch)] = top.indices.to(torch.int32).cpu().numpy()
        values.flush()
        indices.flush()
        del values, indices
        (tmp / CACHE_FILE).write_text(json.dumps(record, indent=2))
        if folder.exists():            # another run finished the same cache meanwhile: theirs is as good
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def ensure_cache(teacher_source, load_teacher, blocks: torch.Tensor, top_k: int, root: str | Path | None,
                 blocks_digest: str, accelerator, batch_size: int, progress: bool = True) -> tuple[TeacherCache, dict]:
    """The cache of this teacher's top-k logits over ``blocks``: read when it exists, else made once (on the main
    process; the teacher is loaded for it and freed after).

    Args:
        teacher_source: a path, alias or hub id, or a LoadedModel already in memory.
        load_teacher: ``() -> nn.Module``, called only when the cache has to be made.
        root: the folder holding caches (None: ``$DEPTHPRUNE_CACHE/teacher-topk``).

    Returns:
        The open cache, and its record for depthprune.json (folder, k, bytes, whether this run made it, seconds).
    """
    from ..loading import LoadedModel

    if isinstance(teacher_source, LoadedModel):
        identity = model_identity(teacher_source.description, teacher_source.model)
    else:
        identity = source_identity(str(teacher_source))
    folder = cache_folder(root if root is not None else default_cache_root(), identity, blocks_digest, top_k)
    started, made = time.perf_counter(), False
    if accelerator.is_main_process and not is_finished(folder, blocks_digest, top_k):
        teacher = load_teacher()
        record = {"format": FORMAT_VERSION, "teacher": identity, "top_k": top_k, "blocks": int(blocks.shape[0]),
                  "seq_len": int(blocks.shape[1]), "blocks_fingerprint": blocks_digest,
                  "bytes_per_token": bytes_per_token(top_k)}
        teacher.to(accelerator.device)
        write_cache(teacher, blocks, top_k, folder, record, batch_size, accelerator.device,
                    accelerator.autocast, progress)
        del teacher
        made = True
    accelerator.wait_for_everyone()
    cache = open_cache(folder)
    if cache.values.shape[:2] != (blocks.shape[0], blocks.shape[1] - 1) or cache.top_k != top_k:
        raise DepthpruneError(f"the teacher cache {folder} does not fit these blocks; delete it and run again")
    info = {"folder": str(folder), "top_k": top_k, "bytes": cache.nbytes, "bytes_per_token": bytes_per_token(top_k),
            "made_by_this_run": made, "seconds": round(time.perf_counter() - started, 2)}
    return cache, info
