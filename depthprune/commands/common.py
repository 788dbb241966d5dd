"""Options shared by several verbs, so that ``--data`` or ``--output`` mean the same everywhere.

Also the shared checks of those options: an option that the verb would ignore in this combination is an error
(:func:`refuse_ignored`), which needs to know what the user actually typed — :func:`add_common_arguments` makes
the parser record that (``given_options``) and adds ``--threads``.
"""

from __future__ import annotations

import argparse
import json

from ..data import DataSpec, check_source
from ..errors import DepthpruneError

DATA_OPTIONS = ("data", "samples", "seq_len", "seed", "text_field", "chat_template")
_GIVEN = "_given_options"   # namespace attribute: the dests the user gave explicitly


def _record(namespace, dest: str) -> None:
    given = getattr(namespace, _GIVEN, None)
    if given is None:
        given = set()
        setattr(namespace, _GIVEN, given)
    given.add(dest)


class _GivenStore(argparse._StoreAction):
    def __call__(self, parser, namespace, values, option_string=None):
        super().__call__(parser, namespace, values, option_string)
        _record(namespace, self.dest)


class _GivenStoreTrue(argparse._StoreTrueAction):
    def __call__(self, parser, namespace, values, option_string=None):
        super().__call__(parser, namespace, values, option_string)
        _record(namespace, self.dest)


class GivenBooleanOptional(argparse.BooleanOptionalAction):
    """``--x/--no-x`` that records that it was given."""

    def __call__(self, parser, namespace, values, option_string=None):
        super().__call__(parser, namespace, values, option_string)
        _record(namespace, self.dest)


class _SetThreads(argparse.Action):
    """``--threads N``: applied as soon as it is parsed, i.e. before any work starts.

    Parsing is the one step the command line, every recipe step (parsed right before it runs) and ``run --threads``
    share, so the setting cannot be forgotten by one of them. torch's thread count is process-wide: in a recipe a
    step's value stays in effect for the steps after it.
    """

    def __call__(self, parser, namespace, values, option_string=None):
        from ..runtime import set_threads

        if values < 1:
            parser.error(f"--threads must be at least 1 (got {values}); leave it out to use the free cores")
        setattr(namespace, self.dest, values)
        _record(namespace, self.dest)
        set_threads(values)


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


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """What every verb has: ``--threads``, and a record of which options were given (see :func:`given_options`).

    Call it first in a verb's ``add_arguments``: only options added after it are recorded. Calling it twice is
    harmless (the CLI calls it for every verb, so that verbs without it still get ``--threads``).
    """
    parser.register("action", None, _GivenStore)
    parser.register("action", "store", _GivenStore)
    parser.register("action", "store_true", _GivenStoreTrue)
    if "--threads" not in parser._option_string_actions:
        parser.add_argument("--threads", type=int, default=None, action=_SetThreads, metavar="N",
                            help="CPU threads for torch; unset: the cores other processes leave free when the verb "
                                 "starts (OMP_NUM_THREADS, when set, is respected instead)")


def given_options(args) -> set[str]:
    """The options (argparse dests) given explicitly on the command line or in a recipe step."""
    return set(getattr(args, _GIVEN, None) or ())


def flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def refuse_ignored(args, dests, reason: str, fix: str = "drop") -> None:
    """Refuse options that were given but would be ignored ``reason`` (e.g. "with --layers")."""
    given = given_options(args)
    ignored = [flag(dest) for dest in dests if dest in given]
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
    add_common_arguments(parser)   # so that every verb reading data (heal too) also has --threads in recipes
    parser.add_argument("--data", default=default, metavar="SPEC",
                        help="builtin, self, a .txt/.jsonl/.parquet file or folder, wikitext2, c4, ptb, pg19, "
                             "or hf:PATH:CONFIG:SPLIT")
    parser.add_argument("--samples", type=int, default=samples, help="number of token blocks")
    parser.add_argument("--seq-len", type=int, default=seq_len, help="tokens per block")
    parser.add_argument("--seed", type=int, default=0, help="seed for document order and generation")
    parser.add_argument("--text-field", default=None, help="field holding the text in .jsonl/.parquet (default text)")
    parser.add_argument("--chat-template", action="store_true", help="wrap each document in the chat template")


def data_spec_from_args(args) -> DataSpec:
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


def add_output_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("--output", "-o", required=required, help="output folder (written atomically)")
    parser.add_argument("--force", action="store_true", help="replace an existing output folder")


def print_json(data) -> None:
    print(json.dumps(data, indent=2, default=str))
