"""Score every decoder layer by one or more criteria in one streaming pass; write scores.json, plots and a table.

The criteria are those registered (listed at the end of ``--help``); ``--sequential`` keeps only one layer's
weights in memory (for the criteria that need neither gradients nor the whole model).
"""

from __future__ import annotations

from .common import (COMMON_OPTIONS, TOKENS_RENAMED, check_data_options, data_options, data_spec_from_args,
                     model_options, output_options)
from .criteria import (criterion_option_values, criterion_schema, keep_edges_help, names_help,
                       refuse_options_of_other_criteria)
from .schema import Option

HELP = "score layer importance by each criterion and write scores.json + plots"


def options() -> list:
    """The verb's schema, read from the criterion registry each time (so a plug-in's options appear)."""
    return [
        *COMMON_OPTIONS,
        *model_options(),
        *data_options(samples=32, seq_len=512, default=None),
        Option("metrics", default="angular,bi", help=f"comma-separated: {names_help(scored_only=True)}"),
        *criterion_schema(),            # --token-positions, --sleb-n, and those of any criterion registered since
        TOKENS_RENAMED,
        Option("keep_edges", bool, None, help=keep_edges_help("never make the first 4 / last 2 layers candidates")),
        Option("batch_size", int, 8, help="calibration samples per forward"),
        Option("sequential", bool, None, help="read one decoder layer at a time from the safetensors (default: only "
                                              "if the model does not fit in memory)"),
        Option("plots", bool, True, help="write scores.json only"),
        Option("show_progress", bool, True, cli=False),
        *output_options(required=True),
    ]


def epilog() -> str:
    """``--help``'s closing list of the registered criteria."""
    from .criteria import criteria_epilog

    return criteria_epilog(scored_only=True)


def needs(args) -> list[tuple[str, str]]:
    """Optional packages this command will need (checked before any work, also for every step of a recipe)."""
    from ..scoring.scores import score_needs

    return score_needs(args.model, args.metrics, args.data, args.output, plots=args.plots)


def call(args) -> dict:
    """The scores (what scores.json holds)."""
    from ..scoring import CRITERIA, parse_metrics, score

    metrics = parse_metrics(args.metrics)   # unknown names fail here, before the model is loaded
    data_free = all(not CRITERIA.get(name).needs_data for name in metrics)
    check_data_options(args, not data_free, f"with --metrics {args.metrics} (no data is read)")
    refuse_options_of_other_criteria(args, metrics, "without the {owners} metric")
    data = data_spec_from_args(args) if args.data is not None else None
    return score(args.model, metrics=args.metrics, data=data, keep_edges=args.keep_edges,
                 batch_size=args.batch_size, sequential=args.sequential, output=args.output, force=args.force,
                 plots=args.plots, dtype=args.dtype, device=args.device, trust_remote_code=args.trust_remote_code,
                 show_progress=args.show_progress, **criterion_option_values(args))


def run(args) -> int:
    from ..scoring import CRITERIA, parse_metrics
    from ..scoring.ranking import ranking_table

    scores = call(args)
    print(ranking_table(scores))
    for name in parse_metrics(args.metrics):
        if CRITERIA.get(name).selection == "order":
            print(f"{name} removal order: {scores[name]}")
    print(f"wrote {args.output}/scores.json")
    return 0
