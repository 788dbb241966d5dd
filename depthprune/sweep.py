"""Quality against the fraction of layers removed, one curve per criterion: the papers' central figure.

Scores the model once with every criterion asked for, then for each method and each n removes the chosen layers
from a copy of the model, optionally heals it briefly, and evaluates it. Identical removal sets chosen by different
criteria are evaluated once.
"""

from __future__ import annotations

import copy
import io
import logging
import re
import shutil
import tempfile
import time
from pathlib import Path

from .errors import DepthpruneError
from .metadata import SWEEP_FILE

logger = logging.getLogger(__name__)

PLOT_FILE = "sweep.png"


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


def sweep_plot(result: dict) -> bytes:
    """One panel per evaluated metric: value against layers removed, one line per method.

    Perplexity panels are log-scaled and capped at 100x the best value, so that a catastrophic criterion (the
    last-n chop reaches 1e9 on small models) does not flatten the others; capped points are drawn as triangles on
    the top edge.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = result["points"]
    metrics = [k for k in points[0] if k not in ("method", "n", "removed_layers", "fraction", "seconds",
                                                 "heal_final_loss")]
    columns = min(len(metrics), 2)
    rows = (len(metrics) + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(7.5 * columns, 4.6 * rows), squeeze=False)
    for axis, metric in zip(axes.flat, metrics):
        is_ppl = metric.endswith("_ppl") or "_ppl@" in metric
        values = [p[metric] for p in points if p.get(metric) is not None]
        cap = min(values) * 100 if is_ppl and values else None
        for method in result["methods"]:
            line = sorted((p["n"], p[metric]) for p in points if p["method"] == method and p.get(metric) is not None)
            if not line:
                continue
            xs = [x for x, _ in line]
            ys = [min(y, cap) if cap else y for _, y in line]
            drawn = axis.plot(xs, ys, marker="o", label=method)[0]
            clipped = [(x, cap) for x, y in line if cap and y > cap]
            if clipped:
                axis.plot(*zip(*clipped), linestyle="none", marker="^", markersize=10, color=drawn.get_color())
        if is_ppl:
            axis.set_yscale("log")
            axis.set_ylabel("perplexity (log scale; ▲ = off the scale)")
        else:
            axis.set_ylabel(metric)
        axis.set_xlabel(f"layers removed (of {result['num_layers']})")
        axis.set_title(metric + (f" — healed {result['heal']['steps']} steps" if result.get("heal") else ""))
        axis.grid(alpha=0.3)
        axis.legend(fontsize=9, title="criterion")
    for axis in list(axes.flat)[len(metrics):]:
        axis.set_visible(False)
    name = result.get("model_source") or Path(str(result["model"])).name
    figure.suptitle(f"{name}: quality against layers removed")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return buffer.getvalue()


def sweep(model, methods="angular,bi,last,ppl", n="0:8", eval="wikitext2", data="builtin", samples: int = 16,
          seq_len: int = 256, seed: int = 0, eval_seq_len: int = 256, data_dir=None, max_windows: int | None = None,
          limit: int | None = None, heal_steps: int = 0, heal_method: str = "lora", heal_data=None,
          scores=None, output=None, force: bool = False, dtype="float32", device="cpu", trust_remote_code: bool = False) -> dict:
    """Evaluate the model with n layers removed by each method, for every n (``depthprune sweep``).

    Args:
        model: anything :func:`depthprune.load_model` accepts, or a LoadedModel.
        methods: selection methods (angular, bi, ppl, taylor, magnitude, sleb, last).
        n: layer counts, ``"0:15"`` (inclusive) or ``"2,4,8"``; 0 is the dense model.
        eval: what to measure: perplexity sources (wikitext2, ptb, c4) and/or tasks (piqa, arc_easy, ...).
        data, samples, seq_len, seed: the calibration data for scoring.
        eval_seq_len: perplexity window length.
        data_dir: offline evaluation data (one folder per source/task, e.g. ../shared/data).
        max_windows: score only the first N perplexity windows (faster, state it).
        limit: only the first N items of each task.
        heal_steps: when > 0, heal every pruned point with ``heal_method`` for this many steps (blocks of
            ``seq_len`` tokens, the method's default batch) before evaluating.
        scores: a ``scores.json`` from ``depthprune score`` to reuse instead of scoring again.
        output: folder for ``sweep.json`` and ``sweep.png`` (atomic); None writes nothing.

    Returns:
        ``{"model", "num_layers", "methods", "points": [{"method", "n", "fraction", "removed_layers", <metrics>}]}``.
    """
    from .adapter import ModelAdapter
    from .data import DataSpec
    from .evaluate.perplexity import PPL_SOURCES
    from .evaluate.runner import evaluate
    from .evaluate.tasks import TASKS
    from .loading import LoadedModel, load_model
    from .saving import atomic_output_dir, check_output_dir, write_json_atomic
    from .scoring.api import score
    from .selection import METHODS, check_method, select_layers

    method_list = _split(methods)
    if not method_list:
        raise DepthpruneError(f"no --methods given; choose from {', '.join(METHODS)}")
    for method in method_list:
        check_method(method)
    counts = parse_range(n)
    evals = _split(eval)
    ppl = [e for e in evals if e in PPL_SOURCES]
    tasks = [e for e in evals if e in TASKS]
    unknown = [e for e in evals if e not in PPL_SOURCES and e not in TASKS]
    if unknown or not evals:
        raise DepthpruneError(f"--eval {eval!r}: unknown {unknown or 'nothing'}; use perplexity sources "
                              f"({', '.join(PPL_SOURCES)}) and/or tasks ({', '.join(TASKS)})")
    if output is not None:
        check_output_dir(output, force)

    loaded = model if isinstance(model, LoadedModel) else load_model(model, dtype=dtype, device=device,
                                                                      trust_remote_code=trust_remote_code)
    num_layers = ModelAdapter(loaded.model).num_layers
    if max(counts) >= num_layers - 1:
        raise DepthpruneError(f"--n up to {max(counts)} leaves too few of {num_layers} layers; keep at least 2 "
                              f"(largest n is {num_layers - 2})")
    spec = DataSpec(source=data, samples=samples, seq_len=seq_len, seed=seed)
    metrics = [m for m in method_list if m != "last"]
    if scores is not None:
        from .prune import read_scores

        scores = read_scores(scores)
        if int(scores["num_layers"]) != num_layers:
            raise DepthpruneError(f"the scores are for {scores['num_layers']} layers but the model has {num_layers}; "
                                  "re-score this model or drop --scores")
    elif metrics:
        sleb_n = max(counts) if "sleb" in metrics else None
        scores = score(loaded, metrics=",".join(metrics), data=spec, sleb_n=sleb_n or None, device=device)
    else:
        scores = {"num_layers": num_layers}

    def measure(model_to_eval) -> dict:
        results = evaluate(LoadedModel(model=model_to_eval, tokenizer=loaded.tokenizer, source=loaded.source,
                                       description=loaded.description), ppl=ppl or None, seq_len=eval_seq_len,
                           tasks=tasks or None, limit=limit, data_dir=data_dir, ppl_max_windows=max_windows,
                           device=device)
        return _metric_values(results)

    heal_root = Path(tempfile.mkdtemp(prefix="depthprune-sweep-heal-")) if heal_steps else None
    cache: dict[tuple, dict] = {}
    points = []
    try:
        for method in method_list:
            for count in counts:
                started = time.perf_counter()
                removed = [] if count == 0 else select_layers(method, scores, count)[0]
                key = tuple(removed)
                if key not in cache:
                    logger.info("sweep: %s n=%d removes %s", method, count, removed)
                    pruned = copy.deepcopy(loaded.model)
                    if removed:
                        adapter = ModelAdapter(pruned)
                        adapter.keep_layers(adapter.check_removal(removed)[1])
                    extra = {}
                    if heal_steps and removed:
                        from .heal import heal

                        healed = heal(LoadedModel(model=pruned, tokenizer=loaded.tokenizer, source=loaded.source,
                                                  description=loaded.description), data=heal_data or data,
                                      method=heal_method, max_steps=heal_steps, seq_len=seq_len, seed=seed,
                                      eval_samples=4, output=heal_root / f"{method}-{count}", force=True,
                                      progress=False)
                        pruned = healed.model
                        extra["heal_final_loss"] = healed.metadata["healing"].get("final_train_loss")
                        shutil.rmtree(heal_root / f"{method}-{count}", ignore_errors=True)
                    cache[key] = {**measure(pruned), **extra}
                    del pruned
                points.append({"method": method, "n": count, "fraction": count / num_layers,
                               "removed_layers": removed, **cache[key],
                               "seconds": round(time.perf_counter() - started, 2)})
    finally:
        if heal_root is not None:
            shutil.rmtree(heal_root, ignore_errors=True)

    result = {"model": loaded.description, "model_source": loaded.source, "num_layers": num_layers, "methods": method_list, "n": counts,
              "eval": evals, "eval_seq_len": eval_seq_len, "max_windows": max_windows, "limit": limit,
              "data_dir": str(data_dir) if data_dir else None, "calibration": spec.describe(),
              "heal": {"steps": heal_steps, "method": heal_method} if heal_steps else None, "points": points}
    if output is not None:
        with atomic_output_dir(output, force=force) as tmp:
            write_json_atomic(Path(tmp) / SWEEP_FILE, result)
            (Path(tmp) / PLOT_FILE).write_bytes(sweep_plot(result))
            if metrics:
                write_json_atomic(Path(tmp) / "scores.json", scores)
    return result
