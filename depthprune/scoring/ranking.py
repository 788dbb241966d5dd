"""Layers ranked by each criterion in a scores dict: the printed table, the ranking plot and the report's lists.

Works on plain dicts (a ``scores.json`` is enough) and reads from each criterion's entry only how its scores become
a ranking (its ``selection``): one score per layer (``lowest``), blocks of one layer ``d(l, 1)`` (``block``), or the
position in a removal order (``order``).
"""

from __future__ import annotations

import math

from .base import CRITERIA, Criterion


def ranks(values: list[float]) -> list[int]:
    """Rank of each value, 1 = lowest (removed first); ties go to the lower index."""
    order = sorted(range(len(values)), key=lambda i: (values[i], i))
    result = [0] * len(values)
    for rank, index in enumerate(order, start=1):
        result[index] = rank
    return result


def criteria_in(scores: dict) -> list[Criterion]:
    """The registered criteria whose scores ``scores`` holds, in registration order."""
    return [entry for entry in CRITERIA if entry.scored and entry.name in scores]


def layer_scores(entry: Criterion, scores: dict) -> list[float] | None:
    """One number per layer that ranks the layers (low = removed first), or None for a removal order."""
    num_layers = int(scores["num_layers"])
    if entry.selection == "lowest":
        return list(scores[entry.name])
    if entry.selection == "block":
        return list(scores[entry.name]["1"])[:num_layers]      # blocks of one layer: d(l, 1)
    return None


def order_positions(entry: Criterion, scores: dict) -> dict[int, int]:
    """``{layer: 1-based position}`` in an ``order`` criterion's removal order."""
    return {layer: i + 1 for i, layer in enumerate(scores[entry.name])}


def column_label(entry: Criterion) -> str:
    return {"block": f"{entry.name}(n=1)", "order": f"{entry.name} order"}.get(entry.selection, entry.name)


def removal_ranks(scores: dict) -> dict[str, list[float]]:
    """``{label: [rank of layer 0, ...]}`` for every criterion in ``scores`` (NaN: a layer an order never reaches)."""
    num_layers = int(scores["num_layers"])
    result = {}
    for entry in criteria_in(scores):
        values = layer_scores(entry, scores)
        if values is not None:
            result[column_label(entry)] = ranks(values)
        else:
            positions = order_positions(entry, scores)
            result[column_label(entry)] = [positions.get(layer, math.nan) for layer in range(num_layers)]
    return result


def least_important_first(entry: Criterion, scores: dict) -> list[int]:
    """The layers in the order the criterion would remove them (a removal order as it is; missing values left out)."""
    values = layer_scores(entry, scores)
    if values is None:
        return list(scores[entry.name])
    return sorted((i for i, v in enumerate(values) if v is not None), key=lambda i: (values[i], i))


def ranking_table(scores: dict) -> str:
    """A per-layer table of every criterion in ``scores`` with each layer's rank (1 = removed first)."""
    num_layers = int(scores["num_layers"])
    entries = criteria_in(scores)
    ranked = [(e, layer_scores(e, scores)) for e in entries if layer_scores(e, scores) is not None]
    orders = [(e, order_positions(e, scores)) for e in entries if layer_scores(e, scores) is None]
    rank_of = {e.name: ranks(values) for e, values in ranked}
    header = ["layer"] + [f"{column_label(e)} (rank)" for e, _ in ranked] + [column_label(e) for e, _ in orders]
    rows = []
    for layer in range(num_layers):
        rows.append([str(layer)] + [f"{values[layer]:.4g} ({rank_of[e.name][layer]})" for e, values in ranked]
                    + [str(positions.get(layer, "-")) for _, positions in orders])
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(r, widths)) for r in [header] + rows]
    notes = ["rank 1 = least important (removed first)"]
    notes += [f"{column_label(e)} = blocks of one layer" for e, _ in ranked if e.selection == "block"]
    notes += [f"{key} {scores[key]:.4g}" for e in entries for key in e.evidence_keys   # e.g. ppl's dense_ppl
              if isinstance(scores.get(key), (int, float))]
    return "\n".join(lines + ["; ".join(notes)])
