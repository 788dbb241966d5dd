"""The ``depthprune`` command: a thin layer over the Python API.

Each verb is a module in ``depthprune.commands`` with ``HELP``, ``OPTIONS`` (its schema, see
``depthprune.commands.schema``: the command line, recipe steps and ``depthprune.api`` all come from it), ``call(args)``
(the work, returning the result the API returns) and ``run(args)`` (``call`` plus what the command prints); the
registry below names them explicitly so that a broken verb is an import error, not a silently missing command.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
import threading

from . import __version__
from .errors import DepthpruneError

COMMANDS = {
    "info": "depthprune.commands.info",
    "prune": "depthprune.commands.prune",
    "eval": "depthprune.commands.eval",
    "score": "depthprune.commands.score",
    "run": "depthprune.commands.run",
    "report": "depthprune.commands.report",
    "sweep": "depthprune.commands.sweep",
    "heal": "depthprune.commands.heal",
    "collapse": "depthprune.commands.collapse",
    "export": "depthprune.commands.export",
}


def build_parser() -> argparse.ArgumentParser:
    from .commands.common import OneLineErrorParser, verb_schema
    from .commands.schema import add_options

    parser = OneLineErrorParser(prog="depthprune", description="Make LLMs shallower: score, prune, collapse, "
                                     "heal and evaluate decoder layers.")
    parser.add_argument("--version", action="version", version=f"depthprune {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens step by step")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=OneLineErrorParser)
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        command = sub.add_parser(name, help=module.HELP, description=module.__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
        add_options(command, verb_schema(module))   # --threads for every verb, also one whose schema leaves it out
        if hasattr(module, "epilog"):
            command.epilog = module.epilog()        # e.g. the registered criteria, read when the parser is built
        command.set_defaults(_run=module.run)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The parsed and completed command line (defaults filled in, the given options recorded)."""
    from .commands.schema import parse

    return parse(build_parser(), argv)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every temporary output is cleaned up on the way out."""


def _raise_terminated(signum, frame):
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="depthprune: %(message)s")
    # A kill (SIGTERM) unwinds like Ctrl-C unless the caller chose otherwise (an ignored or custom handler stays).
    handle_term = threading.current_thread() is threading.main_thread() and \
        signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    if handle_term:
        signal.signal(signal.SIGTERM, _raise_terminated)
    if getattr(args, "threads", None) is None:
        from .runtime import set_default_threads

        chosen = set_default_threads()
        if chosen is not None:
            logging.getLogger("depthprune").info("torch threads: %d (the cores not busy with other processes; "
                                                 "--threads N to choose)", chosen)
    try:
        result = args._run(args)
    except DepthpruneError as error:
        print(f"depthprune: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        name = "terminated" if isinstance(interrupt, Terminated) else "interrupted"
        print(f"depthprune: {name}; unfinished outputs were removed (finished sweep points and recipe steps are "
              "kept and a re-run continues from them)", file=sys.stderr)
        return 128 + (signal.SIGTERM if isinstance(interrupt, Terminated) else signal.SIGINT)
    finally:
        if handle_term:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
