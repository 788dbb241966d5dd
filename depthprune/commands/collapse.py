"""Collapse decoder layers with LaCo (arXiv 2402.11187): fold rear layers into a prior one while the model's last
hidden states (after the final norm, flattened per calibration block) stay close to the original's.

Walks from ``high - combine`` down to ``low``; a merge is accepted when the mean cosine similarity on the calibration
blocks is above ``--threshold``. ``--merge paper`` (default) applies the paper's RDSC formula
``W_l + sum_k (W_{l+k} - W_l)`` to every attention/MLP weight and bias, norms stay layer l's; ``--merge notebook``
reproduces the official notebooks' in-place bug (layer l takes layer l+m's weights). ``--target-layers N`` searches
the threshold that removes exactly N layers. Layers are 0-based; the output's depthprune.json records every merge
and rejected candidate in the original numbering, beside a plot of the similarity per candidate.
"""

from __future__ import annotations

from .common import (add_common_arguments, add_data_arguments, add_model_arguments, add_output_arguments, positive_int,
                     print_json)

HELP = "merge rear layers into prior ones (LaCo) and save the collapsed checkpoint"


def add_arguments(parser) -> None:
    add_common_arguments(parser)
    add_model_arguments(parser)
    add_data_arguments(parser, samples=5, seq_len=128)
    parser.add_argument("--combine", "-C", type=int, default=7,
                        help="C: layers combined per merge (C-1 folded into the base); paper: 7 for Llama2-13B")
    parser.add_argument("--low", type=int, default=0, help="lowest base layer the walk considers (0-based)")
    parser.add_argument("--high", type=int, default=None,
                        help="top of the range; the walk starts at high - combine (default: the last layer)")
    parser.add_argument("--interval", "-I", type=int, default=1, help="I: step down by this after a merge")
    parser.add_argument("--threshold", "-T", type=float, default=None,
                        help="T: accept a merge when the similarity is above it (default 0.45 without a target)")
    parser.add_argument("--merge", choices=["paper", "notebook"], default="paper",
                        help="paper: RDSC formula; notebook: the official notebooks' in-place bug (copy of l+m)")
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--target-layers", type=int, default=None,
                        help="remove exactly this many layers, searching the threshold")
    target.add_argument("--target-ratio", type=float, default=None,
                        help="remove this fraction of the layers (rounded), searching the threshold")
    parser.add_argument("--batch-size", type=positive_int, default=8, help="calibration blocks per forward pass")
    parser.add_argument("--no-plots", action="store_true", help="do not draw the similarity plot")
    parser.add_argument("--dry-run", action="store_true", help="run the walk, print the outcome, write nothing")
    add_output_arguments(parser, required=False)


def needs(args) -> list[tuple[str, str]]:
    """Optional packages this command will need (checked before any work, also for every step of a recipe)."""
    from ..collapse import collapse_needs

    return collapse_needs(args.model, args.data, plots=not args.no_plots)


def run(args) -> int:
    from ..collapse import collapse
    from .common import data_spec_from_args

    result = collapse(args.model, data=data_spec_from_args(args), output=args.output, combine=args.combine,
                      low=args.low, high=args.high, interval=args.interval, threshold=args.threshold,
                      merge=args.merge, target_layers=args.target_layers, target_ratio=args.target_ratio,
                      force=args.force, dry_run=args.dry_run, plots=not args.no_plots, batch_size=args.batch_size,
                      dtype=args.dtype, device=args.device, trust_remote_code=args.trust_remote_code)
    print(result.summary())
    for record in result.merges:
        print(f"  merged {record['from']} into {record['into']} (similarity {record['similarity']:.4f})")
    if args.dry_run:
        print_json({"merges": result.merges, "rejected": result.rejected, "plan": result.plan.to_dict()})
    else:
        print(f"saved to {args.output}")
    return 0
