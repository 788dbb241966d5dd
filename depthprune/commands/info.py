"""Show a model's architecture, layer count, parameter count and dtype as depthprune sees it."""

from __future__ import annotations

from .common import add_common_arguments, print_json

HELP = "describe a model: architecture, layers, parameters, dtype"


def add_arguments(parser) -> None:
    add_common_arguments(parser)
    parser.add_argument("model", help="checkpoint folder, .gguf file, Hugging Face hub id, or alias (smollm2-135m)")
    parser.add_argument("--dtype", default="auto", help="dtype to load with (auto keeps the checkpoint's)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--trust-remote-code", action="store_true", help="run the model repository's own code")
    parser.add_argument("--json", action="store_true", help="print JSON")


def run(args) -> int:
    from ..info import info

    summary = info(args.model, dtype=args.dtype, device=args.device, trust_remote_code=args.trust_remote_code)
    if args.json:
        print_json(summary)
        return 0
    width = max(len(k) for k in summary)
    for key, value in summary.items():
        if isinstance(value, int) and not isinstance(value, bool) and value > 10_000:
            value = f"{value:,}"
        print(f"{key:<{width}}  {value}")
    return 0
