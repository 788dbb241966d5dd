"""Score every decoder layer by one or more criteria in one streaming pass; write scores.json, plots and a table.

``--metrics`` takes any registered criterion (listed below). ``--sequential`` keeps only one layer's weights in
memory (for the criteria that need neither gradients nor the later layers, such as angular and bi).
"""

from __future__ import annotations

import argparse

from .common import (GivenBooleanOptional, add_common_arguments, add_data_arguments, add_model_arguments,
                     add_output_arguments, check_data_options, data_spec_from_args)
from .criteria import (add_criterion_options, criteria_epilog, criterion_option_values, keep_edges_help, names_help,
                       refuse_options_of_other_criteria)

HELP = "score layer importance by each criterion and write scores.json + plots"


def add_arguments(parser) -> None:
    add_common_arguments(parser)
    add_model_arguments(parser)
    add_data_arguments(parser, samples=32, seq_len=512, default=None)
    parser.add_argument("--metrics", default="angular,bi", help=f"comma-separated: {names_help(scored_only=True)}")
    add_criterion_options(parser)       # --tokens, --sleb-n, and those of any criterion registered since
    parser.add_argument("--keep-edges", action=GivenBooleanOptional, default=None,
                        help=keep_edges_help("never make the first 4 / last 2 layers candidates"))
    parser.add_argument("--batch-size", type=int, default=8, help="calibration samples per forward")
    parser.add_argument("--sequential", action=argparse.BooleanOptionalAction, default=None,
                        help="read one decoder layer at a time from the safetensors (default: only if the model "
                             "does not fit in memory)")
    parser.add_argument("--no-plots", action="store_true", help="write scores.json only")
    add_output_arguments(parser, required=True)
    parser.epilog = criteria_epilog(scored_only=True)


def needs(args) -> list[tuple[str, str]]:
    """Optional packages this command will need (checked before any work, also for every step of a recipe)."""
    from ..scoring.scores import score_needs

    return score_needs(args.model, args.metrics, args.data, args.output, plots=not args.no_plots)


def run(args) -> int:
    from ..scoring import CRITERIA, parse_metrics, score
    from ..scoring.ranking import ranking_table

    metrics = parse_metrics(args.metrics)   # unknown names fail here, before the model is loaded
    data_free = all(not CRITERIA.get(name).needs_data for name in metrics)
    check_data_options(args, not data_free, f"with --metrics {args.metrics} (no data is read)")
    refuse_options_of_other_criteria(args, metrics, "without the {owners} metric")
    data = data_spec_from_args(args) if args.data is not None else None
    scores = score(args.model, metrics=args.metrics, data=data, keep_edges=args.keep_edges,
                   batch_size=args.batch_size, sequential=args.sequential, output=args.output,
                   force=args.force, plots=not args.no_plots, dtype=args.dtype, device=args.device,
                   trust_remote_code=args.trust_remote_code, **criterion_option_values(args))
    print(ranking_table(scores))
    for name in metrics:
        if CRITERIA.get(name).selection == "order":
            print(f"{name} removal order: {scores[name]}")
    print(f"wrote {args.output}/scores.json")
    return 0
