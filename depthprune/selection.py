"""Turn layer scores into the layers to remove: the best block, the k least important, a removal order, last n.

A criterion's registry entry names which of these :data:`SELECTIONS` its scores go through. Every function works on
plain lists (a ``scores.json`` is enough); none needs the model.
"""

from __future__ import annotations

import math
from typing import Sequence

from .errors import DepthpruneError

# How a criterion's scores become the layers to remove (the ``selection`` of its registry entry).
SELECTIONS = {
    "block": "the contiguous block of n layers with the lowest score (Gromov et al.'s angular distance)",
    "lowest": "the n layers with the lowest scores",
    "order": "the first n layers of an iterative removal order (SLEB)",
    "chop": "by position alone, layers L-n-1 .. L-2 (no scores)",
}


def check_method(method: str, option: str = "--method"):
    """The registry entry of a selection method; an unknown name is an error naming the valid ones and the closest."""
    from .scoring import CRITERIA

    return CRITERIA.get(method, option=option)


def resolve_count(num_layers: int, n: int | None = None, ratio: float | None = None) -> int:
    """The number of layers to remove from ``--n`` or ``--ratio`` (exactly one of them)."""
    if (n is None) == (ratio is None):
        raise DepthpruneError("give exactly one of --n (layers to remove) and --ratio (fraction of layers)")
    if ratio is not None:
        if not 0 < ratio < 1:
            raise DepthpruneError(f"--ratio must be between 0 and 1 (got {ratio})")
        n = round(ratio * num_layers)
        if n < 1:
            raise DepthpruneError(f"--ratio {ratio} of {num_layers} layers removes none; raise it or give --n")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise DepthpruneError(f"--n must be a positive whole number (got {n!r})")
    if n >= num_layers:
        raise DepthpruneError(f"cannot remove {n} of {num_layers} layers; --n must be below {num_layers}")
    return n


_NAN_ADVICE = ("a layer produced non-finite activations: re-score in float32 (--dtype float32) and check the model "
               "and the data")


def _not_a_number(value) -> bool:
    """NaN, or a missing value (``null`` in a scores file): neither can be ranked."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def _listed(items: Sequence[str], limit: int = 6) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def check_scores_are_numbers(method: str, values: Sequence, unit: str = "layer") -> None:
    """Refuse scores holding NaN or None: NaN compares False with everything, so a ranking would pick silently.

    Args:
        method: the criterion's name, for the message.
        values: one score per ``unit`` (index 0 = layer 0, or round 1 for SLEB's losses).
        unit: ``layer`` or ``round`` (1-based, for SLEB's per-round losses).
    """
    bad = [i for i, value in enumerate(values) if _not_a_number(value)]
    if bad:
        first = 1 if unit == "round" else 0
        raise DepthpruneError(f"the {method} scores are NaN for {unit} {_listed([str(i + first) for i in bad])}; "
                              f"{_NAN_ADVICE}")


def check_block_table_is_numbers(table: dict, name: str = "block") -> None:
    """Refuse a block table holding NaN or None anywhere, naming the blocks (block size n, start layer l)."""
    bad = [f"n={n}, l={l}" for n, row in sorted(table.items(), key=lambda item: int(item[0]))
           for l, value in enumerate(row) if _not_a_number(value)]
    if bad:
        raise DepthpruneError(f"the {name} scores are NaN for blocks {_listed(bad)} (block size n, start layer l); "
                              f"{_NAN_ADVICE}")


def _candidates(num_layers: int, protected: Sequence[int], allow_final_layer: bool,
                allow_first_layer: bool = False) -> list[int]:
    """Layers a criterion may pick: never the first or the final layer unless allowed (like --allow-final-layer)."""
    blocked = set(protected) | (set() if allow_final_layer else {num_layers - 1}) | \
        (set() if allow_first_layer else {0})
    return [i for i in range(num_layers) if i not in blocked]


def best_block(table: dict, n: int, num_layers: int, protected: Sequence[int] = (),
               allow_final_layer: bool = False, allow_first_layer: bool = False,
               name: str = "block") -> tuple[int, float]:
    """``argmin_l d(l, n)`` over blocks that avoid protected layers (and the first/final layer unless allowed).

    Args:
        table: ``{n: [d(0, n), ..., d(L - n, n)]}`` (keys may be strings, as in ``scores.json``).
        name: the criterion, for messages.

    Returns:
        ``(start, distance)``: removing layers ``start .. start + n - 1``. Ties go to the earliest block.
    """
    check_block_table_is_numbers(table, name)
    row = table.get(n, table.get(str(n)))
    if row is None:
        raise DepthpruneError(f"the {name} table has no block size {n} (sizes 1..{num_layers - 1}); "
                              f"--n must be below {num_layers}")
    allowed = set(_candidates(num_layers, protected, allow_final_layer, allow_first_layer))
    starts = [l for l in range(len(row)) if all(i in allowed for i in range(l, l + n))]
    if not starts:
        raise DepthpruneError(f"no block of {n} layers avoids the protected layers {sorted(protected)} and the first "
                              "and final layer; lower --n or turn the keep-set off (--no-keep-edges)")
    start = min(starts, key=lambda l: (row[l], l))
    return start, float(row[start])


def least_important(values: Sequence[float], n: int, protected: Sequence[int] = (),
                    allow_final_layer: bool = False, allow_first_layer: bool = False) -> list[int]:
    """The ``n`` candidate layers with the lowest score (ties to the lower index), sorted."""
    check_scores_are_numbers("layer", values)
    candidates = _candidates(len(values), protected, allow_final_layer, allow_first_layer)
    if n > len(candidates):
        raise DepthpruneError(f"cannot remove {n} layers: only {len(candidates)} of {len(values)} are candidates "
                              f"(protected: {sorted(protected)}, and the first and final layer unless "
                              "--allow-first-layer/--allow-final-layer); lower --n or turn the keep-set off")
    return sorted(sorted(candidates, key=lambda i: (values[i], i))[:n])


def last_n(num_layers: int, n: int) -> list[int]:
    """Gromov's heuristic (LayerChop's chop): layers ``L-n-1 .. L-2``, keeping the final layer."""
    if n >= num_layers - 1:
        raise DepthpruneError(f"'last' keeps the first and final layer, so it removes at most {num_layers - 2} of "
                              f"{num_layers} layers (asked for {n})")
    return list(range(num_layers - n - 1, num_layers - 1))


def select_layers(method: str, scores: dict, n: int, allow_final_layer: bool = False,
                  allow_first_layer: bool = False) -> tuple[list[int], dict]:
    """Layers to remove by ``method`` from a scores dict (the content of ``scores.json``).

    Returns:
        ``(removed_layers, evidence)``: the evidence holds the numbers that decided, for the plan.
    """
    from .scoring import CRITERIA

    entry = check_method(method)
    num_layers = int(scores["num_layers"])
    allow = {"allow_final_layer": allow_final_layer, "allow_first_layer": allow_first_layer}
    if entry.selection == "chop":
        return last_n(num_layers, n), {}
    if method not in scores:
        raise DepthpruneError(f"the scores hold no {method!r} criterion (they have "
                              f"{', '.join(k for k in CRITERIA.names() if k in scores) or 'none'}); re-score with "
                              f"--metrics {method}")
    protected = scores.get("protected", {}).get(method, [])
    evidence = {key: scores.get(key) for key in entry.evidence_keys}
    if entry.selection == "block":
        start, score = best_block(scores[method], n, num_layers, protected, name=method, **allow)
        row = scores[method].get(str(n), scores[method].get(n))
        return list(range(start, start + n)), {f"{method}_block_start": start, f"{method}_block_score": score,
                                               f"{method}_n{n}": row, **evidence}
    if entry.selection == "order":
        return _first_of_order(entry, scores, n, num_layers, allow_final_layer), \
            {f"{method}_order": list(scores[method]), **evidence}
    values = scores[method]
    if len(values) != num_layers:
        raise DepthpruneError(f"scores[{method!r}] has {len(values)} values for {num_layers} layers; the scores file "
                              "is damaged — re-score")
    check_scores_are_numbers(method, values)
    removed = least_important(values, n, protected, **allow)
    return removed, {method: values, "protected": protected, **evidence}


def _first_of_order(entry, scores: dict, n: int, num_layers: int, allow_final_layer: bool) -> list[int]:
    """The first ``n`` layers of an ``order`` criterion's removal order, checked; sorted."""
    method = entry.name
    order = list(scores[method])
    for key in entry.evidence_keys:         # an order's companions hold one number per round
        if isinstance(scores.get(key), list):
            check_scores_are_numbers(method, scores[key], unit="round")
    if not all(isinstance(layer, int) and not isinstance(layer, bool) for layer in order):
        raise DepthpruneError(f"the {method} removal order {order} holds entries that are not layer numbers; the "
                              "scores file is damaged — re-score")
    if n > len(order):
        more = f"--{entry.count_option.replace('_', '-')} {n} or more" if entry.count_option else "a longer order"
        raise DepthpruneError(f"the scores hold a {method} removal order of {len(order)} layers but {n} were asked "
                              f"for; re-score with {more}")
    removed = sorted(order[:n])
    if (num_layers - 1) in removed and not allow_final_layer:
        raise DepthpruneError(f"the {method} order removes the final layer; pass --allow-final-layer if you mean it")
    return removed
