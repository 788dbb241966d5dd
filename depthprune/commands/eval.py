"""Evaluate a model: token perplexity, zero-/few-shot multiple choice scored as lm-evaluation-harness does, speed.

Writes OUTPUT/results.json and OUTPUT/results.md and prints the table. Offline data (--data-dir) uses one folder
per task in the original release formats, as ../shared/data: wikitext2/wiki.test.raw, ptb/ptb.test.txt,
c4/*.jsonl, boolq/val.jsonl, piqa/valid.jsonl + valid-labels.lst, hellaswag/, winogrande/dev.jsonl +
dev-labels.lst, arc_easy/ARC-Easy-Test.jsonl, arc_challenge/ARC-Challenge-Test.jsonl, openbookqa/test.tsv,
mmlu/{dev,test}/*.csv.
"""

from __future__ import annotations

from .common import (add_common_arguments, add_model_arguments, add_output_arguments, non_negative_int, positive_int,
                     refuse_ignored)

HELP = "evaluate perplexity, lm-eval-style multiple choice and speed"


def _batch_sizes(text: str) -> list[int]:
    from ..errors import DepthpruneError

    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise DepthpruneError(f"--speed-batch-sizes takes integers separated by commas (got {text!r})") from None
    if not sizes:
        raise DepthpruneError("--speed-batch-sizes needs at least one batch size")
    return sizes


def add_arguments(parser) -> None:
    add_common_arguments(parser)
    add_model_arguments(parser)
    parser.add_argument("--ppl", default=None, metavar="NAMES", help="perplexity sources, comma-separated: builtin (offline, always there), wikitext2, ptb, c4")
    parser.add_argument("--seq-len", default="2048", help="perplexity window length(s), e.g. 128,2048")
    parser.add_argument("--ppl-max-windows", type=positive_int, default=None, help="score only the first N windows")
    parser.add_argument("--tasks", default=None, metavar="NAMES",
                        help="boolq,piqa,hellaswag,winogrande,arc_easy,arc_challenge,openbookqa,mmlu")
    parser.add_argument("--num-fewshot", type=non_negative_int, default=None,
                        help="examples per prompt (default: each task's own; MMLU 5, others 0)")
    parser.add_argument("--limit", type=positive_int, default=None,
                        help="only the first N items per task (per MMLU subject)")
    parser.add_argument("--batch-size", type=positive_int, default=16, help="sequences per forward pass for tasks")
    parser.add_argument("--backend", default="local", choices=("local", "lm-eval"),
                        help="local: offline evaluator; lm-eval: the harness itself on the same model wrapper")
    parser.add_argument("--data-dir", default=None, help="offline data folder (e.g. ../shared/data)")
    parser.add_argument("--speed", action="store_true", help="time prefill and KV-cached decode")
    parser.add_argument("--compare", default=None, metavar="BASE",
                        help="base model timed in the same process; reports speed ratios (implies --speed)")
    parser.add_argument("--speed-batch-sizes", default="1,4", help="batch sizes to time")
    parser.add_argument("--speed-prompt-len", type=int, default=128, help="prompt tokens for prefill timing")
    parser.add_argument("--speed-new-tokens", type=int, default=32, help="decode steps for decode timing")
    parser.add_argument("--speed-repeats", type=int, default=5, help="timed runs (median reported)")
    parser.add_argument("--speed-backend", choices=("torch", "llamacpp"), default="torch",
                        help="torch: the loaded model; llamacpp: the GGUF files in llama.cpp (llama-cpp-python), "
                             "batch size 1")
    add_output_arguments(parser)


def needs(args) -> list[tuple[str, str]]:
    """Optional packages this command will need (checked before any work, also for every step of a recipe)."""
    from ..evaluate.runner import eval_needs

    return eval_needs(args.model, args.ppl, args.tasks, args.data_dir, args.backend, args.compare)


SPEED_OPTIONS = ("speed_batch_sizes", "speed_prompt_len", "speed_new_tokens", "speed_repeats", "speed_backend")
TASK_OPTIONS = ("num_fewshot", "limit", "batch_size", "backend")
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


def run(args) -> int:
    from ..evaluate.runner import evaluate, markdown_table, write_results
    from ..saving import check_output_dir

    _check_options(args)
    check_output_dir(args.output, args.force)  # refuse before the slow part
    results = evaluate(args.model, ppl=args.ppl, seq_len=args.seq_len, tasks=args.tasks,
                       num_fewshot=args.num_fewshot, limit=args.limit, speed=args.speed, compare=args.compare,
                       data_dir=args.data_dir, batch_size=args.batch_size, ppl_max_windows=args.ppl_max_windows,
                       backend=args.backend, speed_batch_sizes=_batch_sizes(args.speed_batch_sizes),
                       speed_prompt_len=args.speed_prompt_len, speed_new_tokens=args.speed_new_tokens,
                       speed_repeats=args.speed_repeats, dtype=args.dtype, device=args.device,
                       trust_remote_code=args.trust_remote_code, speed_backend=args.speed_backend)
    write_results(results, args.output, force=args.force)
    print(markdown_table(results))
    print(f"saved to {args.output}")
    return 0
