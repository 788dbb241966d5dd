"""Score every decoder layer by one or more criteria in one streaming pass; write scores.json, plots and a table.

Criteria: angular (Gromov et al.'s d(l, n) for every block size), bi (ShortGPT's Block Influence), ppl
(perplexity with the layer removed), taylor (Taylor+), magnitude (sum |w|, needs no data), sleb (iterative
removal). ``--sequential`` keeps only one layer's weights in memory (angular, bi, magnitude).
"""

from __future__ import annotations

from .common import (COMMON_OPTIONS, TOKEN_POSITIONS, TOKENS_RENAMED, check_data_options, data_options,
                     data_spec_from_args, model_options, output_options, refuse_ignored)
from .schema import Option, add_options

HELP = "score layer importance (angular, bi, ppl, taylor, magnitude, sleb) and write scores.json + plots"

OPTIONS = [
    *COMMON_OPTIONS,
    *model_options(),
    *data_options(samples=32, seq_len=512, default=None),
    Option("metrics", default="angular,bi", help="comma-separated: angular, bi, ppl, taylor, magnitude, sleb"),
    TOKEN_POSITIONS, TOKENS_RENAMED,
    Option("keep_edges", bool, None,
           help="never make the first 4 / last 2 layers candidates (default: on for taylor, magnitude)"),
    Option("sleb_n", int, None, help="layers SLEB removes (default: a quarter)"),
    Option("batch_size", int, 8, help="calibration samples per forward"),
    Option("sequential", bool, None, help="read one decoder layer at a time from the safetensors (default: only if "
                                          "the model does not fit in memory)"),
    Option("plots", bool, True, help="write scores.json only"),
    Option("show_progress", bool, True, cli=False),
    *output_options(required=True),
]


def add_arguments(parser) -> None:
    add_options(parser, OPTIONS)


def needs(args) -> list[tuple[str, str]]:
    """Optional packages this command will need (checked before any work, also for every step of a recipe)."""
    from ..scoring.api import score_needs

    return score_needs(args.model, args.metrics, args.data, args.output, plots=args.plots)


def call(args) -> dict:
    """The scores (what scores.json holds)."""
    from ..scoring import score
    from ..scoring.base import get_entry, parse_metrics

    metrics = parse_metrics(args.metrics)   # unknown names fail here, before the model is loaded
    data_free = all(not get_entry(name).scorer_class.needs_data for name in metrics)
    check_data_options(args, not data_free, f"with --metrics {args.metrics} (no data is read)")
    if "angular" not in metrics:
        refuse_ignored(args, ("token_positions",), "without the angular metric")
    if "sleb" not in metrics:
        refuse_ignored(args, ("sleb_n",), "without the sleb metric")
    data = data_spec_from_args(args) if args.data is not None else None
    return score(args.model, metrics=args.metrics, data=data, tokens=args.token_positions,
                 keep_edges=args.keep_edges, sleb_n=args.sleb_n, batch_size=args.batch_size,
                 sequential=args.sequential, output=args.output, force=args.force, plots=args.plots,
                 dtype=args.dtype, device=args.device, trust_remote_code=args.trust_remote_code,
                 show_progress=args.show_progress)


def run(args) -> int:
    from ..scoring.api import ranking_table

    scores = call(args)
    print(ranking_table(scores))
    if "sleb" in scores:
        print(f"sleb removal order: {scores['sleb']}")
    print(f"wrote {args.output}/scores.json")
    return 0
