"""Last-n chop (Gromov et al.'s heuristic; LayerChop, arXiv 2305.14864): remove layers L-n-1 .. L-2.

A selection by position alone: no scores and no data. LayerChop does not pin which layers its chop removes; this
keeps the final layer, as Gromov et al.'s heuristic does (see :func:`depthprune.selection.last_n`).
"""

from __future__ import annotations

from .base import Criterion, register

CRITERION = register(Criterion(
    name="last", selection="chop", needs_data=False,
    description="layers L-n-1 .. L-2, keeping the final layer (Gromov et al.'s heuristic, LayerChop); no scores"))
