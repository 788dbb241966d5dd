"""The ``depthprune`` command: a thin layer over the Python API.

Each verb is a module in ``depthprune.commands`` with ``HELP``, ``add_arguments(parser)`` and ``run(args)``; the
registry below names them explicitly so that a broken verb is an import error, not a silently missing command.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

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
}


def build_parser() -> argparse.ArgumentParser:
    from .commands.common import OneLineErrorParser, add_common_arguments

    parser = OneLineErrorParser(prog="depthprune", description="Make LLMs shallower: score, prune, collapse, "
                                     "heal and evaluate decoder layers.")
    parser.add_argument("--version", action="version", version=f"depthprune {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens step by step")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        command = sub.add_parser(name, help=module.HELP, description=module.__doc__,
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        module.add_arguments(command)
        add_common_arguments(command)   # --threads for every verb, also those that do not add it themselves
        command.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="depthprune: %(message)s")
    try:
        result = args._run(args)
    except DepthpruneError as error:
        print(f"depthprune: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("depthprune: interrupted; nothing was written", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
