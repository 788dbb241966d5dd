"""The Python API mirrors the CLI: every option of a verb is a parameter of the API function of the same name."""

from __future__ import annotations

import argparse
import importlib
import inspect
import json

import pytest

from depthprune import api
from depthprune.cli import COMMANDS

# CLI options that configure the process, not the computation, per verb.
PROCESS_ONLY = {"help", "verbose", "json", "no_progress", "no_plots", "no_plot", "validate"}
# option dest -> API parameter where the names differ for a reason
RENAMED = {"plots": "plots", "run_dirs": "run_dirs"}
API_OF_VERB = {"info": api.info, "prune": api.prune, "score": api.score, "collapse": api.collapse,
               "heal": api.heal, "sweep": api.sweep, "report": api.report, "run": api.run, "export": api.export}


def _dests(verb: str) -> set[str]:
    parser = argparse.ArgumentParser()
    importlib.import_module(COMMANDS[verb]).add_arguments(parser)
    return {a.dest for a in parser._actions} - PROCESS_ONLY


@pytest.mark.parametrize("verb", sorted(API_OF_VERB))
def test_every_cli_option_is_an_api_parameter(verb):
    signature = inspect.signature(API_OF_VERB[verb])
    parameters = set(signature.parameters)
    takes_any = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    aliases = {"model": {"model", "recipe", "run_dirs"}, "recipe": {"recipe"}, "run_dirs": {"run_dirs"},
               "config": {"config_file"}, "text_field": {"data"}, "samples": {"data"}, "seq_len": {"data"},
               "seed": {"data"}, "chat_template": {"data"}}
    missing = []
    for dest in _dests(verb):
        candidates = aliases.get(dest, set()) | {dest}
        if not (candidates & parameters) and not takes_any:
            missing.append(dest)
    assert not missing, f"{verb}: CLI options without an API parameter: {missing}"


def test_every_verb_is_in_the_api():
    assert set(COMMANDS) - set(API_OF_VERB) == {"eval"} and callable(api.evaluate)


def test_evaluate_writes_results_when_given_an_output(tiny_tokenizer, tmp_path):
    from depthprune import LoadedModel
    from tiny_models import tiny_model

    loaded = LoadedModel(model=tiny_model("llama", 2), tokenizer=tiny_tokenizer, source="t", description="t")
    results = api.evaluate(loaded, ppl="builtin", seq_len=32, ppl_max_windows=2, output=tmp_path / "eval")
    saved = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert saved["perplexity"]["builtin"]["ppl"] == pytest.approx(results["perplexity"]["builtin"]["ppl"])
    assert results["perplexity"]["builtin"]["tokens"] == 2 * 31


def test_eval_options_are_parameters_of_the_evaluator():
    from depthprune.evaluate.runner import evaluate

    parameters = set(inspect.signature(evaluate).parameters) | set(inspect.signature(api.evaluate).parameters)
    missing = _dests("eval") - parameters
    assert not missing, f"eval: CLI options without an API parameter: {missing}"
