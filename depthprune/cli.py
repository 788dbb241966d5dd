"""The ``depthprune`` command: a thin layer over the Python API.

Each verb is a module in ``depthprune.commands`` with ``HELP``, ``add_arguments(parser)`` and ``run(args)``; the
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


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows a default once: only where the help text does not already say it and the default means something.

    argparse's ArgumentDefaultsHelpFormatter appends "(default: None)" even to "... (default text)" and
    "(default: False)" to every switch.
    """

    def _get_help_string(self, action):
        text = action.help or ""
        meaningless = action.default is None or action.default is False or action.default is argparse.SUPPRESS
        if "default" in text.lower() or meaningless or action.nargs == 0 or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    from .commands.common import OneLineErrorParser, add_common_arguments

    parser = OneLineErrorParser(prog="depthprune", description="Make LLMs shallower: score, prune, collapse, "
                                     "heal and evaluate decoder layers.")
    parser.add_argument("--version", action="version", version=f"depthprune {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens step by step")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=OneLineErrorParser)
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        command = sub.add_parser(name, help=module.HELP, description=module.__doc__,
                                 formatter_class=HelpFormatter)
        module.add_arguments(command)
        add_common_arguments(command)   # --threads for every verb, also those that do not add it themselves
        command.set_defaults(_run=module.run)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every temporary output is cleaned up on the way out."""


def _raise_terminated(signum, frame):
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
