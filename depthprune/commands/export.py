"""Write a checkpoint folder back as GGUF, matched tensor by tensor to the GGUF it was made from.

``depthprune export out/healed --to-gguf out/healed.gguf`` (``--source SRC.gguf`` when depthprune.json does not name
it): the source's metadata and tokenizer, per-layer arrays filtered by the kept layers; tensors equal to the
source's are copied byte for byte, changed ones are quantised to the source tensor's type where the gguf package can
(Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, BF16, F16, F32), otherwise to Q8_0 with a notice naming llama.cpp's llama-quantize.
A pruned GGUF that changes no weights is made directly by ``depthprune prune SRC.gguf ... --output OUT.gguf``.
"""

from __future__ import annotations

from .common import COMMON_OPTIONS, print_json
from .schema import Option

HELP = "write a healed, collapsed or pruned checkpoint back as GGUF beside its GGUF source"

OPTIONS = [
    *COMMON_OPTIONS,
    Option("model", positional=True,
           help="checkpoint folder made from a GGUF source (e.g. by prune, collapse or heal)"),
    Option("to_gguf", required=True, metavar="OUT.gguf", help="GGUF file to write (atomically)"),
    Option("source", metavar="SRC.gguf",
           help="the GGUF the model was made from (default: base_model_source in its depthprune.json)"),
    Option("force", bool, False, help="replace an existing output file"),
]


def needs(args) -> list[tuple[str, str]]:
    """Optional packages this command will need (checked before any work)."""
    return [("gguf", "export --to-gguf")]


def call(args) -> dict:
    """What was copied and what was requantised, by type, and the bytes written."""
    from ..filesurgery.export import export_gguf

    return export_gguf(args.model, args.to_gguf, source=args.source, force=args.force)


def run(args) -> int:
    report = call(args)
    print_json({key: report[key] for key in ("copied", "quantised", "fallback", "tensors", "tensor_bytes")})
    print(f"saved to {args.to_gguf}")
    return 0
