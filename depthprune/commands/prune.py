"""Remove decoder layers and save an ordinary Hugging Face checkpoint (with depthprune.json provenance).

Layers are 0-based; ranges are inclusive: ``--layers 20-27,3`` removes layers 3 and 20 to 27.
"""

from __future__ import annotations

from .common import add_model_arguments, add_output_arguments, print_json

HELP = "remove decoder layers and save the pruned checkpoint"


def add_arguments(parser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--layers", required=True, help="layers to remove, 0-based, e.g. 20-27,3")
    parser.add_argument("--allow-final-layer", action="store_true", help="permit removing the last layer")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and write nothing")
    add_output_arguments(parser, required=False)


def run(args) -> int:
    from ..prune import prune

    plan = prune(args.model, layers=args.layers, output=args.output, force=args.force, dry_run=args.dry_run,
                 allow_final_layer=args.allow_final_layer, dtype=args.dtype, device=args.device,
                 trust_remote_code=args.trust_remote_code)
    print(plan.summary())
    if args.dry_run:
        print_json(plan.to_dict())
    else:
        print(f"saved to {args.output}")
    return 0
