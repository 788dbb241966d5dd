"""Zero-/few-shot tasks scored by lm-evaluation-harness itself, on the model in memory.

lm-eval's own task definitions (its YAML: prompts, ``process_docs``, metrics, few-shot) and its ``HFLM`` model
wrapper do all the scoring, so every ``acc``/``acc_norm`` is lm-eval's by construction (HFLM is asked only for the
logits it reads, see :func:`hflm_class`). The one thing replaced is
the download: with ``--data-dir`` a task over a dataset that :mod:`depthprune.evaluate.tasks` reads gets its records
from the release files there (no network at all); any other task, or any task without ``--data-dir``, loads its
data the way lm-eval does (the Hugging Face cache, or the hub when online).

lm-eval is imported inside the functions (an extra: ``depthprune[eval]``). Tasks are built with lm-eval's
``TaskManager`` index and task factory (lm-eval 0.4.12 and later), with the task class overridden by
:class:`OfflineTask`; everything else goes through ``lm_eval.simple_evaluate``.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import logging
from pathlib import Path

from ..errors import DepthpruneError

# Few-shot counts the pruning papers use where lm-eval's YAML says otherwise (its MMLU default is 0-shot).
DEFAULT_FEWSHOT = {"mmlu": 5}
# The metric the pruning papers quote, for the printed table (acc elsewhere).
PAPER_METRIC = {"hellaswag": "acc_norm", "arc_challenge": "acc_norm", "openbookqa": "acc_norm"}
SPLIT_KEYS = ("training_split", "validation_split", "test_split", "fewshot_split")
# lm-eval's log lines that only restate what we chose (an in-memory model, YAML metrics without an aggregation).
QUIET_LM_EVAL = ("`pretrained` model kwarg is not of type", "Passed an already-initialized model",
                 "but aggregation is not", "but higher_is_better is not", "Using pre-initialized model")


@functools.lru_cache(maxsize=1)
def task_manager():
    """lm-eval's index of every task YAML it ships (built once per process: it reads thousands of files)."""
    from lm_eval.tasks import TaskManager

    return TaskManager()


@functools.lru_cache(maxsize=None)
def _offline_task_class(data_dir: str):
    """A ``ConfigurableTask`` whose download reads ``data_dir`` for the datasets we have readers for."""
    import datasets
    from lm_eval.api.task import ConfigurableTask

    from .tasks import task_data_for

    class OfflineTask(ConfigurableTask):
        """lm-eval's task from its YAML; its records come from the release files in ``data_dir``."""

        def __init__(self, config: dict | None = None, **kwargs) -> None:
            # The factory hands over the whole config, including the "class" key that chose this class.
            super().__init__(config={key: value for key, value in (config or {}).items() if key != "class"},
                             **kwargs)

        def download(self, dataset_kwargs=None, **kwargs) -> None:
            data = task_data_for(self.config.dataset_path, self.config.dataset_name)
            if data is None:   # a dataset we have no reader for: lm-eval's own download
                super().download(dataset_kwargs, **kwargs)
                return
            splits = data.records(data_dir, self.config.dataset_name)
            self.dataset = datasets.DatasetDict({split: datasets.Dataset.from_list(records)
                                                 for split, records in splits.items()})
            self.depthprune_source = data.name   # recorded in the results
            self.depthprune_note = data.note(data.folder(data_dir)) if data.note else None
            _drop_missing_splits(self.config, splits, data.folder(data_dir))

    return OfflineTask


@functools.lru_cache(maxsize=1)
def hflm_class():
    """lm-eval's ``HFLM``, asking the model only for the logits it reads.

    Why not plain HFLM (measured side by side, bench/RESULTS.md "zero-shot through lm-eval"): HFLM runs the output
    head and a log-softmax over the whole vocabulary at every input position, and reads only the continuation's
    positions; on SmolLM2-135M (a 576 x 49,152 head) that cost 25-30% more CPU per item than depthprune's
    evaluator did before it used lm-eval. This subclass notes where each input's continuation starts and passes
    ``logits_to_keep`` (transformers' own argument) covering those positions of the padded batch; HFLM's slicing
    already allows logits shorter than the input (it counts from the end), so it reads the very same numbers.
    Everything else is HFLM's: tokenising, BOS, batching, caching of one-token continuations, greedy check.
    """
    import inspect

    import torch
    from lm_eval.models.huggingface import HFLM

    class DepthpruneHFLM(HFLM):
        def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs=None):
            # model input (as HFLM cuts it) -> first input position whose logits are scored
            self._scored_from: dict[tuple, int] | None = {}
            for _, context, continuation in requests:
                inputs = tuple((context + continuation)[-(self.max_length + 1):][:-1])
                start = len(inputs) - len(continuation)
                self._scored_from[inputs] = min(start, self._scored_from.get(inputs, start))
            try:
                return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
            finally:
                self._scored_from = None

        def _logits_to_keep(self, inps: torch.Tensor) -> int | None:
            """Trailing positions of the batch that hold every row's scored logits; None: all of them."""
            scored_from = getattr(self, "_scored_from", None)
            if not scored_from or "logits_to_keep" not in inspect.signature(self.model.forward).parameters:
                return None
            width = inps.shape[1]
            first = width
            for row in inps.tolist():
                end = len(row)
                while end > 1 and row[end - 1] == 0:   # HFLM pads on the right with zeros; a real 0 only adds room
                    end -= 1
                starts = [scored_from[tuple(row[:length])] for length in range(end, width + 1)
                          if tuple(row[:length]) in scored_from]
                if not starts:
                    return None
                first = min(first, *starts)
            return width - first

        def _model_call(self, inps, attn_mask=None, labels=None):
            keep = self._logits_to_keep(inps) if attn_mask is None and labels is None else None
            if keep is None or keep >= inps.shape[1]:
                return super()._model_call(inps, attn_mask=attn_mask, labels=labels)
            with torch.no_grad():   # (HFLM's autocast is for mixed_precision_dtype, which run_tasks never sets)
                return self.model(inps, logits_to_keep=keep).logits   # (batch, keep, vocab)

    return DepthpruneHFLM


def _drop_missing_splits(config, splits: dict, folder: Path) -> None:
    """Forget the YAML's splits the release files do not hold (BoolQ's train, ARC's validation, ...), so lm-eval
    scores the split that is there; refuse few-shot examples lm-eval would take from a missing split."""
    missing = {key: getattr(config, key) for key in SPLIT_KEYS
               if getattr(config, key) is not None and getattr(config, key) not in splits}
    shots_from = "fewshot_split" if config.fewshot_split is not None else "training_split"
    if (config.num_fewshot or 0) > 0 and shots_from in missing:
        raise DepthpruneError(f"{config.task}: lm-eval draws few-shot examples from the {missing[shots_from]} split, "
                              f"which {folder} does not hold (it has {', '.join(splits)}); use "
                              "--num-fewshot 0, or drop --data-dir to let lm-eval load the dataset")
    for key in missing:
        setattr(config, key, None)
    if config.test_split is None and config.validation_split is None:
        raise DepthpruneError(f"{config.task}: lm-eval scores a split the files in --data-dir do not hold "
                              f"({', '.join(missing.values())}; they have {', '.join(splits)})")


def _close_names(name: str, manager) -> str:
    close = difflib.get_close_matches(name, manager.all_tasks, n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


def build_tasks(names: list[str], data_dir=None, num_fewshot: int | None = None) -> list:
    """lm-eval task (or group) objects for ``names``, their data read now: before any model is loaded.

    Args:
        names: lm-eval task, group or tag names (``piqa``, ``mmlu``, ``mmlu_astronomy``, ``ai2_arc``, ...).
        data_dir: folder of release files (one sub-folder per task); None: lm-eval loads every dataset itself.
        num_fewshot: examples per prompt; None: :data:`DEFAULT_FEWSHOT`, else the task's YAML (mostly 0).
    """
    from lm_eval.tasks._index import Kind

    try:   # the model wrapper run_tasks uses; a missing dependency fails here, before any model is loaded
        from lm_eval.models.huggingface import HFLM  # noqa: F401
    except ImportError as error:
        raise DepthpruneError(f"lm-eval's HFLM cannot be imported ({error}): pip install 'depthprune[eval]'") \
            from None
    manager = task_manager()
    offline = _offline_task_class(str(Path(data_dir).expanduser())) if data_dir is not None else None
    built = []
    for name in names:
        entry = manager.task_index.get(name)
        if entry is None:
            raise DepthpruneError(f"unknown task {name!r}: lm-eval {_lm_eval_version()} has no task, group or tag "
                                  f"of that name.{_close_names(name, manager)}")
        overrides = {}
        shots = num_fewshot if num_fewshot is not None else DEFAULT_FEWSHOT.get(name)
        if shots is not None:
            overrides["num_fewshot"] = shots
        if offline is not None and entry.kind != Kind.PY_TASK:   # a Python task class keeps its own download
            overrides["class"] = offline
        try:
            with quiet_lm_eval():
                task = manager._factory.build(entry, overrides=overrides or None, registry=manager.task_index)
        except DepthpruneError:
            raise
        except Exception as error:   # lm-eval's downloads fail in many ways; all need the same advice
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise DepthpruneError(f"{name}: lm-eval could not load its data ({first[:200]}); offline? pass "
                                  "--data-dir with the release files (see `depthprune eval --help`)") from None
        built.extend(task if isinstance(task, list) else [task])
    return built


def _lm_eval_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lm-eval")
    except PackageNotFoundError:
        return "unknown"


class _QuietLmEval(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(part in message for part in QUIET_LM_EVAL)


@contextlib.contextmanager
def quiet_lm_eval():
    """Drop lm-eval's :data:`QUIET_LM_EVAL` log lines (on each of its loggers: a filter acts where a record is
    made); every other warning of lm-eval still shows."""
    import lm_eval  # noqa: F401  (its modules' loggers exist once imported)
    from lm_eval.api import task  # noqa: F401
    from lm_eval.models import huggingface  # noqa: F401

    quiet = _QuietLmEval()
    loggers = [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)
               if name == "lm_eval" or name.startswith("lm_eval.")]
    for logger in loggers:
        logger.addFilter(quiet)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(quiet)


def _metrics(row: dict) -> dict:
    """lm-eval's ``"acc,none": 0.5`` entries as ``{"acc": 0.5}``; other filters keep their name after a comma."""
    metrics = {}
    for key, value in row.items():
        metric, _, filter_name = key.partition(",")
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not metric.endswith("_stderr") \
                and metric != "sample_len":   # the items scored: "n" below
            metrics[metric if filter_name in ("none", "") else key] = value
    return metrics


def _result(item, output: dict) -> dict:
    """One requested task or group: lm-eval's metrics (a group's aggregate), items scored, shots, where the data
    came from, and a group's subtasks."""
    reported = {**output.get("results", {}), **output.get("groups", {})}
    name = getattr(item, "task_name", None) or item.name
    leaves = item.get_all_tasks() if hasattr(item, "get_all_tasks") else [item]
    counts = {leaf.task_name: output.get("n-samples", {}).get(leaf.task_name, {}).get("effective")
              for leaf in leaves}
    config = leaves[0].config
    source = getattr(leaves[0], "depthprune_source", None)
    entry = {**_metrics(reported.get(name, {})), "n": sum(count or 0 for count in counts.values()),
             "num_fewshot": output.get("n-shot", {}).get(leaves[0].task_name),
             "paper_metric": PAPER_METRIC.get(name, "acc"), "split": config.test_split or config.validation_split,
             "data": f"--data-dir {source}/" if source else f"lm-eval: {config.dataset_path}",
             "lm_eval_task_version": output.get("versions", {}).get(name)}
    note = getattr(leaves[0], "depthprune_note", None)
    if note:
        entry["notes"] = note
    if len(leaves) > 1 or leaves[0] is not item:
        entry["subtasks"] = {leaf: {**_metrics(reported.get(leaf, {})), "n": count} for leaf, count in counts.items()}
    return entry


def run_tasks(model, tokenizer, tasks: list, limit: int | None = None, batch_size: int = 16) -> tuple[dict, str]:
    """Score ``tasks`` (from :func:`build_tasks`) with lm-eval's ``HFLM`` over ``model`` (:func:`hflm_class`).

    Args:
        model: a ``transformers`` causal LM in memory; tokenizer: its tokenizer.
        tasks: what :func:`build_tasks` returned.
        limit: only the first N items of each task (of each subject for MMLU), as lm-eval's ``--limit``.
        batch_size: sequences per forward pass (HFLM's ``batch_size``).

    Returns:
        ``({name: {"acc", "acc_norm", ..., "n", "num_fewshot", "split", "data", ...}}, lm-eval version)``; a group
        (``mmlu``) carries lm-eval's aggregate and its ``subtasks``.
    """
    import copy

    import lm_eval

    if limit is not None and limit < 1:
        raise DepthpruneError(f"--limit must be at least 1 (got {limit})")
    # HFLM gives a tokenizer without a pad token one (in place); the caller's tokenizer stays as it was.
    if getattr(tokenizer, "pad_token_id", None) is None:
        tokenizer = copy.deepcopy(tokenizer)
    with quiet_lm_eval():
        lm = hflm_class()(pretrained=model, tokenizer=tokenizer, backend="causal", batch_size=batch_size)
        # Our seeds stay ours: loglikelihood scoring draws nothing at random, and few-shot sampling has its own
        # seed (lm-eval's default, as its command line).
        output = lm_eval.simple_evaluate(model=lm, tasks=tasks, limit=limit, bootstrap_iters=0, log_samples=False,
                                         task_manager=task_manager(), random_seed=None, numpy_random_seed=None,
                                         torch_random_seed=None)
    return {(getattr(item, "task_name", None) or item.name): _result(item, output) for item in tasks}, \
        _lm_eval_version()


__all__ = ["DEFAULT_FEWSHOT", "build_tasks", "hflm_class", "run_tasks", "task_manager"]
