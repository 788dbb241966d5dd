"""Run a whole pipeline from a YAML recipe whose keys are this CLI's options (see depthprune.recipe).

Steps write into one run folder; a finished step is skipped on the next run, so a crashed run resumes. A step
folder made by other options than the recipe now gives is refused: delete it, or re-make it with --rerun STEP.
"""

from __future__ import annotations

import json

from .common import COMMON_OPTIONS
from .schema import Option

HELP = "run a pipeline (score, prune/collapse, heal, eval, report) from a YAML recipe"

OPTIONS = [
    *COMMON_OPTIONS,
    Option("recipe", positional=True, help="the recipe .yaml file (see examples/), or its dict in Python"),
    Option("output", short="-o", help="run folder (overrides the recipe's 'output')"),
    Option("force", bool, False, help="re-run every step, replacing earlier outputs"),
    Option("rerun", many=True, metavar="STEP",
           help="re-run this step (folder name such as 02-prune, step number, or a verb used once) and the steps "
                "that read it; repeatable"),
    Option("dry_run", bool, False, help="validate and print the steps, run nothing"),
    Option("validate", bool, False, help="only check the recipe against the schema"),
]


def call(args):
    """With ``validate``: the checked :class:`~depthprune.recipe.Recipe`; else the run's record (see run_recipe)."""
    from ..recipe import load_recipe, run_recipe

    recipe = load_recipe(args.recipe)
    if args.validate:
        return recipe
    return run_recipe(recipe, output=args.output, force=args.force, dry_run=args.dry_run, rerun=args.rerun)


def run(args) -> int:
    result = call(args)
    if args.validate:
        print(f"{args.recipe}: valid ({len(result.steps)} steps: {', '.join(s.verb for s in result.steps)})")
        return 0
    for step in result["steps"]:
        print(f"{step['step']:<14} {step['status']:<24} {' '.join(step['argv'])}")
    print(json.dumps({"run_dir": result["run_dir"], "model": result["model"]}))
    return 0

