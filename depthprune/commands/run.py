"""Run a whole pipeline from a YAML recipe whose keys are this CLI's options (see depthprune.recipe).

Steps write into one run folder; a finished step is skipped on the next run, so a crashed run resumes. A step
folder made by other options than the recipe now gives is refused: delete it, or re-make it with --rerun STEP.
"""

from __future__ import annotations

import json

HELP = "run a pipeline (score, prune/collapse, heal, eval, report) from a YAML recipe"


def add_arguments(parser) -> None:
    parser.add_argument("recipe", help="the recipe .yaml file (see examples/)")
    parser.add_argument("--output", "-o", default=None, help="run folder (overrides the recipe's 'output')")
    parser.add_argument("--force", action="store_true", help="re-run every step, replacing earlier outputs")
    parser.add_argument("--rerun", action="append", default=None, metavar="STEP",
                        help="re-run this step (folder name such as 02-prune, step number, or a verb used once) "
                             "and the steps that read it; repeatable")
    parser.add_argument("--dry-run", action="store_true", help="validate and print the steps, run nothing")
    parser.add_argument("--validate", action="store_true", help="only check the recipe against the schema")


def run(args) -> int:
    from ..recipe import load_recipe, run_recipe

    recipe = load_recipe(args.recipe)
    if args.validate:
        print(f"{args.recipe}: valid ({len(recipe.steps)} steps: {', '.join(s.verb for s in recipe.steps)})")
        return 0
    result = run_recipe(recipe, output=args.output, force=args.force, dry_run=args.dry_run,
                        rerun=args.rerun)
    for step in result["steps"]:
        print(f"{step['step']:<14} {step['status']:<24} {' '.join(step['argv'])}")
    print(json.dumps({"run_dir": result["run_dir"], "model": result["model"]}))
    return 0
