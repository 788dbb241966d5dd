"""Recipes: a YAML file that runs a whole pipeline (score, prune or collapse, heal, eval, report) in one run folder.

One schema for YAML, CLI and Python API: a step's keys are exactly the options of the CLI verb of the same name
(``seq_len`` or ``seq-len`` for ``--seq-len``; ``no_plots: true`` for ``--no-plots``), checked against that verb's
``OPTIONS`` (see depthprune.commands.schema) and parsed by the parser made from them, so a recipe can never drift
from the command line. An unknown key is a one-line error that lists the valid ones and the closest.

Example::

    model: smollm2-135m
    output: runs/demo            # the run folder (or --output on the command line)
    defaults: {dtype: float32}   # merged into every step whose verb has the option
    steps:
      - score: {data: builtin, samples: 16, seq_len: 256, metrics: "angular,bi"}
      - prune: {method: bi, n: 4}
      - eval: {ppl: wikitext2, seq_len: 256}
      - report: {}

Each step writes ``RUN/NN-verb`` (atomically) and ``RUN/run.json`` records the command line that made it and the
step folders it read. A step whose folder exists and was made by the same command line from the same inputs is
skipped, so re-running after a crash resumes where it stopped and re-running a finished recipe does nothing; a
folder made by other options is refused (delete it or ``--rerun`` it), and a re-made step re-makes the steps that
read it. The model flows through the steps: ``prune``, ``collapse`` and ``heal`` produce the model
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
from .metadata import RUN_FILE, SCORES_FILE
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
    from .commands.schema import closest

    return closest(word, options)


class _StepParser(argparse.ArgumentParser):
    """A verb's parser for one recipe step: its errors are one-line DepthpruneErrors naming the step."""

    def __init__(self, where: str, **kwargs):
        super().__init__(**kwargs)
        self.where = where

    def error(self, message):
        raise DepthpruneError(f"{self.where}: {message}")


def _verb_schema(verb: str) -> tuple[list, object]:
    """The options (see depthprune.commands.schema) and the module of a verb a recipe step may name."""
    from .cli import COMMANDS
    from .commands.common import verb_schema

    if verb not in COMMANDS or verb in ("run", "info"):
        runnable = [v for v in COMMANDS if v not in ("run", "info")]
        raise DepthpruneError(f"unknown recipe step {verb!r}; valid steps: {', '.join(runnable)}"
                              f"{_closest(verb, runnable)}")
    module = importlib.import_module(COMMANDS[verb])
    return verb_schema(module), module


def _where(step: RecipeStep) -> str:
    return f"recipe step {step.index} ({step.verb})"


def _option_argv(option, key: str, value, where: str) -> list[str]:
    """The command-line words of one step key: ``seq_len: 256`` -> ``--seq-len 256``, ``no_plots: true`` ->
    ``--no-plots`` (as ``plots: false``), ``keep_edges: false`` -> ``--no-keep-edges``."""
    if option.type is bool:
        if not isinstance(value, bool):
            raise DepthpruneError(f"{where}: {key!r} is a switch; write true/false")
        if option.default is None:      # --x/--no-x
            return [option.long if value else f"--no-{option.long[2:]}"]
        named_by_flag = key.replace("-", "_") == option.key     # no_plots: true, or plots: false
        return [option.long] if (value if named_by_flag else value != option.default) else []
    if value is None:
        return []
    if option.many:
        return [word for item in (value if isinstance(value, (list, tuple)) else [value])
                for word in (option.long, str(item))]
    if isinstance(value, (list, tuple)):
        value = ",".join(str(v) for v in value)
    return [option.long, str(value)]


def step_argv(step: RecipeStep, model: str | None, output: str | None, extra: dict | None = None) -> list[str]:
    """The command line equivalent of a step, its keys checked against the verb's options."""
    from .commands.schema import find_option, options_of

    schema, _ = _verb_schema(step.verb)
    options = {**(extra or {}), **step.options}
    argv: list[str] = []
    for option in options_of(schema):
        if option.positional and option.name == "model":
            value = options.pop("model", model)
            if value is None:
                raise DepthpruneError(f"{_where(step)} needs a model")
            argv.append(str(value))
        elif option.positional and option.name == "run_dirs":
            argv.extend(str(v) for v in options.pop("run_dirs", []))
    for key, value in options.items():
        if key.replace("-", "_") in RUNNER_OWNED:
            raise DepthpruneError(f"{_where(step)}: {key!r} is set by the run itself; remove it (the run folder is "
                                  "the recipe's 'output')")
        option = find_option(schema, key, _where(step), hidden=RUNNER_OWNED)
        argv.extend(_option_argv(option, key, value, _where(step)))
    if output is not None and any(o.name == "output" for o in options_of(schema)):
        argv.extend(["--output", str(output)])
    return argv


def parse_step(step: RecipeStep, model: str | None, output: str | None, extra: dict | None = None):
    """Validate a step; returns the verb module, its parsed arguments and the equivalent command line."""
    from .commands.schema import add_options, parse

    schema, module = _verb_schema(step.verb)
    argv = step_argv(step, model, output, extra)
    parser = _StepParser(_where(step), prog=f"depthprune {step.verb}", add_help=False)
    add_options(parser, schema)
    return module, parse(parser, argv), argv


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
    """The recipe's ``defaults`` that this step's verb has (a renamed one is an error naming the new name)."""
    from .commands.schema import Renamed, lookup

    schema, _ = _verb_schema(step.verb)
    accepted = {}
    for key, value in defaults.items():
        option = lookup(schema, key)
        if isinstance(option, Renamed):
            raise DepthpruneError(f"recipe defaults ({step.verb}): {option.message()}")
        if option is not None:
            accepted[key] = value
    return accepted


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


@dataclass
class _PlannedStep:
    step: RecipeStep
    module: object
    args: argparse.Namespace
    argv: list[str]
    target: Path                 # what the step writes: its folder (the report: its report.html)
    inputs: list[str]            # step folders whose outputs this step reads
    action: str = "run"          # run | skip
    reason: str = ""


def _portable(argv: list[str], run_dir: Path) -> list[str]:
    """``argv`` with the run folder written as ``{run}``, so a moved run folder still matches its record."""
    root = str(run_dir)
    return ["{run}" + arg[len(root):] if arg == root or arg.startswith(root + "/") else arg for arg in argv]


def _argv_options(argv: list[str]) -> dict[str, str]:
    """``["M", "--layers", "1", "--force"]`` -> ``{"model": "M", "--layers": "1", "--force": "(set)"}``."""
    options, index, positional = {}, 0, 0
    while index < len(argv):
        token = argv[index]
        if token.startswith("--"):
            has_value = index + 1 < len(argv) and not argv[index + 1].startswith("--")
            options[token] = argv[index + 1] if has_value else "(set)"
            index += 2 if has_value else 1
        else:
            options["model" if positional == 0 else f"argument {positional + 1}"] = token
            positional += 1
            index += 1
    return options


def _option_changes(recorded: list[str], wanted: list[str]) -> str:
    before, after = _argv_options(recorded), _argv_options(wanted)
    changes = []
    for key in list(before) + [k for k in after if k not in before]:
        if before.get(key) != after.get(key):
            changes.append(f"{key} {before.get(key, '(not given)')} -> {after.get(key, '(not given)')}")
    return ", ".join(changes) or "the command line differs"


def resolve_rerun(recipe: Recipe, rerun) -> set[str]:
    """Step folder names for ``--rerun`` values: a folder name (``02-prune``), a step number or a verb used once."""
    names = {step.folder_name for step in recipe.steps}
    chosen = set()
    for value in rerun or []:
        value = str(value)
        by_verb = [s.folder_name for s in recipe.steps if s.verb == value]
        if value in names:
            chosen.add(value)
        elif value.isdigit() and 1 <= int(value) <= len(recipe.steps):
            chosen.add(recipe.steps[int(value) - 1].folder_name)
        elif len(by_verb) == 1:
            chosen.add(by_verb[0])
        else:
            raise DepthpruneError(f"--rerun {value!r} names no single step; give one of {', '.join(sorted(names))}"
                                  f"{_closest(value, names)}")
    return chosen


def _previous_records(run_dir: Path) -> tuple[dict[str, dict], Path]:
    """The step records of an earlier run in ``run_dir`` and the run folder path their command lines use."""
    import json

    path = run_dir / RUN_FILE
    if not path.is_file():
        return {}, run_dir
    try:
        content = json.loads(path.read_text())
        return ({record["step"]: record for record in content.get("steps", [])},
                Path(content.get("run_dir", run_dir)))
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
        raise DepthpruneError(f"{path} is not a run record written by depthprune run; move it away, or delete the "
                              "step folders it describes and run again") from None


def check_recipe_needs(planned: list["_PlannedStep"]) -> None:
    """Check the optional packages of every step that will run, before step 1 starts, in one error."""
    from .extras import require_all

    needs = []
    for item in planned:
        step_needs = getattr(item.module, "needs", None)
        if step_needs is not None and item.action == "run":
            needs += [(module_name, f"recipe step {item.step.index} ({item.step.verb}): {purpose}")
                      for module_name, purpose in step_needs(item.args)]
    require_all(needs)


def run_recipe(recipe: Recipe | str | Path, output: str | Path | None = None, force: bool = False,
               dry_run: bool = False, rerun=None) -> dict:
    """Run a recipe's steps in order inside one run folder, skipping steps that are already done as asked.

    A step is skipped when its output exists, ``run.json`` records that it was made by the same command line, and
    none of the step folders it reads was re-made since. An existing output made by other options is refused
    (nothing runs), naming the step and the options that differ; the way out is to delete that step's folder or to
    name it in ``rerun``. A step whose input is re-made this time is re-run too.

    Args:
        recipe: a :class:`Recipe` or the path of a YAML file.
        output: the run folder (overrides the recipe's ``output``).
        force: re-run every step, replacing earlier outputs.
        dry_run: print the commands, run nothing.
        rerun: steps to re-run even if done (folder names such as ``02-prune``, step numbers, or verbs used once);
            the steps that read their outputs are re-run with them.

    Returns:
        ``{"run_dir": ..., "steps": [{"step", "status", "argv", "inputs", "produced"}], "model": final model path}``.
    """
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    run_dir = Path(output or recipe.output or "")
    if not str(run_dir) or str(run_dir) == ".":
        raise DepthpruneError("no run folder: give 'output:' in the recipe or --output")
    rerun_steps = resolve_rerun(recipe, rerun)
    previous, recorded_run_dir = _previous_records(run_dir)

    # Plan every step before running any: a refused step must not leave the run half re-made.
    planned, model = _plan_steps(recipe, run_dir)
    _decide_actions(planned, previous, run_dir, recorded_run_dir, force, rerun_steps)
    check_recipe_needs(planned)   # a missing package fails now, not after hours of earlier steps

    if not dry_run:
        run_dir.mkdir(parents=True, exist_ok=True)
        if recipe.source:
            (run_dir / "recipe.yaml").write_text(Path(recipe.source).read_text())
    records = dict(previous)
    for item in planned:
        records[item.step.folder_name] = _run_step(item, records, dry_run)
        if not dry_run:   # after every step: the report reads the commands, the next run what made each folder
            write_json_atomic(run_dir / RUN_FILE, {
                "recipe": recipe.source, "model": model, "run_dir": str(run_dir),
                "steps": [records[p.step.folder_name] for p in planned if p.step.folder_name in records]})
    return {"run_dir": str(run_dir), "model": model,
            "steps": [records[p.step.folder_name] for p in planned]}


def _plan_steps(recipe: Recipe, run_dir: Path) -> tuple[list[_PlannedStep], str]:
    """Every step parsed, with what it writes and the step folders it reads; and the model the run ends with.

    The model flows through the steps (``prune``, ``collapse`` and ``heal`` produce the model the later steps
    use); ``prune --method`` and ``sweep`` reuse the latest ``score`` step's scores.
    """
    model, model_step, scores_step = recipe.model, None, None
    planned: list[_PlannedStep] = []
    for step in recipe.steps:
        step_dir = run_dir / step.folder_name
        extra = _defaults_for(step, recipe.defaults)
        inputs = [model_step] if model_step else []
        wants_scores = step.verb == "sweep" or (step.verb == "prune" and "method" in step.options)
        if wants_scores and scores_step is not None:
            extra.setdefault("scores", str(run_dir / scores_step / SCORES_FILE))
            inputs.append(scores_step)
        if step.verb == "report":
            extra["run_dirs"] = [str(run_dir)]
            target = step_dir / "report.html"
            inputs = [p.step.folder_name for p in planned]    # the report reads every earlier step
        else:
            target = step_dir
        module, args, argv = parse_step(step, model, str(target), extra)
        planned.append(_PlannedStep(step, module, args, argv, target, sorted(set(inputs))))
        if step.verb == "score":
            scores_step = step.folder_name
        if step.verb in MODEL_PRODUCING:
            model, model_step = str(step_dir), step.folder_name
    return planned, model


def _decide_actions(planned: list[_PlannedStep], previous: dict, run_dir: Path, recorded_run_dir: Path,
                    force: bool, rerun_steps: set[str]) -> None:
    """Mark each step run or skip (with the reason), or refuse, in one error, every step made by other options."""
    from .sweep import is_unfinished_sweep

    refusals, remade = [], set()
    for item in planned:
        name = item.step.folder_name
        record = previous.get(name)
        if force or name in rerun_steps:
            item.reason = "re-run as asked"
        elif not item.target.exists():
            item.reason = "not done yet"
        elif record is None or "argv" not in record:
            refusals.append(f"step {name}: {run_dir / name} exists but {RUN_FILE} does not say which options made "
                            f"it; delete that folder or pass --rerun {name}")
        elif _portable(record["argv"][2:], recorded_run_dir) != _portable(item.argv, run_dir):
            changes = _option_changes(record["argv"][2:], item.argv)
            refusals.append(f"step {name} was made with other options ({changes}); delete {run_dir / name} or pass "
                            f"--rerun {name}")
        elif [i for i in item.inputs if i in remade]:
            item.reason = f"its input {', '.join(i for i in item.inputs if i in remade)} is re-made"
        elif "inputs" in record and record["inputs"] != {i: previous.get(i, {}).get("produced") for i in item.inputs}:
            item.reason = "its inputs were re-made since"
        elif item.step.verb == "sweep" and is_unfinished_sweep(item.target):
            item.reason = "an interrupted sweep: continues from its finished points"
        else:
            item.action, item.reason = "skip", "done"
        if item.action == "run":
            remade.add(name)
    if refusals:
        raise DepthpruneError("; ".join(refusals) + " (or --force to re-run every step)")


def _run_step(item: _PlannedStep, records: dict, dry_run: bool) -> dict:
    """Run (or skip, or in a dry run only describe) one planned step; returns its record for run.json."""
    import uuid
    from datetime import datetime, timezone

    name = item.step.folder_name
    argv = ["depthprune", item.step.verb, *item.argv]
    if item.action == "skip":
        # the same command up to where the run folder lies: record the paths it has now
        return {**records[name], "argv": argv, "status": "skipped (output exists)"}
    if dry_run:
        return {**records.get(name, {"step": name, "argv": argv}), "status": f"planned ({item.reason})"}
    if item.step.verb == "report":
        item.target.parent.mkdir(exist_ok=True)
    if item.target.exists() and hasattr(item.args, "force"):
        item.args.force = True      # replaced only once the new output is complete
    print(f"[{name}] depthprune {item.step.verb} {' '.join(item.argv)}   ({item.reason})")
    result = item.module.run(item.args)
    if result not in (None, 0):
        raise DepthpruneError(f"recipe step {item.step.index} ({item.step.verb}) failed with status {result}")
    return {"step": name, "verb": item.step.verb, "argv": argv,
            "inputs": {i: records.get(i, {}).get("produced") for i in item.inputs},
            "produced": f"{datetime.now(timezone.utc).isoformat(timespec='seconds')}/{uuid.uuid4().hex[:8]}",
            "status": "done"}
