"""The Python API and the CLI are one schema: the same options, the same defaults, the same work for the same input."""

from __future__ import annotations

import importlib
import inspect
import json

import pytest
import yaml

from depthprune import DataSpec, DepthpruneError, api
from depthprune.cli import COMMANDS, main, parse_args
from depthprune.commands.common import verb_schema
from depthprune.commands.schema import options_of

API_OF_VERB = {verb: api.evaluate if verb == "eval" else getattr(api, verb) for verb in COMMANDS}

# verb -> (the function its work ends in, a valid command line after the verb, the same call in Python)
SAME_CALL = {
    "info": ("depthprune.info.info", ["M"], dict()),
    "score": ("depthprune.scoring.score", ["M", "--metrics", "angular", "--data", "builtin", "--output", "{T}/o"],
              dict(metrics="angular", data="builtin", output="{T}/o")),
    "prune": ("depthprune.prune.prune", ["M", "--method", "bi", "--n", "2", "--data", "builtin"],
              dict(method="bi", n=2, data="builtin")),
    "collapse": ("depthprune.collapse.collapse", ["M", "--remove", "2", "--dry-run"], dict(remove=2, dry_run=True)),
    "heal": ("depthprune.heal.heal", ["M", "--max-steps", "1", "--output", "{T}/o"], dict(max_steps=1, output="{T}/o")),
    "eval": ("depthprune.evaluate.runner.evaluate", ["M", "--ppl", "builtin", "--output", "{T}/o"],
             dict(ppl="builtin", output="{T}/o")),
    "sweep": ("depthprune.sweep.sweep", ["M", "--methods", "bi", "--n", "1", "--output", "{T}/o"],
              dict(methods="bi", n="1", output="{T}/o")),
    "report": ("depthprune.report.write_report", ["{T}", "--output", "{T}/r.html"], dict(output="{T}/r.html")),
    "run": ("depthprune.recipe.run_recipe", ["{T}/recipe.yaml"], dict()),
    "export": ("depthprune.filesurgery.export.export_gguf", ["M", "--to-gguf", "{T}/o.gguf"],
               dict(to_gguf="{T}/o.gguf")),
}


class Called(Exception):
    """Raised by a stand-in for the work, carrying the arguments it was given."""


def record(*args, **kwargs):
    raise Called(args, kwargs)


def test_every_verb_is_covered():
    assert set(SAME_CALL) == set(COMMANDS) == set(API_OF_VERB)


@pytest.mark.parametrize("verb", sorted(COMMANDS))
def test_the_cli_and_the_api_make_the_same_call(verb, tmp_path, monkeypatch):
    """Every default of the API equals the CLI's: both reach the work with exactly the same arguments."""
    target, argv, options = SAME_CALL[verb]
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump({"model": "M", "steps": [{"prune": {"layers": "1"}}]}))
    module_name, _, attribute = target.rpartition(".")
    monkeypatch.setattr(importlib.import_module(module_name), attribute, record)
    argv = [a.replace("{T}", str(tmp_path)) for a in argv]
    with pytest.raises(Called) as by_cli:
        main([verb, *argv])
    options = {k: v.replace("{T}", str(tmp_path)) if isinstance(v, str) else v for k, v in options.items()}
    with pytest.raises(Called) as by_api:
        API_OF_VERB[verb]([argv[0]] if verb == "report" else argv[0], **options)
    assert by_api.value.args == by_cli.value.args


@pytest.mark.parametrize("verb", sorted(COMMANDS))
def test_api_defaults_are_the_cli_defaults(verb, tmp_path):
    _, argv, _ = SAME_CALL[verb]
    parsed = parse_args([verb, *[a.replace("{T}", str(tmp_path)) for a in argv]])
    options = {o.name: o for o in options_of(verb_schema(importlib.import_module(COMMANDS[verb])))}
    for name, parameter in inspect.signature(API_OF_VERB[verb]).parameters.items():
        if parameter.default is inspect.Parameter.empty or options[name].required:
            continue   # positionals; an option the command line requires (None in Python: nothing written)
        if name not in {a.lstrip("-").replace("-", "_") for a in argv}:
            assert getattr(parsed, name) == parameter.default, f"{verb} {name}"


def test_the_defaults_that_once_differed():
    heal = inspect.signature(api.heal).parameters
    assert heal["samples"].default == 0 == parse_args(["heal", "M", "--output", "o"]).samples
    assert inspect.signature(api.score).parameters["sequential"].default is None
    assert parse_args(["score", "M", "--output", "o"]).sequential is None


def test_switches_are_their_python_names():
    parameters = inspect.signature(api.score).parameters
    assert parameters["plots"].default is True and "no_plots" not in parameters
    assert parse_args(["score", "M", "--no-plots", "--output", "o"]).plots is False


def test_the_api_refuses_what_the_cli_refuses(tmp_path):
    with pytest.raises(DepthpruneError, match="--token-positions would be ignored with --layers"):
        api.prune("M", layers="1", token_positions="all")
    with pytest.raises(DepthpruneError, match="give only one of layers, method"):
        api.prune("M", layers="1", method="bi")
    with pytest.raises(DepthpruneError, match="give one of layers, method"):
        api.prune("M")
    with pytest.raises(DepthpruneError, match="'first' is not one of last, all"):
        api.score("M", token_positions="first", data="builtin")
    with pytest.raises(DepthpruneError, match="with a DataSpec as data"):
        api.score("M", data=DataSpec("builtin"), samples=4)
    with pytest.raises(DepthpruneError, match="tokens was renamed; use --token-positions"):
        api.score("M", tokens="all")
    with pytest.raises(TypeError, match="no_such_option"):
        api.score("M", no_such_option=1)


def test_evaluate_writes_results_when_given_an_output(tiny_tokenizer, tmp_path):
    from depthprune import LoadedModel
    from tiny_models import tiny_model

    loaded = LoadedModel(model=tiny_model("llama", 2), tokenizer=tiny_tokenizer, source="t", description="t")
    results = api.evaluate(loaded, ppl="builtin", seq_len=32, ppl_max_windows=2, output=tmp_path / "eval")
    saved = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert saved["perplexity"]["builtin"]["ppl"] == pytest.approx(results["perplexity"]["builtin"]["ppl"])
    assert results["perplexity"]["builtin"]["tokens"] == 2 * 31
    assert api.evaluate(loaded, ppl="builtin", seq_len=32, ppl_max_windows=1)["perplexity"]["builtin"]["windows"] == 1
