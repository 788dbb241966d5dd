"""Evaluation: token perplexity, zero-/few-shot tasks scored by lm-evaluation-harness itself, and speed.

Light to import: each submodule pulls in its heavy dependencies (lm-eval, datasets) only when used.
"""

from .perplexity import load_ppl_text, perplexity, token_perplexity
from .runner import evaluate, markdown_table, write_results
from .speed import compare_speed, measure_speed
from .tasks import TASKS, TaskData

__all__ = ["TASKS", "TaskData", "compare_speed", "evaluate", "load_ppl_text", "markdown_table", "measure_speed",
           "perplexity", "token_perplexity", "write_results"]
