"""The Python API, one function per CLI verb, with the same option names.

``depthprune VERB MODEL --some-option X`` is ``depthprune.api.VERB(MODEL, some_option=X)``. Every function accepts a
model spec (folder, .gguf, hub id, alias) or an already loaded :class:`~depthprune.LoadedModel`.

Example::

    from depthprune import api

    loaded = api.load_model("smollm2-135m")
    scores = api.score(loaded, metrics="angular,bi", data="builtin", output="out/scores")
    plan = api.prune("smollm2-135m", method="bi", n=4, scores="out/scores/scores.json", output="out/pruned")
    results = api.evaluate("out/pruned", ppl="builtin", seq_len=256, output="out/eval")
"""

from __future__ import annotations

from pathlib import Path

from .collapse import collapse
from .heal.api import heal
from .info import info
from .loading import load_model
from .prune import prune
from .recipe import load_recipe, run_recipe as run
from .report import write_report as report
from .scoring.api import score
from .sweep import sweep

__all__ = ["collapse", "evaluate", "heal", "info", "load_model", "load_recipe", "prune", "report", "run", "score",
           "sweep"]


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
