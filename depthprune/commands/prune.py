"""Remove decoder layers and save an ordinary Hugging Face checkpoint (with depthprune.json provenance).

Either name the layers — ``--layers 20-27,3`` removes layers 3 and 20 to 27 (0-based, ranges inclusive) — or let a
criterion (listed below) choose them: ``--method NAME --n N`` (or ``--ratio R``) with ``--data SPEC`` for
calibration, or ``--scores scores.json`` from ``depthprune score`` to reuse earlier scores.
``--dry-run`` prints the plan and the scores that decided it.
"""

from __future__ import annotations

from .common import (DATA_OPTIONS, GivenBooleanOptional, add_common_arguments, add_data_arguments,
                     add_model_arguments, add_output_arguments, check_data_options, data_spec_from_args, print_json,
                     refuse_ignored)
from .criteria import (add_criterion_options, criteria_epilog, criterion_option_values, keep_edges_help,
                       refuse_options_of_other_criteria)

HELP = "remove decoder layers (named, or chosen by a criterion) and save the pruned checkpoint"


def add_arguments(parser) -> None:
    add_common_arguments(parser)
    add_model_arguments(parser)
    choice = parser.add_mutually_exclusive_group(required=True)
    choice.add_argument("--layers", help="layers to remove, 0-based, e.g. 20-27,3")
    from ..scoring import CRITERIA

    choice.add_argument("--method", choices=CRITERIA.names(), help="choose the layers by this criterion")
    count = parser.add_mutually_exclusive_group()
    count.add_argument("--n", type=int, default=None, help="with --method: number of layers to remove")
    count.add_argument("--ratio", type=float, default=None, help="with --method: fraction of layers to remove")
    parser.add_argument("--scores", default=None, metavar="FILE", help="reuse a scores.json from depthprune score")
    add_data_arguments(parser, samples=32, seq_len=512, default=None)   # calibration data for --method
    add_criterion_options(parser, with_count=False)     # --tokens, ...; --n sets SLEB's count
    parser.add_argument("--keep-edges", action=GivenBooleanOptional, default=None,
                        help=keep_edges_help("never remove the first 4 / last 2 layers"))
    parser.add_argument("--batch-size", type=int, default=8, help="calibration samples per forward")
    parser.add_argument("--allow-final-layer", action="store_true", help="permit removing the last layer")
    parser.add_argument("--allow-first-layer", action="store_true", help="permit removing layer 0")
    parser.add_argument("--allow-single-layer", action="store_true", help="permit a plan that leaves one layer")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and write nothing")
    parser.add_argument("--format", choices=["safetensors", "gguf"], default=None,
                        help="safetensors (a checkpoint folder) or gguf (one file, made from a GGUF source with its "
                             "quantisation kept); default: gguf when --output ends in .gguf")
    parser.add_argument("--surgery", choices=["auto", "file", "memory"], default="auto",
                        help="auto: copy the kept tensors at the file level when the layers are known without the "
                             "weights and the source allows it (it says so); file: insist; memory: load the model")
    add_output_arguments(parser, required=False)
    parser.epilog = criteria_epilog()


def needs(args) -> list[tuple[str, str]]:
    """Optional packages this command will need (checked before any work, also for every step of a recipe)."""
    from ..prune import prune_needs

    return prune_needs(args.model, args.method, args.data, args.scores)


def _check_options(args) -> None:
    """Refuse data and scoring options that this combination would ignore (a typo'd --data path included)."""
    from ..scoring import CRITERIA

    scoring_options = ("keep_edges", "batch_size", *criterion_option_values(args))
    if args.layers is not None:
        refuse_ignored(args, ("data", *scoring_options, *DATA_OPTIONS[1:]),
                       "with --layers (the layers are named, nothing is scored)")
        return
    if args.scores is not None:
        check_data_options(args, False, "with --scores (the scores are reused)")
        refuse_ignored(args, scoring_options, "with --scores (the scores are reused)")
        return
    entry = CRITERIA.get(args.method, option="--method")
    if not entry.scored:
        check_data_options(args, False, f"with --method {args.method} (it reads no data)")
        refuse_ignored(args, scoring_options, f"with --method {args.method} (nothing is scored)")
        return
    check_data_options(args, entry.needs_data, f"with --method {args.method} (it reads no data)")
    refuse_options_of_other_criteria(args, [args.method], f"with --method {args.method} (it is {{owners}}'s option)")


def run(args) -> int:
    from ..prune import prune

    _check_options(args)
    data = data_spec_from_args(args) if args.data is not None else None
    plan = prune(args.model, layers=args.layers, output=args.output, force=args.force, dry_run=args.dry_run,
                 allow_final_layer=args.allow_final_layer, allow_first_layer=args.allow_first_layer,
                 allow_single_layer=args.allow_single_layer, dtype=args.dtype, device=args.device,
                 trust_remote_code=args.trust_remote_code, method=args.method, n=args.n, ratio=args.ratio,
                 data=data, scores=args.scores, keep_edges=args.keep_edges, batch_size=args.batch_size,
                 format=args.format, surgery=args.surgery, **criterion_option_values(args))
    print(plan.summary())
    if args.dry_run:
        print_json(plan.to_dict())
    else:
        print(f"saved to {args.output}")
    return 0
