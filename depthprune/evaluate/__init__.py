"""Evaluation: token perplexity, multiple choice scored as lm-evaluation-harness does, and speed.

Light to import: each submodule pulls in its heavy dependencies (lm-eval, datasets) only when used.
"""

from .multiple_choice import evaluate_task
from .perplexity import load_ppl_text, perplexity, token_perplexity
from .runner import evaluate, markdown_table, write_results
from .speed import compare_speed, measure_speed
from .tasks import TASKS, Doc, TaskConfig, get_task, load_task_docs

__all__ = ["Doc", "TASKS", "TaskConfig", "compare_speed", "evaluate", "evaluate_task", "get_task", "load_ppl_text",
           "load_task_docs", "markdown_table", "measure_speed", "perplexity", "token_perplexity", "write_results"]


def __getattr__(name):
    # The lm-eval wrapper imports lm_eval when installed (slow); load it only when asked for.
    if name == "DepthpruneLM":
        from .lm_wrapper import DepthpruneLM

        return DepthpruneLM
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
