"""The Python API, one function per CLI verb, made from the verb's own schema (``depthprune.commands.<verb>``).

``depthprune VERB MODEL --some-option X`` is ``depthprune.api.VERB(MODEL, some_option=X)``: the same option names,
the same defaults, the same checks (an option that would be ignored is refused here too), because every function
is built from the verb's ``OPTIONS`` and runs the verb's own ``call``. Switches are their Python names
(``--no-plots`` is ``plots=False``); None means "not given". Every function accepts a model spec (folder, .gguf, hub
id, alias) or an already loaded :class:`~depthprune.LoadedModel`, calibration data as the command line takes it
(``data="builtin", samples=16, seq_len=256``) or as a :class:`~depthprune.DataSpec`, and, as every verb's
``--threads``, ``threads=N`` (torch's CPU threads, set before the work starts; None keeps torch's default).

Example::

    from depthprune import api

    loaded = api.load_model("smollm2-135m")
    scores = api.score(loaded, metrics="angular,bi", data="builtin", output="out/scores")
    plan = api.prune("smollm2-135m", method="bi", n=4, scores="out/scores/scores.json", output="out/pruned")
    results = api.evaluate("out/pruned", ppl="builtin", seq_len=256, output="out/eval")
"""

from __future__ import annotations

import importlib
import inspect

from .cli import COMMANDS
from .commands.common import verb_schema
from .commands.schema import api_namespace, api_signature
from .loading import load_model
from .recipe import load_recipe

__all__ = ["collapse", "evaluate", "export", "heal", "info", "load_model", "load_recipe", "prune", "report", "run",
           "score", "sweep"]


def _verb_function(verb: str, name: str | None = None):
    """``depthprune.api.<name>``: the verb's ``call`` on Python arguments checked against its schema."""
    module = importlib.import_module(COMMANDS[verb])
    schema = verb_schema(module)

    def function(*args, **kwargs):
        # The schema is read again at each call: a criterion registered since import brings its options.
        return module.call(api_namespace(verb, verb_schema(module), args, kwargs))

    function.__name__ = function.__qualname__ = name or verb
    function.__module__ = __name__
    function.__signature__ = api_signature(schema)
    function.__doc__ = (f"``depthprune {verb}`` in Python: {module.HELP}.\n\nReturns: "
                        f"{inspect.getdoc(module.call) or 'its result'}\n\n{module.__doc__}")
    return function


collapse = _verb_function("collapse")
evaluate = _verb_function("eval", "evaluate")
export = _verb_function("export")
heal = _verb_function("heal")
info = _verb_function("info")
prune = _verb_function("prune")
report = _verb_function("report")
run = _verb_function("run")
score = _verb_function("score")
sweep = _verb_function("sweep")
