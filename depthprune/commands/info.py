"""Show a model's architecture, layer count, parameter count and dtype as depthprune sees it."""

from __future__ import annotations

from .common import COMMON_OPTIONS, model_options, print_json
from .schema import Option

HELP = "describe a model: architecture, layers, parameters, dtype"

OPTIONS = [
    *COMMON_OPTIONS,
    *model_options(dtype_help="dtype to load with (auto keeps the checkpoint's)"),
    Option("json", bool, False, api=False, help="print JSON"),
]


def call(args) -> dict:
    """The summary: architecture, layers, parameters, dtype (and depthprune provenance, if any)."""
    from ..info import info

    return info(args.model, dtype=args.dtype, device=args.device, trust_remote_code=args.trust_remote_code)


def run(args) -> int:
    summary = call(args)
    if args.json:
        print_json(summary)
        return 0
    width = max(len(k) for k in summary)
    for key, value in summary.items():
        if isinstance(value, int) and not isinstance(value, bool) and value > 10_000:
            value = f"{value:,}"
        print(f"{key:<{width}}  {value}")
    return 0
