"""Options shared by several verbs, so that ``--data`` or ``--output`` mean the same everywhere."""

from __future__ import annotations

import argparse
import json

from ..data import DataSpec


def add_model_arguments(parser: argparse.ArgumentParser, dtype_default: str = "auto") -> None:
    parser.add_argument("model", help="checkpoint folder, .gguf file, Hugging Face hub id, or alias (smollm2-135m)")
    parser.add_argument("--dtype", default=dtype_default,
                        help="auto (the checkpoint's own dtype; a .gguf is dequantised to float32), float32, "
                             "bfloat16 or float16")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="run the model repository's own Python code (off by default)")


def add_data_arguments(parser: argparse.ArgumentParser, samples: int = 32, seq_len: int = 512,
                       default: str | None = "builtin") -> None:
    parser.add_argument("--data", default=default, metavar="SPEC",
                        help="builtin, self, a .txt/.jsonl/.parquet file or folder, wikitext2, c4, ptb, pg19, "
                             "or hf:PATH:CONFIG:SPLIT")
    parser.add_argument("--samples", type=int, default=samples, help="number of token blocks")
    parser.add_argument("--seq-len", type=int, default=seq_len, help="tokens per block")
    parser.add_argument("--seed", type=int, default=0, help="seed for document order and generation")
    parser.add_argument("--text-field", default=None, help="field holding the text in .jsonl/.parquet (default text)")
    parser.add_argument("--chat-template", action="store_true", help="wrap each document in the chat template")


def data_spec_from_args(args) -> DataSpec:
    """The verb's data options, with a local source read once now: a bad file fails before any model loads."""
    return DataSpec(source=args.data, samples=args.samples, seq_len=args.seq_len, seed=args.seed,
                    text_field=args.text_field, chat_template=args.chat_template).check()


def add_output_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("--output", "-o", required=required, help="output folder (written atomically)")
    parser.add_argument("--force", action="store_true", help="replace an existing output folder")


def print_json(data) -> None:
    print(json.dumps(data, indent=2, default=str))
