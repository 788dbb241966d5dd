"""Evaluate a model: token perplexity, zero-/few-shot tasks scored by lm-evaluation-harness itself, speed.

Writes OUTPUT/results.json and OUTPUT/results.md and prints the table. Offline data (--data-dir) uses one folder
per task in the original release formats, as ../shared/data: wikitext2/wiki.test.raw, ptb/ptb.test.txt,
c4/*.jsonl, boolq/val.jsonl, piqa/valid.jsonl + valid-labels.lst, hellaswag/, winogrande/dev.jsonl +
dev-labels.lst, arc_easy/ARC-Easy-Test.jsonl, arc_challenge/ARC-Challenge-Test.jsonl, openbookqa/test.tsv,
mmlu/{dev,test}/*.csv. Any other lm-eval task runs by name with the data lm-eval loads itself (Hugging Face cache
or hub).
"""

from __future__ import annotations

from .common import (COMMON_OPTIONS, model_options, non_negative_int, output_options, positive_int,
                     refuse_ignored)
from .schema import Option

HELP = "evaluate perplexity, lm-eval tasks and speed"


def _batch_sizes(value) -> list[int]:
    from ..errors import DepthpruneError

    if isinstance(value, (list, tuple)):
        return [int(size) for size in value]
    try:
        sizes = [int(part) for part in str(value).split(",") if part.strip()]
    except ValueError:
        raise DepthpruneError(f"--speed-batch-sizes takes integers separated by commas (got {value!r})") from None
    if not sizes:
        raise DepthpruneError("--speed-batch-sizes needs at least one batch size")
    return sizes


OPTIONS = [
    *COMMON_OPTIONS,
    *model_options(),
    Option("ppl", metavar="NAMES",
           help="perplexity sources, comma-separated: builtin (offline, always there), wikitext2, ptb, c4"),
    Option("seq_len", default="2048", help="perplexity window length(s), e.g. 128,2048"),
    Option("ppl_max_windows", positive_int, None, help="score only the first N windows"),
    Option("tasks", metavar="NAMES",
           help="lm-eval tasks, scored by lm-eval: boolq,piqa,hellaswag,winogrande,arc_easy,arc_challenge,"
                "openbookqa,mmlu read from --data-dir; any other lm-eval task, group or tag by name"),
    Option("num_fewshot", non_negative_int, None,
           help="examples per prompt (default: MMLU 5, others lm-eval's own, mostly 0)"),
    Option("limit", positive_int, None, help="only the first N items per task (per MMLU subject)"),
    Option("batch_size", positive_int, 16, help="sequences per forward pass for tasks"),
    Option("data_dir", help="offline data folder (e.g. ../shared/data)"),
    Option("speed", bool, False, help="time prefill and KV-cached decode"),
    Option("compare", metavar="BASE",
           help="base model timed in the same process; reports speed ratios (implies --speed)"),
    Option("speed_batch_sizes", default="1,4", help="batch sizes to time"),
    Option("speed_prompt_len", int, 128, help="prompt tokens for prefill timing"),
    Option("speed_new_tokens", int, 32, help="decode steps for decode timing"),
    Option("speed_repeats", int, 5, help="timed runs (median reported)"),
    Option("speed_backend", default="torch", choices=("torch", "llamacpp"),
           help="torch: the loaded model; llamacpp: the GGUF files in llama.cpp (llama-cpp-python), batch size 1"),
    *output_options(),
]


def needs(args) -> list[tuple[str, str]]:
    """Optional packages this command will need (checked before any work, also for every step of a recipe)."""
    from ..evaluate.runner import eval_needs

    return eval_needs(args.model, args.ppl, args.tasks, args.data_dir, args.compare)


SPEED_OPTIONS = ("speed_batch_sizes", "speed_prompt_len", "speed_new_tokens", "speed_repeats", "speed_backend")
TASK_OPTIONS = ("num_fewshot", "limit", "batch_size")
PPL_OPTIONS = ("seq_len", "ppl_max_windows")


def _check_options(args) -> None:
    """Refuse options that belong to a part of the evaluation that was not asked for."""
    if not (args.speed or args.compare):
        refuse_ignored(args, SPEED_OPTIONS, "without --speed (or --compare)", fix="add --speed or drop")
    if args.speed_backend == "llamacpp":
        refuse_ignored(args, ("speed_batch_sizes",), "with --speed-backend llamacpp (it times batch size 1)")
    if not args.tasks:
        refuse_ignored(args, TASK_OPTIONS, "without --tasks", fix="add --tasks NAMES or drop")
    if not args.ppl:
        refuse_ignored(args, PPL_OPTIONS, "without --ppl", fix="add --ppl NAMES or drop")
    if not (args.ppl or args.tasks):
        refuse_ignored(args, ("data_dir",), "without --ppl or --tasks", fix="add one or drop")


def call(args) -> dict:
    """The results (what results.json holds), written to ``output`` (in Python: if one is given)."""
    from ..evaluate.runner import evaluate, write_results
    from ..saving import check_output_dir

    _check_options(args)
    if args.output is not None:
        check_output_dir(args.output, args.force)  # refuse before the slow part
    results = evaluate(args.model, ppl=args.ppl, seq_len=args.seq_len, tasks=args.tasks,
                       num_fewshot=args.num_fewshot, limit=args.limit, speed=args.speed, compare=args.compare,
                       data_dir=args.data_dir, batch_size=args.batch_size, ppl_max_windows=args.ppl_max_windows,
                       speed_batch_sizes=_batch_sizes(args.speed_batch_sizes),
                       speed_prompt_len=args.speed_prompt_len, speed_new_tokens=args.speed_new_tokens,
                       speed_repeats=args.speed_repeats, dtype=args.dtype, device=args.device,
                       trust_remote_code=args.trust_remote_code, speed_backend=args.speed_backend)
    if args.output is not None:
        write_results(results, args.output, force=args.force)
    return results


def run(args) -> int:
    from ..evaluate.runner import markdown_table

    results = call(args)
    print(markdown_table(results))
    print(f"saved to {args.output}")
    return 0
