"""Remove decoder layers and save an ordinary Hugging Face checkpoint (with depthprune.json provenance).

Either name the layers — ``--layers 20-27,3`` removes layers 3 and 20 to 27 (0-based, ranges inclusive) — or let a
criterion choose them: ``--method angular|bi|ppl|taylor|magnitude|sleb|last --n N`` (or ``--ratio R``) with
``--data SPEC`` for calibration, or ``--scores scores.json`` from ``depthprune score`` to reuse earlier scores.
``--dry-run`` prints the plan and the scores that decided it.
"""

from __future__ import annotations

from .common import (DATA_OPTIONS, GivenBooleanOptional, add_common_arguments, add_data_arguments,
                     add_model_arguments, add_output_arguments, check_data_options, data_spec_from_args, print_json,
                     refuse_ignored)

HELP = "remove decoder layers (named, or chosen by a criterion) and save the pruned checkpoint"


def add_arguments(parser) -> None:
    add_common_arguments(parser)
    add_model_arguments(parser)
    choice = parser.add_mutually_exclusive_group(required=True)
    choice.add_argument("--layers", help="layers to remove, 0-based, e.g. 20-27,3")
    choice.add_argument("--method", choices=["angular", "bi", "ppl", "taylor", "magnitude", "sleb", "last"],
                        help="choose the layers by this criterion")
    count = parser.add_mutually_exclusive_group()
    count.add_argument("--n", type=int, default=None, help="with --method: number of layers to remove")
    count.add_argument("--ratio", type=float, default=None, help="with --method: fraction of layers to remove")
    parser.add_argument("--scores", default=None, metavar="FILE", help="reuse a scores.json from depthprune score")
    add_data_arguments(parser, samples=32, seq_len=512, default=None)   # calibration data for --method
    parser.add_argument("--tokens", choices=["last", "all"], default="last", help="angular: tokens compared")
    parser.add_argument("--keep-edges", action=GivenBooleanOptional, default=None,
                        help="never remove the first 4 / last 2 layers (default: on for taylor, magnitude)")
    parser.add_argument("--batch-size", type=int, default=8, help="calibration samples per forward")
    parser.add_argument("--allow-final-layer", action="store_true", help="permit removing the last layer")
    parser.add_argument("--allow-first-layer", action="store_true", help="permit removing layer 0")
    parser.add_argument("--allow-single-layer", action="store_true", help="permit a plan that leaves one layer")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and write nothing")
    add_compensation_arguments(parser)
    add_output_arguments(parser, required=False)


def needs(args) -> list[tuple[str, str]]:
    """Optional packages this command will need (checked before any work, also for every step of a recipe)."""
    from ..prune import prune_needs

    return prune_needs(args.model, args.method, args.data, args.scores, args.compensate, args.max_ppl_ratio)


SCORING_OPTIONS = ("tokens", "keep_edges", "batch_size")


def _check_options(args) -> None:
    """Refuse data and scoring options that this combination would ignore (a typo'd --data path included)."""
    if args.compensate != "none" or args.max_ppl_ratio is not None:   # they read --data whatever chose the layers
        check_data_options(args, True)
        if args.layers is not None or args.scores is not None or args.method == "last":
            how = "--layers" if args.layers is not None else "--scores" if args.scores is not None else "--method last"
            refuse_ignored(args, ("tokens", "keep_edges"), f"with {how} (nothing is scored)")
        elif args.method != "angular":
            refuse_ignored(args, ("tokens",), f"with --method {args.method} (it is angular's option)")
        return
    if args.layers is not None:
        refuse_ignored(args, ("data", *SCORING_OPTIONS, *DATA_OPTIONS[1:]),
                       "with --layers (the layers are named, nothing is scored)")
        return
    if args.scores is not None:
        check_data_options(args, False, "with --scores (the scores are reused)")
        refuse_ignored(args, SCORING_OPTIONS, "with --scores (the scores are reused)")
        return
    if args.method == "last":
        check_data_options(args, False, "with --method last (it reads no data)")
        refuse_ignored(args, SCORING_OPTIONS, "with --method last (nothing is scored)")
        return
    check_data_options(args, args.method != "magnitude", f"with --method {args.method} (it reads no data)")
    if args.method != "angular":
        refuse_ignored(args, ("tokens",), f"with --method {args.method} (it is angular's option)")


def add_compensation_arguments(parser) -> None:
    """--compensate, and the quality gate's --max-ppl-ratio and --target-params (depthprune.compensate)."""
    parser.add_argument("--compensate", default="none", metavar="METHOD",
                        help="fold a training-free compensation into the weights, calibrated on --data: linear "
                             "(ReplaceMe least squares), cosine (ReplaceMe cosine), scale (Prune&Comp), none")
    parser.add_argument("--max-ppl-ratio", type=float, default=None, metavar="R",
                        help="with --method, instead of --n: remove as many layers as keep calibration perplexity "
                             "within R x dense (after --compensate), in the criterion's order")
    parser.add_argument("--target-params", default=None, metavar="P",
                        help="with --method, instead of --n: remove the fewest layers that leave at most P "
                             "parameters (100M, 1.2B)")


def print_compensation(output) -> None:
    """One line: calibration perplexity dense, pruned and compensated, when the saved model was compensated."""
    from ..saving import read_metadata

    record = (read_metadata(output) or {}).get("compensation") or {}
    quality = record.get("calibration_ppl") or {}
    if quality:
        print(f"compensated ({record['method']}): calibration perplexity dense {quality['dense']:.4g}, pruned "
              f"{quality['pruned']:.4g} -> compensated {quality['compensated']:.4g} (in-sample)")


def run(args) -> int:
    from ..prune import prune

    _check_options(args)
    data = data_spec_from_args(args) if args.data is not None else None
    plan = prune(args.model, layers=args.layers, output=args.output, force=args.force, dry_run=args.dry_run,
                 allow_final_layer=args.allow_final_layer, allow_first_layer=args.allow_first_layer,
                 allow_single_layer=args.allow_single_layer, dtype=args.dtype, device=args.device,
                 trust_remote_code=args.trust_remote_code, method=args.method, n=args.n, ratio=args.ratio,
                 data=data, scores=args.scores, tokens=args.tokens, keep_edges=args.keep_edges,
                 batch_size=args.batch_size, compensate=args.compensate, max_ppl_ratio=args.max_ppl_ratio,
                 target_params=args.target_params)
    print(plan.summary())
    if args.dry_run:
        print_json(plan.to_dict())
    else:
        print_compensation(args.output)
        print(f"saved to {args.output}")
    return 0
