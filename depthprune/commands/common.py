"""Options shared by several verbs, so that ``--data`` or ``--output`` mean the same everywhere.

Also the shared checks of those options: an option that the verb would ignore in this combination is an error
(:func:`refuse_ignored`), which needs to know what the user actually typed (``given_options``, recorded by
:mod:`depthprune.commands.schema` for the command line, recipe steps and the API alike).
"""

from __future__ import annotations

import argparse
import json

from ..data import DataSpec, check_source
from ..errors import DepthpruneError
from .schema import OPTIONS_OF, Option, Renamed, given_options

DATA_OPTIONS = ("data", "samples", "seq_len", "seed", "text_field", "chat_template")


class OneLineErrorParser(argparse.ArgumentParser):
    """An argument parser whose errors are the one ``depthprune: error: ...`` line every other error is."""

    def error(self, message):
        verb = self.prog.split(" ", 1)[1] if " " in self.prog else ""
        where = f"{verb}: " if verb else ""
        self.exit(2, f"depthprune: error: {where}{message}; see '{self.prog} --help'\n")


def _whole_number(text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"must be at least {least} (got {value})")
    return value


def positive_int(text: str) -> int:
    """argparse type for counts where 0 makes no sense (windows, items, batch sizes)."""
    return _whole_number(text, 1)


def non_negative_int(text: str) -> int:
    """argparse type for counts where 0 means "none" (few-shot examples, healing steps)."""
    return _whole_number(text, 0)


# Every verb has these (the CLI adds them to verbs that do not list them).
COMMON_OPTIONS = [
    Option("threads", positive_int, None, metavar="N",
           help="CPU threads for torch; unset: the cores other processes leave free when the verb starts "
                "(OMP_NUM_THREADS, when set, is respected instead; the Python API leaves torch's own default)"),
]


def model_options(dtype: str = "auto", dtype_help: str | None = None, model_help: str | None = None) -> list:
    return [
        Option("model", positional=True,
               help=model_help or "checkpoint folder, .gguf file, Hugging Face hub id, or alias (smollm2-135m)"),
        Option("dtype", default=dtype,
               help=dtype_help or "auto (the checkpoint's own dtype; a .gguf is dequantised to float32), float32, "
                                  "bfloat16 or float16"),
        Option("device", default="cpu", help="cpu, cuda, cuda:1, ..."),
        Option("trust_remote_code", bool, False, help="run the model repository's own Python code (off by default)"),
    ]


def data_options(samples: int | None = 32, seq_len: int | None = 512, default: str | None = "builtin",
                 seed: int | None = 0, helps: dict | None = None) -> list:
    """Calibration (or training) data, given the same way to every verb that reads it; ``helps`` override texts."""
    texts = {"data": "builtin, self, a .txt/.jsonl/.parquet file or folder, wikitext2, c4, ptb, pg19, or "
                     "hf:PATH:CONFIG:SPLIT",
             "samples": "number of token blocks", "seq_len": "tokens per block",
             "seed": "seed for document order and generation",
             "text_field": "field holding the text in .jsonl/.parquet (default text)",
             "chat_template": "wrap each document in the chat template", **(helps or {})}
    return [
        Option("data", default=default, metavar="SPEC", help=texts["data"]),
        Option("samples", int, samples, help=texts["samples"]),
        Option("seq_len", int, seq_len, help=texts["seq_len"]),
        Option("seed", int, seed, help=texts["seed"]),
        Option("text_field", default=None, help=texts["text_field"]),
        Option("chat_template", bool, False, help=texts["chat_template"]),
    ]


def output_options(required: bool = True, force_help: str = "replace an existing output folder") -> list:
    return [Option("output", required=required, short="-o", help="output folder (written atomically)"),
            Option("force", bool, False, help=force_help)]


TOKEN_POSITIONS = Option("token_positions", default="last", choices=("last", "all"),
                         help="angular distance on the last real token of each sample, or on all real tokens")
TOKENS_RENAMED = Renamed("tokens", "--token-positions last|all (the token positions compared)")


def refuse_ignored(args, dests, reason: str, fix: str = "drop") -> None:
    """Refuse options that were given but would be ignored ``reason`` (e.g. "with --layers")."""
    given = given_options(args)
    flags = {option.name: option.long for option in getattr(args, OPTIONS_OF, ())}
    ignored = [flags.get(dest, "--" + dest.replace("_", "-")) for dest in dests if dest in given]
    if ignored:
        raise DepthpruneError(f"{', '.join(ignored)} would be ignored {reason}; {fix} "
                              f"{'it' if len(ignored) == 1 else 'them'}")


def check_data_options(args, uses_data: bool, reason: str = "") -> None:
    """Refuse data options the verb will not read: all of them when ``uses_data`` is False (saying ``reason``),
    and ``--samples``, ``--seq-len``, ... when no ``--data`` is given."""
    if not uses_data:
        refuse_ignored(args, DATA_OPTIONS, reason)
    elif getattr(args, "data", None) is None:
        refuse_ignored(args, DATA_OPTIONS[1:], "without --data", fix="add --data SPEC or drop")


def data_spec_from_args(args) -> DataSpec:
    if isinstance(args.data, DataSpec):   # the Python API: the spec carries its own samples, seq_len, ...
        refuse_ignored(args, DATA_OPTIONS[1:], "with a DataSpec as data (it carries them)")
        return args.data
    if args.samples < 1:
        raise DepthpruneError(f"--samples must be at least 1 (got {args.samples})")
    if args.seq_len < 2:
        raise DepthpruneError(f"--seq-len must be at least 2 tokens (got {args.seq_len})")
    from ..extras import data_needs, is_available

    spec = DataSpec(source=args.data, samples=args.samples, seq_len=args.seq_len, seed=args.seed,
                    text_field=args.text_field, chat_template=args.chat_template)
    if any(not is_available(module) for module, _ in data_needs(args.data)):
        return spec     # the verb's own check names every missing package at once, this reader's included
    check_source(args.data)   # names the missing path; .check() below reads it
    return spec.check()


def print_json(data) -> None:
    print(json.dumps(data, indent=2, default=str))


def verb_schema(module) -> list:
    """A verb module's schema, plus the options every verb has (``--threads``) where it leaves them out.

    A verb whose options come from a registry (criteria, healing methods) defines ``options()`` instead of a fixed
    ``OPTIONS``: it is called here, each time, so an entry registered since import brings its options.
    """
    from .schema import options_of

    schema = module.options() if hasattr(module, "options") else module.OPTIONS
    names = {option.name for option in options_of(schema)}
    return [*schema, *(option for option in COMMON_OPTIONS if option.name not in names)]
