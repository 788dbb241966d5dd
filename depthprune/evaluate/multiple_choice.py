"""Zero-/few-shot multiple-choice scoring as lm-evaluation-harness does it.

Each choice is scored by the summed log-probability of ``" " + choice`` after the prompt (for partial scoring, of
the shared continuation after each choice's context). ``acc`` takes the argmax of the log-likelihoods; ``acc_norm``
the argmax of log-likelihood divided by the choice's length in characters, without the leading space (lm-eval 0.4's
``completion_len``). Ties go to the first choice (``numpy.argmax``).
"""

from __future__ import annotations

from typing import Sequence

from ..errors import DepthpruneError
from .tasks import Doc, TaskConfig, load_task_docs, task_folder

TARGET_DELIMITER = " "     # lm-eval's default between prompt and answer
FEWSHOT_DELIMITER = "\n\n"  # lm-eval's default after each worked example


def argmax_first(values: Sequence[float]) -> int:
    """Index of the largest value; the first one on ties (as ``numpy.argmax``)."""
    best = 0
    for index, value in enumerate(values):
        if value > values[best]:
            best = index
    return best


def choice_lengths(doc: Doc) -> list[int]:
    """The lengths ``acc_norm`` divides by: characters of each choice text, as lm-eval's ``completion_len``."""
    return [len(choice) for choice in doc.choices]


def predictions(loglikelihoods: Sequence[float], doc: Doc) -> tuple[int, int]:
    """``(pred, pred_norm)``: the chosen index by raw and by length-normalised log-likelihood."""
    lengths = choice_lengths(doc)
    normalised = [ll / float(length) for ll, length in zip(loglikelihoods, lengths)]
    return argmax_first(loglikelihoods), argmax_first(normalised)


def fewshot_prefix(examples: Sequence[Doc], description: str = "") -> str:
    """Description plus worked examples, each ``question + " " + answer + "\\n\\n"`` (lm-eval's plain-text form)."""
    parts = [description]
    for example in examples:
        if example.target is not None:  # partial scoring: the gold context followed by its continuation
            parts.append(example.choices[example.gold] + TARGET_DELIMITER + example.target + FEWSHOT_DELIMITER)
        else:
            parts.append(example.query + TARGET_DELIMITER + example.choices[example.gold] + FEWSHOT_DELIMITER)
    return "".join(parts)


def doc_requests(doc: Doc, prefix: str = "") -> list[tuple[str, str]]:
    """The ``(context, continuation)`` log-likelihood requests for one doc, one per choice."""
    if doc.target is not None:
        return [(prefix + context, TARGET_DELIMITER + doc.target) for context in doc.choices]
    return [(prefix + doc.query, TARGET_DELIMITER + choice) for choice in doc.choices]


def select_docs(task: TaskConfig, docs: list[Doc], limit: int | None) -> list[Doc]:
    """The first ``limit`` docs (per group when the task has groups, as lm-eval limits each MMLU subject)."""
    if limit is None:
        return docs
    if limit < 1:
        raise DepthpruneError(f"--limit must be at least 1 (got {limit})")
    taken: dict[str, int] = {}
    selected = []
    for doc in docs:
        if taken.get(doc.group, 0) < limit:
            selected.append(doc)
            taken[doc.group] = taken.get(doc.group, 0) + 1
    return selected


def build_task_requests(task: TaskConfig, docs: list[Doc], num_fewshot: int,
                        fewshot_docs: list[Doc] | None) -> list[list[tuple[str, str]]]:
    """Requests per doc, with the task's description and the first ``num_fewshot`` examples of the doc's group."""
    shots_by_group: dict[str, list[Doc]] = {}
    for example in fewshot_docs or []:
        shots_by_group.setdefault(example.group, []).append(example)
    requests = []
    for doc in docs:
        shots = shots_by_group.get(doc.group, [])[:num_fewshot]
        if len(shots) < num_fewshot:
            raise DepthpruneError(f"{task.name}: {num_fewshot}-shot asked for but only {len(shots)} examples exist for "
                                  f"{doc.group or task.name}; lower --num-fewshot")
        description = task.description(doc.group) if task.description else ""
        requests.append(doc_requests(doc, fewshot_prefix(shots, description)))
    return requests


def score_docs(docs: list[Doc], loglikelihoods: list[list[float]], metrics: Sequence[str]) -> dict:
    """Mean ``acc`` / ``acc_norm`` over docs, with ``n`` and a per-group breakdown when docs have groups."""
    totals: dict[str, dict[str, float]] = {}
    correct = {"acc": 0, "acc_norm": 0}
    for doc, lls in zip(docs, loglikelihoods):
        pred, pred_norm = predictions(lls, doc)
        hits = {"acc": int(pred == doc.gold), "acc_norm": int(pred_norm == doc.gold)}
        for name in correct:
            correct[name] += hits[name]
        group = totals.setdefault(doc.group, {"acc": 0, "acc_norm": 0, "n": 0})
        group["n"] += 1
        for name in hits:
            group[name] += hits[name]
    n = len(docs)
    result = {name: correct[name] / n for name in metrics}
    result["n"] = n
    if len(totals) > 1 or "" not in totals:
        result["groups"] = {name: {**{m: counts[m] / counts["n"] for m in metrics}, "n": counts["n"]}
                            for name, counts in sorted(totals.items())}
    return result


def evaluate_task(lm, task: TaskConfig, data_dir, num_fewshot: int | None = None, limit: int | None = None,
                  docs: list[Doc] | None = None) -> dict:
    """Score one task from its files under ``data_dir`` with an lm-eval ``LM`` (normally ``DepthpruneLM``).

    Args:
        lm: anything with ``loglikelihood(list of (context, continuation))`` returning ``(logprob, is_greedy)``.
        task: the task.
        data_dir: folder holding one sub-folder per task, in the original release formats.
        num_fewshot: examples before each question; default the task's (MMLU 5, others 0).
        limit: score only the first ``limit`` docs (per subject for MMLU).
        docs: the task's docs when already loaded (``load_task_docs``); read from ``data_dir`` otherwise.

    Returns:
        ``{"acc": .., "acc_norm": .. (where lm-eval reports it), "n": .., "num_fewshot": .., "paper_metric": ..}``.
    """
    shots = task.default_fewshot if num_fewshot is None else num_fewshot
    if shots < 0:
        raise DepthpruneError(f"--num-fewshot must be >= 0 (got {shots})")
    if shots > 0 and task.load_fewshot is None:
        raise DepthpruneError(f"{task.name}: the offline data has no split to draw few-shot examples from; use "
                              "--num-fewshot 0 or --backend lm-eval")
    docs = select_docs(task, docs if docs is not None else load_task_docs(task, data_dir), limit)
    fewshot_docs = task.load_fewshot(task_folder(data_dir, task)) if shots > 0 else None
    per_doc = build_task_requests(task, docs, shots, fewshot_docs)
    flat = [request for requests in per_doc for request in requests]
    if hasattr(lm, "encode_pair") and hasattr(lm, "score_token_pairs"):  # ours: label the progress bar
        scores = lm.score_token_pairs([lm.encode_pair(*request) for request in flat], desc=task.name)
    else:
        scores = lm.loglikelihood(flat)
    loglikelihoods, position = [], 0
    for requests in per_doc:
        loglikelihoods.append([logprob for logprob, _ in scores[position:position + len(requests)]])
        position += len(requests)
    result = score_docs(docs, loglikelihoods, task.metrics)
    result.update(num_fewshot=shots, paper_metric=task.paper_metric, split=task.split)
    if task.notes:
        result["notes"] = task.notes
    return result
