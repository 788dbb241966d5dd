"""The quality gate of ``depthprune prune``: as many layers as keep quality within a bound, instead of a guessed n.

``--max-ppl-ratio R`` removes, in the chosen criterion's order, as many layers as keep the calibration perplexity
within ``R`` x the dense model's (after compensation when ``--compensate`` is given). The counts are tried upwards
from 1 and the search stops at the first count that breaks the bound, so the chosen n is the largest count whose
every smaller count also passes (a criterion whose sets are not nested, angular's best block, is still searched in
this order). ``--target-params P`` removes the fewest layers that bring the parameter count to ``P`` or below;
with both, that count must also pass the perplexity bound. The plan records every step.

The calibration perplexity is measured on the calibration blocks, the same tokens compensation is fitted on
(in-sample): evaluate on held-out text (``depthprune eval``) for the figure you report.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Callable

import torch

from .errors import DepthpruneError


@torch.no_grad()
def calibration_perplexity(model, batches: list, desc: str = "calibration perplexity", rows: int = 2,
                           show_progress: bool = True) -> float:
    """Token perplexity of ``model`` on ``[(ids, mask), ...]``: next-token NLL over pairs of real tokens.

    Args:
        rows: samples per forward (the float32 logits of one are ``seq_len x vocab``).
    """
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    total, count = 0.0, 0
    chunks = [(ids[i:i + rows], mask[i:i + rows]) for ids, mask in batches for i in range(0, ids.shape[0], rows)]
    for ids, mask in tqdm(chunks, desc=desc, unit="batch", disable=not show_progress):
        ids, mask = ids.to(device), mask.to(device)
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits      # (rows, seq, vocab)
        losses = torch.nn.functional.cross_entropy(logits[:, :-1].float().transpose(1, 2), ids[:, 1:],
                                                   reduction="none")                     # (rows, seq - 1)
        valid = (mask[:, 1:] > 0) & (mask[:, :-1] > 0)
        total += float(losses[valid].sum())
        count += int(valid.sum())
    mean = total / max(count, 1)
    return math.exp(mean) if mean < 700 else math.inf


@dataclass
class GateStep:
    """One count tried by the search."""

    n: int
    removed_layers: list[int]
    parameters: int
    ppl: float | None = None
    ratio: float | None = None
    passed: bool | None = None


def search_max_count(perplexity_at: Callable[[int], float], dense_ppl: float, max_ratio: float, max_n: int,
                     removed_at: Callable[[int], list[int]], parameters_at: Callable[[int], int]
                     ) -> tuple[int, list[GateStep]]:
    """The largest n in 1..max_n such that every count up to n keeps ``perplexity_at(k) <= max_ratio * dense``.

    Counts are tried upwards and the search stops at the first that fails. Returns ``(n, steps)``; n = 0 when even
    one layer breaks the bound.
    """
    chosen, steps = 0, []
    for n in range(1, max_n + 1):
        ppl = perplexity_at(n)
        ratio = ppl / dense_ppl
        step = GateStep(n=n, removed_layers=removed_at(n), parameters=parameters_at(n), ppl=ppl, ratio=ratio,
                        passed=bool(ratio <= max_ratio))
        steps.append(step)
        if not step.passed:
            break
        chosen = n
    return chosen, steps


def smallest_count_for_params(target: int, max_n: int, parameters_at: Callable[[int], int]) -> int:
    """The fewest layers (1..max_n) whose removal leaves at most ``target`` parameters, or refuse."""
    for n in range(1, max_n + 1):
        if parameters_at(n) <= target:
            return n
    raise DepthpruneError(f"--target-params {target:,}: removing {max_n} layers still leaves {parameters_at(max_n):,} "
                          "parameters (the embedding and head stay); raise the target")


_SUFFIX = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9}


def parse_param_count(text) -> int:
    """``"100M"``, ``"1.2B"``, ``"90000000"`` -> a parameter count."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kKmMbBgG]?)\s*", str(text))
        if not match:
            raise DepthpruneError(f"--target-params {text!r}: write a parameter count such as 100M, 1.2B or 90000000")
        value = int(float(match.group(1)) * _SUFFIX[match.group(2).lower()])
    if value < 1:
        raise DepthpruneError(f"--target-params must be positive (got {text!r})")
    return value


def layer_parameter_counts(model) -> tuple[int, list[int]]:
    """``(total parameters, parameters of each decoder layer)``; tied weights counted once."""
    from .adapter import ModelAdapter

    total = sum(p.numel() for p in model.parameters())
    return total, [sum(p.numel() for p in layer.parameters()) for layer in ModelAdapter(model).layers]


def gate_settings(steps: list[GateStep], chosen: int, max_ppl_ratio, target_params, dense_ppl, compensate) -> dict:
    """What the plan records about the search."""
    return {"max_ppl_ratio": max_ppl_ratio, "target_params": target_params, "dense_calibration_ppl": dense_ppl,
            "compensate": compensate, "chosen_n": chosen, "steps": [asdict(step) for step in steps]}


def run_gate(model, select: Callable[[int], list[int]], input_ids: torch.Tensor | None, max_ppl_ratio=None,
             target_params=None, compensate: str = "none", batch_size: int = 8, show_progress: bool = True,
             **allow) -> tuple[int, dict]:
    """Choose the count for ``prune --max-ppl-ratio`` / ``--target-params``; returns ``(n, settings for the plan)``.

    Args:
        model: the dense model (left unchanged: every count is tried on a copy).
        select: the layers the criterion removes for a count (raises DepthpruneError past what it can choose).
        input_ids: calibration blocks (needed with ``max_ppl_ratio``).
        compensate: the compensation applied to every candidate before it is measured.
    """
    import copy

    from .adapter import ModelAdapter
    from .compensate import NONE
    from .compensate import compensate as fold_compensation
    from .compensate.base import split_batches
    from .plan import PrunePlan
    from .prune import apply_plan

    num_layers = ModelAdapter(model).num_layers
    total, per_layer = layer_parameter_counts(model)
    removals: dict[int, list[int]] = {}
    for n in range(1, num_layers):
        try:
            removals[n] = select(n)
        except DepthpruneError:
            break           # the criterion (or the layers it may not remove) cannot go further
    if not removals:
        raise DepthpruneError("the criterion cannot choose even one layer to remove here; check --keep-edges and "
                              "--allow-final-layer")
    max_n = max(removals)

    def parameters_at(n: int) -> int:
        return total - sum(per_layer[i] for i in removals[n])

    batches = split_batches(input_ids, None, batch_size) if max_ppl_ratio is not None else None

    def perplexity_at(n: int) -> float:
        candidate = copy.deepcopy(model)
        plan = PrunePlan(num_layers=num_layers, removed_layers=removals[n], method="quality gate")
        if compensate != NONE:
            fold_compensation(candidate, plan, compensate, input_ids, batch_size=batch_size, measure=False,
                              show_progress=False, **allow)
        else:
            apply_plan(candidate, plan, **allow)
        return calibration_perplexity(candidate, batches, desc=f"quality gate: {n} removed",
                                      show_progress=show_progress)

    dense = calibration_perplexity(model, batches, desc="quality gate: dense",
                                   show_progress=show_progress) if batches else None
    if target_params is not None:
        chosen = smallest_count_for_params(target_params, max_n, parameters_at)
        step = GateStep(n=chosen, removed_layers=removals[chosen], parameters=parameters_at(chosen))
        if max_ppl_ratio is not None:
            step.ppl = perplexity_at(chosen)
            step.ratio = step.ppl / dense
            step.passed = bool(step.ratio <= max_ppl_ratio)
            if not step.passed:
                raise DepthpruneError(f"reaching --target-params {target_params:,} needs {chosen} layers removed, "
                                      f"which gives calibration perplexity {step.ratio:.3g}x dense, above "
                                      f"--max-ppl-ratio {max_ppl_ratio}; raise one of them")
        steps = [step]
    else:
        chosen, steps = search_max_count(perplexity_at, dense, max_ppl_ratio, max_n, removals.__getitem__,
                                         parameters_at)
        if chosen == 0:
            raise DepthpruneError(f"removing even one layer ({removals[1]}) gives calibration perplexity "
                                  f"{steps[0].ratio:.3g}x dense, above --max-ppl-ratio {max_ppl_ratio}; raise it")
    return chosen, gate_settings(steps, chosen, max_ppl_ratio, target_params, dense, compensate)


def check_gate_options(layers, method, n, ratio, data, compensate, max_ppl_ratio, target_params,
                       dry_run: bool) -> bool:
    """Refuse combinations of ``--compensate``, ``--max-ppl-ratio`` and ``--target-params`` before any work.

    Returns:
        Whether the count is chosen by the gate (``--max-ppl-ratio`` or ``--target-params``).
    """
    from .compensate import COMPENSATIONS, NONE

    COMPENSATIONS.get(compensate)
    gated = max_ppl_ratio is not None or target_params is not None
    gate_flags = " and ".join(flag for flag, value in (("--max-ppl-ratio", max_ppl_ratio),
                                                       ("--target-params", target_params)) if value is not None)
    if compensate != NONE and data is None:
        raise DepthpruneError(f"--compensate {compensate} is calibrated on data; pass --data SPEC (e.g. builtin or a "
                              ".jsonl file) or drop --compensate")
    if gated and layers is not None:
        raise DepthpruneError(f"{gate_flags} choose the count in a criterion's order; use --method, not --layers")
    if gated and (n is not None or ratio is not None):
        raise DepthpruneError(f"{gate_flags} choose the count; drop --n/--ratio")
    if gated and method is not None:
        from .selection import check_method

        if check_method(method).count_option is not None:
            raise DepthpruneError(f"{gate_flags} with --method {method}: its removal order is scored for one --n "
                                  "(SLEB's order); give --n, or use another criterion")
    if max_ppl_ratio is not None:
        if not max_ppl_ratio > 0:     # below 1 asks the pruned model to beat the dense one: allowed, rarely met
            raise DepthpruneError(f"--max-ppl-ratio must be positive, a multiple of the dense perplexity (got "
                                  f"{max_ppl_ratio})")
        if data is None:
            raise DepthpruneError("--max-ppl-ratio measures calibration perplexity; pass --data SPEC")
    if target_params is not None:
        parse_param_count(target_params)
    if compensate != NONE and dry_run and max_ppl_ratio is None:
        raise DepthpruneError(f"--compensate {compensate} would be ignored with --dry-run (nothing is written and "
                              "no count is searched); drop it")
    return gated
