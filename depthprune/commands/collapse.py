"""Collapse decoder layers with LaCo (arXiv 2402.11187): fold rear layers into a prior one while the model's last
hidden states (after the final norm, flattened per calibration block) stay close to the original's.

Walks from ``high - combine`` down to ``low``; a merge is accepted when the mean cosine similarity on the calibration
blocks is above ``--threshold``. ``--merge paper`` (default) applies the paper's RDSC formula
``W_l + sum_k (W_{l+k} - W_l)`` to every attention/MLP weight and bias, norms stay layer l's; ``--merge notebook``
reproduces the official notebooks' in-place bug (layer l takes layer l+m's weights). ``--remove N`` (or
``--remove-ratio R``, or ``--target-depth D``: the layers kept) searches the threshold that removes exactly that
many layers. Layers are 0-based; the output's depthprune.json records every merge and rejected candidate in the
original numbering, beside a plot of the similarity per candidate.
"""

from __future__ import annotations

from .common import (COMMON_OPTIONS, data_options, data_spec_from_args, model_options, output_options, positive_int,
                     print_json)
from .schema import Option, Renamed

HELP = "merge rear layers into prior ones (LaCo) and save the collapsed checkpoint"

OPTIONS = [
    *COMMON_OPTIONS,
    *model_options(),
    *data_options(samples=5, seq_len=128),
    Option("combine", int, 7, short="-C",
           help="C: layers combined per merge (C-1 folded into the base); paper: 7 for Llama2-13B"),
    Option("low", int, 0, help="lowest base layer the walk considers (0-based)"),
    Option("high", int, None, help="top of the range; the walk starts at high - combine (default: the last layer)"),
    Option("interval", int, 1, short="-I", help="I: step down by this after a merge"),
    Option("threshold", float, None, short="-T",
           help="T: accept a merge when the similarity is above it (default 0.45 without a target)"),
    Option("merge", default="paper", choices=("paper", "notebook"),
           help="paper: RDSC formula; notebook: the official notebooks' in-place bug (copy of l+m)"),
    Option("remove", int, None, exclusive="target", metavar="N",
           help="remove exactly this many layers, searching the threshold"),
    Option("remove_ratio", float, None, exclusive="target", metavar="R",
           help="remove this fraction of the layers (rounded), searching the threshold"),
    Option("target_depth", int, None, exclusive="target", metavar="D",
           help="keep exactly this many layers, searching the threshold"),
    Renamed("target_layers", "--remove N (it counts the layers removed) or --target-depth D (the layers kept)"),
    Renamed("target_ratio", "--remove-ratio R (the fraction of the layers removed)"),
    Option("batch_size", positive_int, 8, help="calibration blocks per forward pass"),
    Option("plots", bool, True, help="do not draw the similarity plot"),
    Option("progress", bool, True, cli=False),
    Option("dry_run", bool, False, help="run the walk, print the outcome, write nothing"),
    *output_options(required=False),
]


def needs(args) -> list[tuple[str, str]]:
    """Optional packages this command will need (checked before any work, also for every step of a recipe)."""
    from ..collapse import collapse_needs

    return collapse_needs(args.model, args.data, plots=args.plots)


def call(args):
    """The :class:`~depthprune.collapse.CollapseResult` (the checkpoint is saved unless ``dry_run``)."""
    from ..collapse import collapse

    return collapse(args.model, data=data_spec_from_args(args), output=args.output, combine=args.combine,
                    low=args.low, high=args.high, interval=args.interval, threshold=args.threshold,
                    merge=args.merge, remove=args.remove, remove_ratio=args.remove_ratio,
                    target_depth=args.target_depth, force=args.force, dry_run=args.dry_run, plots=args.plots,
                    batch_size=args.batch_size, progress=args.progress, dtype=args.dtype, device=args.device,
                    trust_remote_code=args.trust_remote_code)


def run(args) -> int:
    result = call(args)
    print(result.summary())
    for record in result.merges:
        print(f"  merged {record['from']} into {record['into']} (similarity {record['similarity']:.4f})")
    if args.dry_run:
        print_json({"merges": result.merges, "rejected": result.rejected, "plan": result.plan.to_dict()})
    else:
        print(f"saved to {args.output}")
    return 0
