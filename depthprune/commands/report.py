"""Write one self-contained HTML report (images embedded) and a markdown twin for run or output folders."""

from __future__ import annotations

HELP = "write an HTML + markdown report of one or more run folders"


def add_arguments(parser) -> None:
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="folders written by depthprune run/score/...")
    parser.add_argument("--output", "-o", required=True, help="the .html file (a .md twin is written beside it)")
    parser.add_argument("--force", action="store_true", help="replace an existing report")
    parser.add_argument("--title", default=None, help="page title")


def run(args) -> int:
    from ..report import write_report

    path = write_report(args.run_dirs, args.output, force=args.force, title=args.title)
    print(f"report written to {path} and {path.with_suffix('.md')}")
    return 0
