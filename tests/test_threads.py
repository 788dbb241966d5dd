"""``--threads N`` reaches torch before a verb's work starts: on the command line of every verb, in a recipe (step
option and ``defaults``) and in the Python API, with the same default (torch's own) everywhere."""

from __future__ import annotations

import inspect

import pytest
import torch
import yaml

from depthprune import api
from depthprune.cli import COMMANDS, main, parse_args
from tiny_models import tiny_model


class Reached(Exception):
    """Raised by a stand-in for a verb's work, carrying the thread count torch had when the work started."""


def record_threads(*args, **kwargs):
    raise Reached(torch.get_num_threads())


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_tokenizer):
    folder = tmp_path_factory.mktemp("threads") / "tiny"
    tiny_model("llama", num_layers=4).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


# verb -> (the function its CLI runs, patched as module + attribute, the rest of a valid command line)
WORK = {
    "info": ("depthprune.info.info", []),
    "score": ("depthprune.scoring.score", ["--metrics", "magnitude", "--output", "{T}/out"]),
    "prune": ("depthprune.prune.prune", ["--layers", "1", "--output", "{T}/out"]),
    "collapse": ("depthprune.collapse.collapse", ["--combine", "2", "--output", "{T}/out"]),
    "heal": ("depthprune.heal.heal", ["--max-steps", "1", "--output", "{T}/out"]),
    "eval": ("depthprune.evaluate.runner.evaluate", ["--ppl", "builtin", "--output", "{T}/out"]),
    "sweep": ("depthprune.sweep.sweep", ["--methods", "last", "--n", "1", "--output", "{T}/out"]),
    "report": ("depthprune.report.write_report", ["--output", "{T}/report.html"]),
    "run": ("depthprune.recipe.run_recipe", []),
    "export": ("depthprune.filesurgery.export.export_gguf", ["--to-gguf", "{T}/out.gguf"]),
}


def test_every_verb_is_covered():
    assert set(WORK) == set(COMMANDS)


@pytest.mark.parametrize("verb", sorted(WORK))
def test_threads_option_reaches_torch_before_the_work(verb, checkpoint, tmp_path, monkeypatch):
    import importlib

    target, rest = WORK[verb]
    module_name, _, attribute = target.rpartition(".")
    monkeypatch.setattr(importlib.import_module(module_name), attribute, record_threads)
    if verb == "run":
        recipe = tmp_path / "recipe.yaml"
        recipe.write_text(yaml.safe_dump({"model": str(checkpoint), "steps": [{"prune": {"layers": "1"}}]}))
        first = str(recipe)
    else:
        first = str(checkpoint)
    torch.set_num_threads(1)
    with pytest.raises(Reached) as reached:
        main([verb, first, *[a.replace("{T}", str(tmp_path)) for a in rest], "--threads", "3"])
    assert reached.value.args[0] == 3


@pytest.mark.parametrize("where", ["step", "defaults"])
@pytest.mark.parametrize("verb, target, options", [("prune", "depthprune.prune.prune", {"layers": "1"}),
                                                   ("heal", "depthprune.heal.heal", {"max_steps": 1})])
def test_a_recipe_sets_threads_for_its_steps(where, verb, target, options, checkpoint, tmp_path, monkeypatch):
    import importlib

    module_name, _, attribute = target.rpartition(".")
    monkeypatch.setattr(importlib.import_module(module_name), attribute, record_threads)
    step = {**options, **({"threads": 3} if where == "step" else {})}
    recipe = {"model": str(checkpoint), "output": str(tmp_path / "run"), "steps": [{verb: step}]}
    if where == "defaults":
        recipe["defaults"] = {"threads": 3}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    torch.set_num_threads(1)
    with pytest.raises(Reached) as reached:
        main(["run", str(path)])
    assert reached.value.args[0] == 3


def test_the_api_sets_threads_before_the_work(checkpoint, monkeypatch):
    import importlib

    torch.set_num_threads(1)
    with monkeypatch.context() as patch:
        patch.setattr(importlib.import_module("depthprune.info"), "info", record_threads)
        with pytest.raises(Reached) as reached:
            api.info("model", threads=3)
    assert reached.value.args[0] == 3
    summary = api.info(str(checkpoint), threads=2)      # the real function, end to end
    assert summary["num_layers"] == 4 and torch.get_num_threads() == 2


@pytest.mark.parametrize("verb", sorted(set(COMMANDS)))
def test_cli_and_api_default_to_torchs_own_thread_count(verb, tmp_path):
    first = str(tmp_path / "recipe.yaml") if verb == "run" else "model"
    args = parse_args([verb, first, *[a.replace("{T}", str(tmp_path)) for a in WORK[verb][1]]])
    function = api.evaluate if verb == "eval" else getattr(api, verb)
    assert args.threads is None and inspect.signature(function).parameters["threads"].default is None


def test_no_threads_option_leaves_torch_alone(checkpoint, capsys):
    torch.set_num_threads(1)
    assert main(["info", str(checkpoint)]) == 0
    assert torch.get_num_threads() == 1


def test_api_refuses_a_thread_count_below_one(checkpoint):
    from depthprune import DepthpruneError

    with pytest.raises(DepthpruneError, match="--threads must be a whole number of at least 1"):
        api.info(str(checkpoint), threads=0)
