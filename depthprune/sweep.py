"""Quality against the fraction of layers removed, one curve per criterion: the papers' central figure.

Scores the model once with every criterion asked for, then for each method and each n removes the chosen layers
from a copy of the model, optionally heals it briefly, and evaluates it. Identical removal sets chosen by different
criteria are evaluated once.
"""

from __future__ import annotations

import copy
import io
import json
import logging
import math
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import DepthpruneError
from .metadata import SWEEP_FILE

logger = logging.getLogger(__name__)

PLOT_FILE = "sweep.png"
PROGRESS_FILE = "sweep.progress.json"   # present while a sweep is unfinished


def parse_range(text: str | int | list) -> list[int]:
    """``"0:15"`` -> 0..15 inclusive; ``"0:12:4"`` -> 0, 4, 8, 12; ``"2,4,8"`` -> those; an int -> [int]."""
    if isinstance(text, int):
        return [text]
    if isinstance(text, (list, tuple)):
        return [int(v) for v in text]
    text = str(text).strip()
    match = re.fullmatch(r"(\d+):(\d+)(?::(\d+))?", text)
    if match:
        start, end, step = int(match.group(1)), int(match.group(2)), int(match.group(3) or 1)
        if end < start or step < 1:
            raise DepthpruneError(f"--n {text!r}: write START:END[:STEP] with END >= START, e.g. 0:15")
        return list(range(start, end + 1, step))
    try:
        return sorted({int(v) for v in text.split(",")})
    except ValueError:
        raise DepthpruneError(f"--n {text!r}: write a range START:END[:STEP] (inclusive) or a list 2,4,8") from None


def _split(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return [v.strip() for v in str(value).split(",") if v.strip()]


def _metric_values(results: dict) -> dict:
    """Flatten evaluation results into ``{"wikitext2_ppl": .., "piqa_acc": ..}``."""
    values = {}
    for name, entry in (results.get("perplexity") or {}).items():
        if "ppl" in entry:
            values[f"{name}_ppl"] = entry["ppl"]
        else:   # several lengths
            for length, sub in entry.items():
                values[f"{name}_ppl@{length}"] = sub["ppl"]
    for task, entry in (results.get("tasks") or {}).items():
        for metric in ("acc", "acc_norm"):
            if entry.get(metric) is not None:
                values[f"{task}_{metric}"] = entry[metric]
    return values


# What a sweep point records about itself; every other key is a measured metric.
POINT_FIELDS = ("method", "n", "removed_layers", "fraction", "seconds")


def point_metrics(point: dict) -> list[str]:
    """The measured keys of a sweep point: its metrics, and ``heal_final_loss`` when the points were healed."""
    return [k for k in point if k not in POINT_FIELDS]


_SOURCE_NAMES = {"builtin": "CPython docs (builtin)", "wikitext2": "WikiText-2", "c4": "C4", "ptb": "PTB",
                 "pg19": "PG-19"}


def metric_title(metric: str, result: dict) -> str:
    """A human title for a sweep metric key: ``wikitext2_ppl`` -> "WikiText-2 perplexity (windows of 256 tokens...)"."""
    if metric.endswith("_ppl") or "_ppl@" in metric:
        source, _, length = metric.partition("_ppl")
        length = length.lstrip("@") or result.get("eval_seq_len")
        windows = f", first {result['max_windows']} windows" if result.get("max_windows") else ", all windows"
        return f"{_SOURCE_NAMES.get(source, source)} perplexity (windows of {length} tokens{windows})"
    task, measure = _task_and_measure(metric)
    limit = f", first {result['limit']} items" if result.get("limit") else ""
    return f"{task} {measure}{limit}"


def _task_and_measure(metric: str) -> tuple[str, str]:
    """``piqa_acc_norm`` -> ("piqa", "acc_norm")."""
    for measure in ("acc_norm", "acc"):
        if metric.endswith("_" + measure):
            return metric[:-len(measure) - 1], measure
    return metric, ""


def _compact_number(value: float) -> str:
    """Tick and marker labels: 20, 50, 200, 1.9e4."""
    if value >= 1e4 or value < 1e-2:
        mantissa, exponent = f"{value:.1e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    return f"{value:.0f}" if value >= 100 else f"{value:.3g}"


def sweep_plot(result: dict) -> bytes:
    """The PNG of :func:`sweep_figure`."""
    import matplotlib.pyplot as plt

    figure = sweep_figure(result)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return buffer.getvalue()


def sweep_figure(result: dict):
    """One panel per evaluated metric: value against layers removed, one line per method, the dense model dashed.

    Perplexity panels are log-scaled with ticks at 1-2-5 steps and capped at 100x the best value, so that a
    catastrophic criterion (the last-n chop reaches 1e9 on small models) does not flatten the others; capped points
    are drawn as triangles at the cap, labelled above it with their true value (the labels of one x stacked, so that
    they never print over each other or over a point). The legend sits beside the panel, where it cannot cover a curve.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    points = result["points"]
    metrics = [k for k in point_metrics(points[0]) if k != "heal_final_loss"]   # the title says healed
    columns = min(len(metrics), 2)
    rows = (len(metrics) + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(9.0 * columns, 4.8 * rows), squeeze=False)
    for axis, metric in zip(axes.flat, metrics):
        is_ppl = metric.endswith("_ppl") or "_ppl@" in metric
        values = [p[metric] for p in points if p.get(metric) is not None]
        cap = min(values) * 100 if is_ppl and values else None
        dense = next((p[metric] for p in points if p["n"] == 0 and p.get(metric) is not None), None)
        if dense is not None:
            axis.axhline(dense, color="0.35", linestyle="--", linewidth=1.2, label=f"dense ({_compact_number(dense)})")
        colours, capped_at_x = {}, {}     # x -> labels already stacked under the cap there
        for method in result["methods"]:
            line = sorted((p["n"], p[metric]) for p in points if p["method"] == method and p.get(metric) is not None
                          and p["n"] > 0)
            if not line:
                continue
            xs = [x for x, _ in line]
            ys = [min(y, cap) if cap else y for _, y in line]
            # a compensated curve (bi+linear) is drawn dashed in its criterion's colour
            base = method.split("+")[0]
            paired = {"linestyle": "--", "color": colours[base]} if "+" in method and base in colours else {}
            drawn = axis.plot(xs, ys, marker="o", label=method, **paired)[0]
            colours.setdefault(method, drawn.get_color())
            for x, y in line:
                if cap and y > cap:
                    axis.plot([x], [cap], linestyle="none", marker="^", markersize=10, color=drawn.get_color())
                    below = capped_at_x.get(x, 0)
                    capped_at_x[x] = below + 1
                    # above the triangles, where no point is drawn (every point is at or below the cap)
                    axis.annotate(_compact_number(y), (x, cap), xytext=(0, 7 + 9 * below), textcoords="offset points",
                                  ha="center", va="bottom", fontsize=7, color=drawn.get_color())
        if is_ppl:
            axis.set_yscale("log")
            if capped_at_x:     # room above the cap for the stacked true-value labels
                axis.set_ylim(top=cap * 10 ** (0.16 * (1 + max(capped_at_x.values()))))
            axis.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            # no tick labels above the cap: the points drawn there are not at their value
            top = cap * 1.0001 if capped_at_x else math.inf
            axis.yaxis.set_major_formatter(FuncFormatter(lambda value, _, top=top: _compact_number(value)
                                                         if value <= top else ""))
            axis.yaxis.set_minor_formatter(NullFormatter())
            axis.set_ylabel("perplexity (log scale; ▲ off the scale, true value above)")
        else:
            axis.set_ylabel(_task_and_measure(metric)[1] or metric)
        axis.set_xlabel(f"layers removed (of {result['num_layers']})")
        axis.xaxis.get_major_locator().set_params(integer=True)
        healed = f" — healed {result['heal']['steps']} steps" if result.get("heal") else ""
        axis.set_title(metric_title(metric, result) + healed, fontsize=10)
        axis.grid(alpha=0.3, which="major")
        axis.legend(fontsize=9, title="criterion", loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    for axis in list(axes.flat)[len(metrics):]:
        axis.set_visible(False)
    name = result.get("model_source") or Path(str(result["model"])).name
    figure.suptitle(f"{name}: quality against layers removed")
    figure.tight_layout()
    return figure


# A sweep distils every point from the dense model's top-k logits, computed once and read from the teacher cache
SWEEP_TEACHER_TOP_K = 64


def _sweep_teacher(heal_method: str, loaded) -> dict:
    """Distillation in a sweep: the dense model in memory is the teacher; its top-k logits over the healing blocks
    (the same for every point) are cached on the first point and read back by all the others."""
    from .heal import HEALING_METHODS

    if not HEALING_METHODS.get(heal_method).uses_teacher:
        return {}
    return {"teacher": loaded, "top_k": SWEEP_TEACHER_TOP_K}


def is_unfinished_sweep(folder) -> bool:
    """Whether ``folder`` holds a sweep that stopped before its last point (a re-run continues it)."""
    return (Path(folder) / PROGRESS_FILE).is_file()


def sweep_needs(model, methods="angular,bi,last,ppl", eval="wikitext2", data="builtin", data_dir=None,
                heal_steps: int = 0, heal_method: str = "lora", heal_data=None, scores=None, output=None,
                plots: bool = True, compensate: str = "none") -> list[tuple[str, str]]:
    """The optional packages ``sweep`` will need, as ``(module, purpose)`` pairs."""
    from .evaluate.perplexity import PPL_SOURCES
    from .extras import data_needs, model_needs

    from .selection import check_method

    needs = model_needs(model)
    if compensate != "none" or (scores is None and any(check_method(m, option="--methods").needs_data
                                                       for m in _split(methods))):
        needs += data_needs(data)
    if data_dir is None:
        needs += [("datasets", f"--eval {name} without --data-dir") for name in _split(eval) if name in PPL_SOURCES]
    if heal_steps:
        purpose = f"--heal-steps with --heal-method {heal_method}"
        needs += [("accelerate", purpose), ("matplotlib", f"{purpose} (the loss curve)")]
        from .heal import HEALING_METHODS

        needs += [(package, purpose) for package in HEALING_METHODS.get(heal_method).packages]
        needs += data_needs(heal_data or data, "--heal-data")
    if output is not None and plots:
        needs.append(("matplotlib", "sweep's plot (--no-plots skips it)"))
    return needs


def _model_identity(model) -> str:
    """What names the model in a sweep's settings, known before loading it (a path is made absolute)."""
    from .loading import LoadedModel

    if isinstance(model, LoadedModel):
        return model.description
    path = Path(str(model)).expanduser()
    return str(path.resolve()) if path.exists() else str(model)


def _settings_difference(saved: dict, wanted: dict) -> str:
    keys = [k for k in sorted(set(saved) | set(wanted)) if saved.get(k) != wanted.get(k)]
    return "; ".join(f"{k}: {json.dumps(saved.get(k))} then, {json.dumps(wanted.get(k))} now" for k in keys)


def _finished_points(out: Path, settings: dict, force: bool) -> list[dict] | None:
    """The points an unfinished sweep in ``out`` already holds (None: start a new sweep there).

    Refuses (without ``force``) a finished sweep, an unfinished one made with other settings (naming what differs),
    and a folder that is not a sweep.
    """
    if not out.exists():
        return None
    if not out.is_dir():
        raise DepthpruneError(f"output {out} exists and is not a folder; remove it or choose another --output")
    if force:
        return None
    if is_unfinished_sweep(out):
        try:
            state = json.loads((out / PROGRESS_FILE).read_text())
            saved, points = state["settings"], list(state["points"])
        except (OSError, ValueError, KeyError, TypeError):
            raise DepthpruneError(f"{out / PROGRESS_FILE} is damaged; pass --force to start the sweep over") from None
        if saved != settings:
            differences = _settings_difference(saved, settings)
            raise DepthpruneError(f"{out} holds an unfinished sweep with other options ({differences}); "
                                  "re-run with the same options to continue it, or pass --force to start over")
        return points
    if (out / SWEEP_FILE).is_file():
        raise DepthpruneError(f"{out} holds a finished sweep; choose another --output or pass --force to redo it")
    raise DepthpruneError(f"output {out} already exists and is not a sweep; choose another --output or pass --force "
                          "to replace it")


def sweep(model, methods="angular,bi,last,ppl", n="0:8", eval="wikitext2", data="builtin", samples: int = 16,
          seq_len: int = 256, seed: int = 0, text_field: str | None = None, chat_template: bool = False,
          eval_seq_len: int = 256, data_dir=None, max_windows: int | None = None,
          limit: int | None = None, heal_steps: int = 0, heal_method: str = "lora", heal_data=None,
          scores=None, output=None, force: bool = False, plots: bool = True, dtype="auto", device="cpu",
          trust_remote_code: bool = False, compensate: str = "none") -> dict:
    """Evaluate the model with n layers removed by each method, for every n (``depthprune sweep``).

    Every finished point is saved at once in ``OUTPUT/sweep.progress.json`` (with the scores in
    ``OUTPUT/scores.json``); run again with the same options, an interrupted sweep continues from its finished
    points. Every (method, n) is checked before the first is evaluated.

    Args:
        model: anything :func:`depthprune.load_model` accepts, or a LoadedModel.
        methods: registered criteria (angular, bi, ppl, taylor, magnitude, sleb, last, ...).
        n: layer counts, ``"0:15"`` (inclusive) or ``"2,4,8"``; 0 is the dense model.
        eval: what to measure: perplexity sources (wikitext2, ptb, c4) and/or tasks (piqa, arc_easy, ...).
        data, samples, seq_len, seed: the calibration data for scoring.
        text_field, chat_template: how records are read (JSON/Parquet field) and formatted, for the calibration
            data and the healing data alike.
        eval_seq_len: perplexity window length.
        data_dir: offline evaluation data (one folder per source/task, e.g. ../shared/data).
        max_windows: score only the first N perplexity windows (faster, state it).
        limit: only the first N items of each task.
        heal_steps: when > 0, heal every pruned point with ``heal_method`` for this many steps (blocks of
            ``seq_len`` tokens, the method's default batch) before evaluating.
        scores: a ``scores.json`` from ``depthprune score`` to reuse instead of scoring again.
        output: folder for ``sweep.json`` and ``sweep.png``; None writes nothing.
        force: start over in ``output`` even when it holds a finished or unfinished sweep.
        plots: draw ``sweep.png`` (needs matplotlib).
        compensate: also evaluate every point with this compensation folded in (calibrated on ``data``), as a
            second curve per criterion named ``METHOD+COMPENSATION`` (see :mod:`depthprune.compensate`).

    Returns:
        ``{"model", "num_layers", "methods", "points": [{"method", "n", "fraction", "removed_layers", <metrics>}]}``.
    """
    from .data import DataSpec
    from .extras import require_all
    from .loading import LoadedModel, load_model
    from .saving import remove_stale_temp_dirs
    from .selection import check_method

    method_list, counts, evals, ppl, tasks = _parse_request(methods, n, eval)
    if compensate != "none":
        from .compensate import COMPENSATIONS

        COMPENSATIONS.get(compensate)
    spec = DataSpec(source=data, samples=samples, seq_len=seq_len, seed=seed, text_field=text_field,
                    chat_template=chat_template)
    # What decides the points: a re-run continues an unfinished sweep only when these are the same.
    settings = json.loads(json.dumps({
        "model": _model_identity(model), "dtype": str(dtype), "methods": method_list, "n": counts, "eval": evals,
        "eval_seq_len": eval_seq_len, "max_windows": max_windows, "limit": limit,
        "data_dir": str(Path(data_dir).expanduser().resolve()) if data_dir else None, "calibration": spec.describe(),
        "scores": str(Path(scores).expanduser().resolve()) if isinstance(scores, (str, Path)) else None,
        "heal": {"steps": heal_steps, "method": heal_method, "data": heal_data} if heal_steps else None,
        **({"compensate": compensate} if compensate != "none" else {})}, default=str))
    out = Path(output) if output is not None else None
    finished = _finished_points(out, settings, force) if out is not None else None   # refuses before any work
    if out is not None:
        remove_stale_temp_dirs(out)   # a run killed while it made the folder
    require_all(sweep_needs(model, methods, eval, data, data_dir, heal_steps, heal_method, heal_data, scores,
                            output, plots, compensate))

    loaded = model if isinstance(model, LoadedModel) else load_model(model, dtype=dtype, device=device,
                                                                      trust_remote_code=trust_remote_code)
    scores = _scores_for(loaded, method_list, counts, spec, scores, out if finished is not None else None, device)
    planned = _plan_points(loaded.model, method_list, counts, scores)
    if compensate != "none":     # a compensated curve beside each criterion's (the dense point is shared)
        planned += [(f"{method}+{compensate}", count, removed) for method, count, removed in list(planned)]
    scored = any(check_method(m).scored for m in method_list)
    done = _start_or_continue(out, finished, scores if scored else None, settings, len(planned), force)
    heal_spec = DataSpec(source=heal_data or data, samples=0, text_field=text_field, chat_template=chat_template)
    point_options = _PointOptions(ppl=ppl, tasks=tasks, eval_seq_len=eval_seq_len, limit=limit, data_dir=data_dir,
                                  max_windows=max_windows, device=device, heal_steps=heal_steps,
                                  heal_method=heal_method, heal_data=heal_spec, seq_len=seq_len, seed=seed,
                                  compensate=compensate, calibration=_calibration_ids(loaded, spec, compensate))
    _run_points(loaded, planned, done, point_options,
                progress=(out / PROGRESS_FILE, settings) if out is not None else None)

    result = {"model": loaded.description, "model_source": loaded.source, "num_layers": _num_layers(loaded.model),
              "methods": list(dict.fromkeys(m for m, _, _ in planned)), "n": counts, "eval": evals, "eval_seq_len": eval_seq_len,
              "max_windows": max_windows, "limit": limit, "data_dir": str(data_dir) if data_dir else None,
              "calibration": spec.describe(),
              "heal": {"steps": heal_steps, "method": heal_method} if heal_steps else None,
              "points": [done[(method, count)] for method, count, _ in planned]}
    if out is not None:
        _write_result(out, result, plots)
    return result


def _num_layers(model) -> int:
    from .adapter import ModelAdapter

    return ModelAdapter(model).num_layers


def _parse_request(methods, n, eval) -> tuple[list[str], list[int], list[str], list[str], list[str]]:
    """``(methods, counts, evals, perplexity sources, tasks)``, every name checked against what exists."""
    from .evaluate.perplexity import PPL_SOURCES
    from .evaluate.tasks import TASKS
    from .selection import check_method
    from .scoring import CRITERIA

    method_list = _split(methods)
    if not method_list:
        raise DepthpruneError(f"no --methods given; choose from {', '.join(CRITERIA.names())}")
    for method in method_list:
        check_method(method, option="--methods")
    evals = _split(eval)
    ppl = [e for e in evals if e in PPL_SOURCES]
    tasks = [e for e in evals if e in TASKS]
    unknown = [e for e in evals if e not in PPL_SOURCES and e not in TASKS]
    if unknown or not evals:
        raise DepthpruneError(f"--eval {eval!r}: unknown {unknown or 'nothing'}; use perplexity sources "
                              f"({', '.join(PPL_SOURCES)}) and/or tasks ({', '.join(TASKS)})")
    return method_list, parse_range(n), evals, ppl, tasks


def _scores_for(loaded, method_list: list[str], counts: list[int], spec, scores, resumed_out: Path | None,
                device) -> dict:
    """The scores the points are chosen by: a resumed sweep's own, the ``--scores`` given, or freshly computed."""
    from .prune import check_scores_model, read_scores
    from .scoring import CRITERIA
    from .scoring.scores import score

    num_layers = _num_layers(loaded.model)
    if max(counts) >= num_layers - 1:
        raise DepthpruneError(f"--n up to {max(counts)} leaves too few of {num_layers} layers; keep at least 2 "
                              f"(largest n is {num_layers - 2})")
    metrics = [CRITERIA.get(m) for m in method_list if CRITERIA.get(m).scored]
    if resumed_out is not None and metrics and (resumed_out / "scores.json").is_file():
        return read_scores(resumed_out / "scores.json")   # the scores the finished points were chosen with
    if scores is not None:
        scores = read_scores(scores)
        if int(scores["num_layers"]) != num_layers:
            raise DepthpruneError(f"the scores are for {scores['num_layers']} layers but the model has {num_layers}; "
                                  "re-score this model or drop --scores")
        check_scores_model(scores, loaded)
        return scores
    if not metrics:
        return {"num_layers": num_layers}
    # an iterative order must reach the largest n (0 alone: the criterion's own default length)
    counted = {e.count_option: max(counts) or None for e in metrics if e.count_option}
    return score(loaded, metrics=",".join(e.name for e in metrics), data=spec, device=device, **counted)


def _plan_points(model, method_list: list[str], counts: list[int], scores: dict) -> list[tuple[str, int, list[int]]]:
    """``(method, n, removed layers)`` for every point, each checked against the model.

    Every (method, n) is resolved before the first is evaluated: a keep-set error at the last pair must not cost
    the hours spent on the first ones.
    """
    from .adapter import ModelAdapter
    from .selection import select_layers

    adapter = ModelAdapter(model)
    planned = []
    for method in method_list:
        for count in counts:
            removed = [] if count == 0 else select_layers(method, scores, count)[0]
            adapter.check_removal(removed)
            planned.append((method, count, removed))
    return planned


def _start_or_continue(out: Path | None, finished: list[dict] | None, scores: dict | None, settings: dict,
                       total: int, force: bool) -> dict:
    """``{(method, n): point}`` already done; a new output folder appears here with its scores (None: no criterion
    scored) and settings."""
    from .saving import atomic_output_dir, write_json_atomic

    if out is not None and finished is None:
        with atomic_output_dir(out, force=force) as tmp:
            if scores is not None:
                write_json_atomic(tmp / "scores.json", scores)
            write_json_atomic(tmp / PROGRESS_FILE, {"settings": settings, "points": []})
        finished = []
    elif finished:
        logger.warning("continuing the unfinished sweep in %s: %d of %d points already done", out, len(finished),
                       total)
    return {(p["method"], p["n"]): p for p in finished or []}


@dataclass
class _PointOptions:
    """How each point is healed (``heal_steps`` > 0) and evaluated."""

    ppl: list[str]
    tasks: list[str]
    eval_seq_len: int
    limit: int | None
    data_dir: object
    max_windows: int | None
    device: object
    heal_steps: int
    heal_method: str
    heal_data: object          # a DataSpec
    seq_len: int
    seed: int
    compensate: str = "none"   # folded into the points of the METHOD+COMPENSATION curves
    calibration: object = None  # its calibration blocks


def _run_points(loaded, planned, done: dict, options: _PointOptions, progress) -> None:
    """Measure every planned point not in ``done`` (filled in place), saving ``done`` after each one.

    Identical removal sets (the dense model for every method, or two criteria agreeing) are evaluated once.

    Args:
        progress: ``(path, settings)`` of the progress file, or None to save nothing.
    """
    from .saving import write_json_atomic

    cache: dict[tuple, dict] = {_point_key(p["method"], p["removed_layers"]): _measured(p) for p in done.values()}
    num_layers = _num_layers(loaded.model)
    heal_root = Path(tempfile.mkdtemp(prefix="depthprune-sweep-heal-")) if options.heal_steps else None
    try:
        for method, count, removed in planned:
            if (method, count) in done:
                continue
            started = time.perf_counter()
            key = _point_key(method, removed)
            if key not in cache:
                logger.info("sweep: %s n=%d removes %s", method, count, removed)
                heal_dir = heal_root / f"{method}-{count}" if heal_root is not None else None
                cache[key] = _measure_point(loaded, removed, options, heal_dir, compensated="+" in method)
            done[(method, count)] = {"method": method, "n": count, "fraction": count / num_layers,
                                     "removed_layers": removed, **cache[key],
                                     "seconds": round(time.perf_counter() - started, 2)}
            if progress is not None:   # saved at once: an interrupted sweep keeps every finished point
                path, settings = progress
                write_json_atomic(path, {"settings": settings, "points": list(done.values())})
    finally:
        if heal_root is not None:
            shutil.rmtree(heal_root, ignore_errors=True)


def _measure_point(loaded, removed: list[int], options: _PointOptions, heal_dir: Path | None,
                   compensated: bool = False) -> dict:
    """The model without ``removed`` (a copy), compensated and healed briefly when asked, evaluated: the point's
    measurements."""
    from .adapter import ModelAdapter
    from .evaluate.runner import evaluate
    from .loading import LoadedModel

    pruned = copy.deepcopy(loaded.model)
    if removed and compensated:
        from .compensate import compensate
        from .plan import PrunePlan

        compensate(pruned, PrunePlan(num_layers=_num_layers(pruned), removed_layers=removed), options.compensate,
                   options.calibration, measure=False, show_progress=False)
    elif removed:
        adapter = ModelAdapter(pruned)
        adapter.keep_layers(adapter.check_removal(removed)[1])
    extra = {}
    if options.heal_steps and removed:
        from .heal import heal

        healed = heal(LoadedModel(model=pruned, tokenizer=loaded.tokenizer, source=loaded.source,
                                  description=loaded.description),
                      data=options.heal_data, method=options.heal_method, max_steps=options.heal_steps,
                      seq_len=options.seq_len, seed=options.seed, eval_samples=4, output=heal_dir, force=True,
                      progress=False, **_sweep_teacher(options.heal_method, loaded))
        pruned = healed.model
        extra["heal_final_loss"] = healed.metadata["healing"].get("final_train_loss")
        shutil.rmtree(heal_dir, ignore_errors=True)
    results = evaluate(LoadedModel(model=pruned, tokenizer=loaded.tokenizer, source=loaded.source,
                                   description=loaded.description), ppl=options.ppl or None,
                       seq_len=options.eval_seq_len, tasks=options.tasks or None, limit=options.limit,
                       data_dir=options.data_dir, ppl_max_windows=options.max_windows, device=options.device)
    return {**_metric_values(results), **extra}


def _write_result(out: Path, result: dict, plots: bool) -> None:
    """``sweep.json``, then the plot; the progress file goes once every point is safe."""
    from .saving import write_bytes_atomic, write_json_atomic

    write_json_atomic(out / SWEEP_FILE, result)
    plot_error = None
    if plots:   # drawn after the results are safe
        try:
            write_bytes_atomic(out / PLOT_FILE, sweep_plot(result))
        except Exception as error:  # noqa: BLE001  (any plotting failure: the results are kept)
            plot_error = error
    (out / PROGRESS_FILE).unlink()   # the sweep is finished: sweep.json holds every point
    if plot_error is not None:
        first = str(plot_error).strip().splitlines()[0] if str(plot_error).strip() else type(plot_error).__name__
        raise DepthpruneError(f"the sweep was saved to {out / SWEEP_FILE} (every point) but its plot failed "
                              f"({first})") from plot_error


def _calibration_ids(loaded, spec, compensate: str):
    """The calibration blocks compensation is fitted on (None without ``--compensate``)."""
    if compensate == "none":
        return None
    from .data import calibration_blocks
    from .loading import require_tokenizer

    return calibration_blocks(spec, require_tokenizer(loaded), model=loaded.model)


def _point_key(method: str, removed) -> tuple:
    """What identifies a point's model: its removed layers, and the compensation folded in (``bi+linear``)."""
    compensation = method.partition("+")[2] if removed else ""
    return (compensation, *removed)


def _measured(point: dict) -> dict:
    """A saved point's measurements (what the evaluation and healing produced)."""
    return {k: v for k, v in point.items() if k not in POINT_FIELDS}
