"""Turn layer scores into the layers to remove: best angular block, k least important, SLEB's order, last n.

Every function works on plain lists (a ``scores.json`` is enough); none needs the model.
"""

from __future__ import annotations

import math
from typing import Sequence

from .errors import DepthpruneError

METHODS = ("angular", "bi", "ppl", "taylor", "magnitude", "sleb", "last")


def check_method(method: str) -> None:
    """Refuse an unknown selection method, naming the valid ones and the closest."""
    if method not in METHODS:
        import difflib

        close = difflib.get_close_matches(method, METHODS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise DepthpruneError(f"unknown method {method!r}; valid methods: {', '.join(METHODS)}{hint}")


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


def check_angular_table_is_numbers(table: dict) -> None:
    """Refuse an angular table holding NaN or None anywhere, naming the blocks (block size n, start layer l)."""
    bad = [f"n={n}, l={l}" for n, row in sorted(table.items(), key=lambda item: int(item[0]))
           for l, value in enumerate(row) if _not_a_number(value)]
    if bad:
        raise DepthpruneError(f"the angular scores are NaN for blocks {_listed(bad)} (block size n, start layer l); "
                              f"{_NAN_ADVICE}")


def _candidates(num_layers: int, protected: Sequence[int], allow_final_layer: bool,
                allow_first_layer: bool = False) -> list[int]:
    """Layers a criterion may pick: never the first or the final layer unless allowed (like --allow-final-layer)."""
    blocked = set(protected) | (set() if allow_final_layer else {num_layers - 1}) | \
        (set() if allow_first_layer else {0})
    return [i for i in range(num_layers) if i not in blocked]


def best_block(table: dict, n: int, num_layers: int, protected: Sequence[int] = (),
               allow_final_layer: bool = False, allow_first_layer: bool = False) -> tuple[int, float]:
    """``argmin_l d(l, n)`` over blocks that avoid protected layers (and the first/final layer unless allowed).

    Args:
        table: ``{n: [d(0, n), ..., d(L - n, n)]}`` (keys may be strings, as in ``scores.json``).

    Returns:
        ``(start, distance)``: removing layers ``start .. start + n - 1``. Ties go to the earliest block.
    """
    check_angular_table_is_numbers(table)
    row = table.get(n, table.get(str(n)))
    if row is None:
        raise DepthpruneError(f"the angular table has no block size {n} (sizes 1..{num_layers - 1}); "
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
    check_method(method)
    num_layers = int(scores["num_layers"])
    if method == "last":
        return last_n(num_layers, n), {}
    if method not in scores:
        raise DepthpruneError(f"the scores hold no {method!r} criterion (they have "
                              f"{', '.join(k for k in METHODS if k in scores) or 'none'}); re-score with "
                              f"--metrics {method}")
    protected = scores.get("protected", {}).get(method, [])
    if method == "angular":
        start, distance = best_block(scores["angular"], n, num_layers, protected, allow_final_layer,
                                     allow_first_layer)
        removed = list(range(start, start + n))
        row = scores["angular"].get(str(n), scores["angular"].get(n))
        return removed, {"angular_block_start": start, "angular_distance": distance, f"angular_n{n}": row,
                         "angular_tokens": scores.get("angular_tokens")}
    if method == "sleb":
        order = list(scores["sleb"])
        check_scores_are_numbers("sleb", scores.get("sleb_ppl") or [], unit="round")
        if not all(isinstance(layer, int) and not isinstance(layer, bool) for layer in order):
            raise DepthpruneError(f"the SLEB removal order {order} holds entries that are not layer numbers; the "
                                  "scores file is damaged — re-score")
        if n > len(order):
            raise DepthpruneError(f"the scores hold a SLEB removal order of {len(order)} layers but {n} were asked "
                                  f"for; re-score with --sleb-n {n} or more")
        removed = sorted(order[:n])
        if (num_layers - 1) in removed and not allow_final_layer:
            raise DepthpruneError("the SLEB order removes the final layer; pass --allow-final-layer if you mean it")
        return removed, {"sleb_order": order, "sleb_ppl": scores.get("sleb_ppl")}
    values = scores[method]
    if len(values) != num_layers:
        raise DepthpruneError(f"scores[{method!r}] has {len(values)} values for {num_layers} layers; the scores file "
                              "is damaged — re-score")
    check_scores_are_numbers(method, values)
    removed = least_important(values, n, protected, allow_final_layer, allow_first_layer)
    return removed, {method: values, "protected": protected}
