"""Write one self-contained HTML report (images embedded) and a markdown twin for run or output folders."""

from __future__ import annotations

from .common import COMMON_OPTIONS
from .schema import Option

HELP = "write an HTML + markdown report of one or more run folders"

OPTIONS = [
    *COMMON_OPTIONS,
    Option("run_dirs", positional=True, many=True, metavar="RUN_DIR",
           help="folders written by depthprune run/score/..."),
    Option("output", required=True, short="-o", help="the .html file (a .md twin is written beside it)"),
    Option("force", bool, False, help="replace an existing report"),
    Option("title", help="page title"),
]


def call(args):
    """The path of the .html report written."""
    from ..report import write_report

    return write_report(args.run_dirs, args.output, force=args.force, title=args.title)


def run(args) -> int:
    path = call(args)
    print(f"report written to {path} and {path.with_suffix('.md')}")
    return 0
