"""Pruning at the file level: the kept layers' tensors are copied, renumbered, without building the model.

- :mod:`.checkpoint`: safetensors checkpoint folders (single file or shards with an index), config.json fixed by the
  same architecture-table logic as in-memory surgery, peak memory about one header.
- :mod:`.gguf_files`: GGUF files, ``blk.N.*`` byte-copied with their quantisation types, per-layer metadata arrays
  filtered by the kept indices.
- :mod:`.export`: a changed model (healed, collapsed, compensated) written back as GGUF next to its GGUF source.
- :mod:`.route`: which of these ``prune`` uses, or the in-memory path.
"""

from .route import SURGERY_CHOICES, FORMAT_CHOICES, choose_route, gguf_source, open_for_route, write_route

__all__ = ["FORMAT_CHOICES", "SURGERY_CHOICES", "choose_route", "gguf_source", "open_for_route", "write_route"]
