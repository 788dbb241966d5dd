"""Remove decoder layers and save an ordinary Hugging Face checkpoint (with depthprune.json provenance).

Either name the layers — ``--layers 20-27,3`` removes layers 3 and 20 to 27 (0-based, ranges inclusive) — or let a
criterion (listed below) choose them: ``--method NAME --n N`` (or ``--ratio R``) with ``--data SPEC`` for
calibration, or ``--scores scores.json`` from ``depthprune score`` to reuse earlier scores.
``--dry-run`` prints the plan and the scores that decided it.
"""

from __future__ import annotations

from .common import (COMMON_OPTIONS, DATA_OPTIONS, TOKENS_RENAMED, check_data_options, data_options,
                     data_spec_from_args, model_options, output_options, print_json, refuse_ignored)
from .criteria import (criterion_option_values, criterion_schema, keep_edges_help,
                       refuse_options_of_other_criteria)
from .schema import Option

HELP = "remove decoder layers (named, or chosen by a criterion) and save the pruned checkpoint"


def options() -> list:
    """The verb's schema, read from the criterion registry each time (so a plug-in's options appear)."""
    from ..scoring import CRITERIA

    return [
        *COMMON_OPTIONS,
        *model_options(),
        Option("layers", exclusive="choice", required=True, help="layers to remove, 0-based, e.g. 20-27,3"),
        Option("method", exclusive="choice", required=True, choices=CRITERIA.names(),
               help="choose the layers by this criterion"),
        Option("n", int, None, exclusive="count", help="with --method: number of layers to remove"),
        Option("ratio", float, None, exclusive="count", help="with --method: fraction of layers to remove"),
        Option("scores", metavar="FILE", help="reuse a scores.json from depthprune score (or its dict in Python)"),
        *data_options(samples=32, seq_len=512, default=None),   # calibration data for --method
        *criterion_schema(with_count=False),    # --token-positions, ...; --n sets SLEB's count
        TOKENS_RENAMED,
        Option("keep_edges", bool, None, help=keep_edges_help("never remove the first 4 / last 2 layers")),
        Option("batch_size", int, 8, help="calibration samples per forward"),
        Option("allow_final_layer", bool, False, help="permit removing the last layer"),
        Option("allow_first_layer", bool, False, help="permit removing layer 0"),
        Option("allow_single_layer", bool, False, help="permit a plan that leaves one layer"),
        Option("dry_run", bool, False, help="print the plan and write nothing"),
        Option("format", choices=("safetensors", "gguf"),
               help="safetensors (a checkpoint folder) or gguf (one file, made from a GGUF source with its "
                    "quantisation kept); default: gguf when --output ends in .gguf"),
        Option("surgery", default="auto", choices=("auto", "file", "memory"),
               help="auto: copy the kept tensors at the file level when the layers are known without the weights "
                    "and the source allows it (it says so); file: insist; memory: load the model"),
        *compensation_options(),
        *output_options(required=False),
    ]


def epilog() -> str:
    """``--help``'s closing list of the registered criteria."""
    from .criteria import criteria_epilog

    return criteria_epilog()


def needs(args) -> list[tuple[str, str]]:
    """Optional packages this command will need (checked before any work, also for every step of a recipe)."""
    from ..prune import prune_needs

    return prune_needs(args.model, args.method, args.data, args.scores, args.compensate, args.max_ppl_ratio)


def _check_options(args) -> None:
    """Refuse data and scoring options that this combination would ignore (a typo'd --data path included)."""
    from ..scoring import CRITERIA

    scoring_options = ("keep_edges", "batch_size", *criterion_option_values(args))
    if args.compensate != "none" or args.max_ppl_ratio is not None:   # they read --data whatever chose the layers
        _check_compensation_options(args)
        return
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


def compensation_options() -> list:
    """--compensate, and the quality gate's --max-ppl-ratio and --target-params (depthprune.compensate)."""
    return [
        Option("compensate", default="none", metavar="METHOD",
               help="fold a training-free compensation into the weights, calibrated on --data: linear (ReplaceMe "
                    "least squares), cosine (ReplaceMe cosine), scale (Prune&Comp), none"),
        Option("max_ppl_ratio", float, None, metavar="R",
               help="with --method, instead of --n: remove as many layers as keep calibration perplexity within "
                    "R x dense (after --compensate), in the criterion's order"),
        Option("target_params", default=None, metavar="P",
               help="with --method, instead of --n: remove the fewest layers that leave at most P parameters "
                    "(100M, 1.2B)"),
    ]


def _check_compensation_options(args) -> None:
    """With --compensate or --max-ppl-ratio the data is read whatever chose the layers; scoring options still
    need something scored."""
    from ..scoring import CRITERIA

    check_data_options(args, True)
    criterion_options = ("keep_edges", *criterion_option_values(args))
    if args.layers is not None or args.scores is not None or not CRITERIA.get(args.method, option="--method").scored:
        how = "--layers" if args.layers is not None else "--scores" if args.scores is not None else \
            f"--method {args.method}"
        refuse_ignored(args, criterion_options, f"with {how} (nothing is scored)")
    else:
        refuse_options_of_other_criteria(args, [args.method], f"with --method {args.method} (it is {{owners}}'s option)")


def print_compensation(output) -> None:
    """One line: calibration perplexity dense, pruned and compensated, when the saved model was compensated."""
    from ..metadata import COMPENSATION_KEY
    from ..saving import read_metadata

    record = (read_metadata(output) or {}).get(COMPENSATION_KEY) or {}
    quality = record.get("calibration_ppl") or {}
    if quality:
        print(f"compensated ({record['method']}): calibration perplexity dense {quality['dense']:.4g}, pruned "
              f"{quality['pruned']:.4g} -> compensated {quality['compensated']:.4g} (in-sample, "
              f"{quality.get('tokens', record.get('calibration_tokens'))} tokens)")


def call(args):
    """The :class:`~depthprune.PrunePlan` (the checkpoint is saved unless ``dry_run``)."""
    from ..prune import prune

    _check_options(args)
    data = data_spec_from_args(args) if args.data is not None else None
    return prune(args.model, layers=args.layers, output=args.output, force=args.force, dry_run=args.dry_run,
                 allow_final_layer=args.allow_final_layer, allow_first_layer=args.allow_first_layer,
                 allow_single_layer=args.allow_single_layer, dtype=args.dtype, device=args.device,
                 trust_remote_code=args.trust_remote_code, method=args.method, n=args.n, ratio=args.ratio,
                 data=data, scores=args.scores, keep_edges=args.keep_edges, batch_size=args.batch_size,
                 format=args.format, surgery=args.surgery, compensate=args.compensate,
                 max_ppl_ratio=args.max_ppl_ratio, target_params=args.target_params, **criterion_option_values(args))


def run(args) -> int:
    plan = call(args)
    print(plan.summary())
    if args.dry_run:
        print_json(plan.to_dict())
    else:
        print_compensation(args.output)
        print(f"saved to {args.output}")
    return 0
