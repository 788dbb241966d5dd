"""The Python API, one function per CLI verb, with the same option names.

``depthprune VERB MODEL --some-option X`` is ``depthprune.api.VERB(MODEL, some_option=X)``. Every function accepts a
model spec (folder, .gguf, hub id, alias) or an already loaded :class:`~depthprune.LoadedModel`, and, as every
verb's ``--threads``, ``threads=N`` (torch's CPU threads, set before the work starts; None keeps torch's default).

Example::

    from depthprune import api

    loaded = api.load_model("smollm2-135m")
    scores = api.score(loaded, metrics="angular,bi", data="builtin", output="out/scores")
    plan = api.prune("smollm2-135m", method="bi", n=4, scores="out/scores/scores.json", output="out/pruned")
    results = api.evaluate("out/pruned", ppl="builtin", seq_len=256, output="out/eval")
"""

from __future__ import annotations

import functools
import inspect
from pathlib import Path

from .collapse import collapse as _collapse
from .heal import heal as _heal
from .info import info as _info
from .loading import load_model
from .prune import prune as _prune
from .recipe import load_recipe, run_recipe as _run
from .report import write_report as _report
from .runtime import set_threads
from .scoring.api import score as _score
from .sweep import sweep as _sweep

__all__ = ["collapse", "evaluate", "heal", "info", "load_model", "load_recipe", "prune", "report", "run", "score",
           "sweep"]


def _with_threads(function):
    """``function`` plus the keyword ``threads`` of every CLI verb: torch's CPU threads, set before the work starts.

    The default, None, leaves torch's own default (the command line instead uses the cores left free).
    """
    @functools.wraps(function)
    def verb(*args, threads: int | None = None, **kwargs):
        set_threads(threads)
        return function(*args, **kwargs)

    signature = inspect.signature(function)
    parameters = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    threads = inspect.Parameter("threads", inspect.Parameter.KEYWORD_ONLY, default=None, annotation="int | None")
    variadic = [p for p in signature.parameters.values() if p.kind is inspect.Parameter.VAR_KEYWORD]
    verb.__signature__ = signature.replace(parameters=[*parameters, threads, *variadic])
    return verb


collapse = _with_threads(_collapse)
heal = _with_threads(_heal)
info = _with_threads(_info)
prune = _with_threads(_prune)
report = _with_threads(_report)
run = _with_threads(_run)
score = _with_threads(_score)
sweep = _with_threads(_sweep)


@_with_threads
def evaluate(model, output: str | Path | None = None, force: bool = False, **options) -> dict:
    """Evaluate a model (``depthprune eval``); with ``output``, also write ``results.json`` and ``results.md``.

    ``options`` are those of :func:`depthprune.evaluate.runner.evaluate` (``ppl``, ``seq_len``, ``tasks``,
    ``num_fewshot``, ``limit``, ``speed``, ``compare``, ``data_dir``, ...).
    """
    from .evaluate.runner import evaluate as run_evaluation, write_results
    from .saving import check_output_dir

    if output is not None:
        check_output_dir(output, force)
    results = run_evaluation(model, **options)
    if output is not None:
        write_results(results, output, force=force)
    return results
