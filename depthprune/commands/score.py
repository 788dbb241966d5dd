"""Score every decoder layer by one or more criteria in one streaming pass; write scores.json, plots and a table.

Criteria: angular (Gromov et al.'s d(l, n) for every block size), bi (ShortGPT's Block Influence), ppl
(perplexity with the layer removed), taylor (Taylor+), magnitude (sum |w|, needs no data), sleb (iterative
removal). ``--sequential`` keeps only one layer's weights in memory (angular, bi, magnitude).
"""

from __future__ import annotations

import argparse

from .common import (GivenBooleanOptional, add_common_arguments, add_data_arguments, add_model_arguments,
                     add_output_arguments, check_data_options, data_spec_from_args, refuse_ignored)

HELP = "score layer importance (angular, bi, ppl, taylor, magnitude, sleb) and write scores.json + plots"


def add_arguments(parser) -> None:
    add_common_arguments(parser)
    add_model_arguments(parser)
    add_data_arguments(parser, samples=32, seq_len=512, default=None)
    parser.add_argument("--metrics", default="angular,bi",
                        help="comma-separated: angular, bi, ppl, taylor, magnitude, sleb")
    parser.add_argument("--tokens", choices=["last", "all"], default="last",
                        help="angular distance on the last real token of each sample, or on all real tokens")
    parser.add_argument("--keep-edges", action=GivenBooleanOptional, default=None,
                        help="never make the first 4 / last 2 layers candidates (default: on for taylor, magnitude)")
    parser.add_argument("--sleb-n", type=int, default=None, help="layers SLEB removes (default: a quarter)")
    parser.add_argument("--batch-size", type=int, default=8, help="calibration samples per forward")
    parser.add_argument("--sequential", action=argparse.BooleanOptionalAction, default=None,
                        help="read one decoder layer at a time from the safetensors (default: only if the model "
                             "does not fit in memory)")
    parser.add_argument("--no-plots", action="store_true", help="write scores.json only")
    add_output_arguments(parser, required=True)


def needs(args) -> list[tuple[str, str]]:
    """Optional packages this command will need (checked before any work, also for every step of a recipe)."""
    from ..scoring.api import score_needs

    return score_needs(args.model, args.metrics, args.data, args.output, plots=not args.no_plots)


def run(args) -> int:
    from ..scoring import score
    from ..scoring.api import ranking_table

    from ..scoring.base import get_entry, parse_metrics

    metrics = parse_metrics(args.metrics)   # unknown names fail here, before the model is loaded
    data_free = all(not get_entry(name).scorer_class.needs_data for name in metrics)
    check_data_options(args, not data_free, f"with --metrics {args.metrics} (no data is read)")
    if "angular" not in metrics:
        refuse_ignored(args, ("tokens",), "without the angular metric")
    if "sleb" not in metrics:
        refuse_ignored(args, ("sleb_n",), "without the sleb metric")
    data = data_spec_from_args(args) if args.data is not None else None
    scores = score(args.model, metrics=args.metrics, data=data, tokens=args.tokens, keep_edges=args.keep_edges,
                   sleb_n=args.sleb_n, batch_size=args.batch_size, sequential=args.sequential, output=args.output,
                   force=args.force, plots=not args.no_plots, dtype=args.dtype, device=args.device,
                   trust_remote_code=args.trust_remote_code)
    print(ranking_table(scores))
    if "sleb" in scores:
        print(f"sleb removal order: {scores['sleb']}")
    print(f"wrote {args.output}/scores.json")
    return 0
