"""Recipes: a YAML file that runs a whole pipeline (score, prune or collapse, heal, eval, report) in one run folder.

One schema for YAML, CLI and Python API: a step's keys are exactly the options of the CLI verb of the same name
(``seq_len`` or ``seq-len`` for ``--seq-len``), validated by that verb's own argument parser, so a recipe can never
drift from the command line. Unknown keys are errors that list the valid ones.

Example::

    model: smollm2-135m
    output: runs/demo            # the run folder (or --output on the command line)
    defaults: {dtype: float32}   # merged into every step whose verb has the option
    steps:
      - score: {data: builtin, samples: 16, seq_len: 256, metrics: "angular,bi"}
      - prune: {method: bi, n: 4}
      - eval: {ppl: wikitext2, seq_len: 256}
      - report: {}

Each step writes ``RUN/NN-verb`` (atomically); a step whose folder exists is skipped, so re-running after a crash
resumes where it stopped. The model flows through the steps: ``prune``, ``collapse`` and ``heal`` produce the model
the later steps use; ``prune --method`` and ``sweep`` reuse the latest ``score`` step's ``scores.json``.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

from .errors import DepthpruneError
from .saving import write_json_atomic

logger = logging.getLogger(__name__)

TOP_LEVEL_KEYS = {"model": "the starting model (path, .gguf, hub id or alias)",
                  "output": "the run folder", "steps": "the list of steps",
                  "defaults": "options merged into every step that accepts them",
                  "name": "a title", "description": "free text", "paper": "the paper the settings come from"}
# Verbs whose output is a model that later steps continue from.
MODEL_PRODUCING = {"prune", "collapse", "heal"}
# Options the runner sets itself; a recipe giving them would be ignored, so it is an error instead.
RUNNER_OWNED = {"output", "force", "run_dirs"}


@dataclass
class RecipeStep:
    verb: str
    options: dict
    index: int

    @property
    def folder_name(self) -> str:
        return f"{self.index:02d}-{self.verb}"


@dataclass
class Recipe:
    model: str
    steps: list[RecipeStep]
    output: str | None = None
    defaults: dict = field(default_factory=dict)
    name: str | None = None
    source: str | None = None


def _closest(word: str, options) -> str:
    match = difflib.get_close_matches(word, list(options), n=1)
    return f"; did you mean {match[0]!r}?" if match else ""


def _verb_parser(verb: str) -> tuple[argparse.ArgumentParser, object]:
    from .cli import COMMANDS

    if verb not in COMMANDS or verb in ("run", "info"):
        runnable = [v for v in COMMANDS if v not in ("run", "info")]
        raise DepthpruneError(f"unknown recipe step {verb!r}; valid steps: {', '.join(runnable)}"
                              f"{_closest(verb, runnable)}")
    module = importlib.import_module(COMMANDS[verb])
    parser = argparse.ArgumentParser(prog=f"depthprune {verb}", add_help=False)
    module.add_arguments(parser)
    return parser, module


def _options_of(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {action.dest: action for action in parser._actions if action.dest != argparse.SUPPRESS}


def step_argv(step: RecipeStep, model: str | None, output: str | None, extra: dict | None = None) -> list[str]:
    """The command line equivalent of a step: validated against the verb's parser."""
    parser, _ = _verb_parser(step.verb)
    actions = _options_of(parser)
    options = {**(extra or {}), **step.options}
    argv: list[str] = []
    positionals = [a for a in parser._actions if not a.option_strings and a.dest != argparse.SUPPRESS]
    for action in positionals:
        if action.dest == "model":
            value = options.pop("model", model)
            if value is None:
                raise DepthpruneError(f"recipe step {step.index} ({step.verb}) needs a model")
            argv.append(str(value))
        elif action.dest == "run_dirs":
            argv.extend(str(v) for v in options.pop("run_dirs", []))
    for key, value in options.items():
        dest = key.replace("-", "_")
        if dest in RUNNER_OWNED:
            raise DepthpruneError(f"recipe step {step.index} ({step.verb}): {key!r} is set by the run itself; "
                                  "remove it (the run folder is the recipe's 'output')")
        action = actions.get(dest)
        if action is None or not action.option_strings:
            valid = sorted(d for d, a in actions.items() if a.option_strings and d not in RUNNER_OWNED | {"help"})
            raise DepthpruneError(f"recipe step {step.index} ({step.verb}): unknown option {key!r}; valid: "
                                  f"{', '.join(valid)}{_closest(dest, valid)}")
        flag = next(o for o in action.option_strings if o.startswith("--"))
        if isinstance(action, argparse.BooleanOptionalAction):
            if not isinstance(value, bool):
                raise DepthpruneError(f"recipe step {step.index} ({step.verb}): {key!r} is a switch; write true/false")
            argv.append(flag if value else f"--no-{flag[2:]}")
            continue
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            if not isinstance(value, bool):
                raise DepthpruneError(f"recipe step {step.index} ({step.verb}): {key!r} is a switch; write true/false")
            if value == isinstance(action, argparse._StoreTrueAction):
                argv.append(flag)
            continue
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            value = ",".join(str(v) for v in value)
        argv.extend([flag, str(value)])
    if output is not None and "output" in actions:
        argv.extend(["--output", str(output)])
    return argv


def parse_step(step: RecipeStep, model: str | None, output: str | None, extra: dict | None = None):
    """Validate a step; returns the verb module, its parsed arguments and the equivalent command line."""
    parser, module = _verb_parser(step.verb)
    argv = step_argv(step, model, output, extra)

    def fail(message):   # argparse would exit; we want a DepthpruneError naming the step
        raise DepthpruneError(f"recipe step {step.index} ({step.verb}): {message}")

    parser.error = fail
    return module, parser.parse_args(argv), argv


def load_recipe(path: str | Path | dict) -> Recipe:
    """Read and validate a recipe (a YAML file, or an already parsed dict)."""
    import yaml

    if isinstance(path, dict):
        raw, source = path, None
    else:
        path = Path(path)
        if not path.is_file():
            raise DepthpruneError(f"recipe {path} not found; give the path of a .yaml file")
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as error:
            raise DepthpruneError(f"recipe {path} is not valid YAML: {str(error).splitlines()[0]}") from None
        source = str(path)
    if not isinstance(raw, dict):
        raise DepthpruneError("a recipe is a mapping with 'model' and 'steps'; see examples/smollm2-demo.yaml")
    for key in raw:
        if key not in TOP_LEVEL_KEYS:
            raise DepthpruneError(f"recipe: unknown key {key!r}; valid: {', '.join(TOP_LEVEL_KEYS)}"
                                  f"{_closest(key, TOP_LEVEL_KEYS)}")
    if "model" not in raw or "steps" not in raw:
        raise DepthpruneError("recipe: 'model' and 'steps' are required")
    if not isinstance(raw["steps"], list) or not raw["steps"]:
        raise DepthpruneError("recipe: 'steps' must be a non-empty list such as [{score: {...}}, {prune: {...}}]")
    steps = []
    for index, item in enumerate(raw["steps"], start=1):
        if isinstance(item, str):
            item = {item: {}}
        if not isinstance(item, dict) or len(item) != 1:
            raise DepthpruneError(f"recipe step {index}: write each step as '- verb: {{options}}'")
        (verb, options), = item.items()
        options = options or {}
        if not isinstance(options, dict):
            raise DepthpruneError(f"recipe step {index} ({verb}): options must be a mapping")
        steps.append(RecipeStep(verb=str(verb), options=dict(options), index=index))
    defaults = raw.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise DepthpruneError("recipe: 'defaults' must be a mapping of options")
    recipe = Recipe(model=str(raw["model"]), steps=steps, output=raw.get("output"), defaults=defaults,
                    name=raw.get("name"), source=source)
    validate_recipe(recipe)
    return recipe


def _defaults_for(step: RecipeStep, defaults: dict) -> dict:
    parser, _ = _verb_parser(step.verb)
    accepted = _options_of(parser)
    return {k: v for k, v in defaults.items() if k.replace("-", "_") in accepted}


def validate_recipe(recipe: Recipe) -> None:
    """Check every step against its verb's options without running anything."""
    unused = set(recipe.defaults)
    for step in recipe.steps:
        extra = _defaults_for(step, recipe.defaults)
        unused -= set(extra)
        if step.verb == "report":
            extra["run_dirs"] = ["RUN"]
        parse_step(step, recipe.model, "RUN/step", extra)
    if unused:
        raise DepthpruneError(f"recipe: defaults {sorted(unused)} are accepted by no step; remove them")


def _step_is_finished(step: RecipeStep, step_dir: Path, force: bool) -> bool:
    """A step is finished when its folder exists (outputs appear whole), except an unfinished, resumable sweep."""
    from .sweep import is_unfinished_sweep

    return step_dir.exists() and not force and step.verb != "report" and not is_unfinished_sweep(step_dir)


def check_recipe_needs(recipe: Recipe, run_dir: Path, force: bool = False) -> None:
    """Check the optional packages of every step still to run, before step 1 starts, in one error."""
    from .extras import require_all

    model, needs, latest_scores = recipe.model, [], None
    for step in recipe.steps:
        step_dir = run_dir / step.folder_name
        extra = _defaults_for(step, recipe.defaults)
        wants_scores = step.verb == "sweep" or (step.verb == "prune" and "method" in step.options)
        if wants_scores and latest_scores is not None:
            extra.setdefault("scores", str(latest_scores))   # as the run will pass it: no calibration data read
        if step.verb == "report":
            extra["run_dirs"] = [str(run_dir)]
        module, args, _ = parse_step(step, model, str(step_dir), extra)
        step_needs = getattr(module, "needs", None)
        if step_needs is not None and not _step_is_finished(step, step_dir, force):
            needs += [(module_name, f"recipe step {step.index} ({step.verb}): {purpose}")
                      for module_name, purpose in step_needs(args)]
        if step.verb == "score":
            latest_scores = step_dir / "scores.json"
        if step.verb in MODEL_PRODUCING:
            model = str(step_dir)
    require_all(needs)


def run_recipe(recipe: Recipe | str | Path, output: str | Path | None = None, force: bool = False,
               dry_run: bool = False) -> dict:
    """Run a recipe's steps in order inside one run folder, skipping steps whose output already exists.

    Args:
        recipe: a :class:`Recipe` or the path of a YAML file.
        output: the run folder (overrides the recipe's ``output``).
        force: re-run every step, replacing earlier outputs.
        dry_run: print the commands, run nothing.

    Returns:
        ``{"run_dir": ..., "steps": [{"step", "status", "argv"}], "model": final model path}``.
    """
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    run_dir = Path(output or recipe.output or "")
    if not str(run_dir) or str(run_dir) == ".":
        raise DepthpruneError("no run folder: give 'output:' in the recipe or --output")
    check_recipe_needs(recipe, run_dir, force)   # a missing package fails now, not after hours of earlier steps
    if not dry_run:
        run_dir.mkdir(parents=True, exist_ok=True)
        if recipe.source:
            (run_dir / "recipe.yaml").write_text(Path(recipe.source).read_text())
    model = recipe.model
    latest_scores = None
    record = []
    for step in recipe.steps:
        step_dir = run_dir / step.folder_name
        extra = _defaults_for(step, recipe.defaults)
        wants_scores = step.verb == "sweep" or (step.verb == "prune" and "method" in step.options)
        if wants_scores and latest_scores is not None:
            extra.setdefault("scores", str(latest_scores))
        if step.verb == "report":
            extra["run_dirs"] = [str(run_dir)]
            target = step_dir / "report.html"
        else:
            target = step_dir
        module, args, argv = parse_step(step, model, str(target), extra)
        done = _step_is_finished(step, step_dir, force)
        status = "skipped (output exists)" if done else ("planned" if dry_run else "done")
        if not done and not dry_run:
            if step.verb == "report":
                step_dir.mkdir(exist_ok=True)
            if force and hasattr(args, "force"):
                args.force = True
            print(f"[{step.folder_name}] depthprune {step.verb} {' '.join(argv)}")
            result = module.run(args)
            if result not in (None, 0):
                raise DepthpruneError(f"recipe step {step.index} ({step.verb}) failed with status {result}")
        record.append({"step": step.folder_name, "status": status, "argv": ["depthprune", step.verb, *argv]})
        if step.verb == "score":
            latest_scores = step_dir / "scores.json"
        if step.verb in MODEL_PRODUCING:
            model = str(step_dir)
        if not dry_run:   # the report reads the commands from here (provenance of every number)
            write_json_atomic(run_dir / "run.json", {"recipe": recipe.source, "steps": record, "model": model})
    return {"run_dir": str(run_dir), "steps": record, "model": model}
