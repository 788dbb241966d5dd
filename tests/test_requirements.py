"""A missing optional package stops a verb before any work, with one line naming the pip install; work is saved
before anything optional (plots) can fail; every extra brings what its verbs import."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

import depthprune.extras as extras
from depthprune.cli import main
from depthprune.data import builtin_texts
from tiny_models import tiny_model

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_tokenizer):
    folder = tmp_path_factory.mktemp("ckpt") / "tiny"
    tiny_model("llama", num_layers=5).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    (folder / "wikitext2").mkdir()
    (folder / "wikitext2" / "wiki.test.raw").write_text("\n".join(builtin_texts()[-8:]))
    return folder


@pytest.fixture
def no_model_loading(monkeypatch):
    """Fail the test if any model is loaded: the check must come first."""
    from transformers import AutoModelForCausalLM

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the missing package was reported")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", refuse)
    monkeypatch.setattr(AutoModelForCausalLM, "from_config", refuse)


def missing(monkeypatch, *modules):
    real = extras.is_available
    monkeypatch.setattr(extras, "is_available", lambda module: module not in modules and real(module))


CASES = {
    "score plots": (["score", "{ckpt}", "--data", "builtin", "--output", "{out}"], ["matplotlib"],
                    "score's plots (--no-plots skips them) needs matplotlib: pip install 'depthprune[report]'"),
    "score gguf": (["score", "smollm2-135m", "--data", "builtin", "--no-plots", "--output", "{out}"], ["gguf"],
                   "reading smollm2-135m needs gguf: pip install 'depthprune[gguf]'"),
    "score hf data": (["score", "{ckpt}", "--data", "wikitext2", "--no-plots", "--output", "{out}"], ["datasets"],
                      "--data wikitext2 needs datasets: pip install 'depthprune[data]'"),
    "prune data": (["prune", "{ckpt}", "--method", "bi", "--n", "1", "--data", "c4", "--output", "{out}"],
                   ["datasets"], "--data c4 needs datasets"),
    "prune parquet": (["prune", "{ckpt}", "--method", "bi", "--n", "1", "--data", "x.parquet", "--output", "{out}"],
                      ["pyarrow"], "--data x.parquet needs pyarrow: pip install 'depthprune[data]'"),
    "collapse plot": (["collapse", "{ckpt}", "--output", "{out}"], ["matplotlib"],
                      "collapse's similarity plot (--no-plots skips it) needs matplotlib"),
    "eval lm-eval": (["eval", "{ckpt}", "--tasks", "piqa", "--output", "{out}"],
                     ["lm_eval"], "--tasks needs lm-eval: pip install 'depthprune[eval]'"),
    "eval online ppl": (["eval", "{ckpt}", "--ppl", "wikitext2", "--output", "{out}"], ["datasets"],
                        "--ppl wikitext2 without --data-dir needs datasets"),
    "sweep plot": (["sweep", "{ckpt}", "--methods", "bi", "--n", "0:1", "--data-dir", "{data}", "--output", "{out}"],
                   ["matplotlib"], "sweep's plot (--no-plots skips it) needs matplotlib"),
    "sweep heal": (["sweep", "{ckpt}", "--methods", "last", "--n", "0:1", "--data-dir", "{data}", "--heal-steps",
                    "2", "--no-plots", "--output", "{out}"], ["peft", "accelerate"],
                   "--heal-steps with --heal-method lora needs accelerate, peft: pip install 'depthprune[heal]'"),
    "two at once": (["score", "smollm2-135m", "--data", "wikitext2", "--output", "{out}"],
                    ["gguf", "datasets", "matplotlib"],
                    "reading smollm2-135m needs gguf; --data wikitext2 needs datasets; score's plots "
                    "(--no-plots skips them) needs matplotlib: pip install 'depthprune[data,gguf,report]'"),
}


@pytest.mark.parametrize("case", CASES)
def test_a_missing_package_stops_the_verb_before_any_work(case, checkpoint, data_dir, tmp_path, monkeypatch,
                                                          capsys, no_model_loading):
    argv, modules, message = CASES[case]
    argv = [a.format(ckpt=checkpoint, out=tmp_path / "out", data=data_dir) for a in argv]
    missing(monkeypatch, *modules)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("depthprune: error: ") and message in err[0], err
    assert list(tmp_path.iterdir()) == []


def test_a_recipe_checks_every_step_before_step_one(checkpoint, tmp_path, monkeypatch, capsys, no_model_loading):
    import yaml

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"model": str(checkpoint), "output": str(tmp_path / "run"), "steps": [
        {"score": {"data": "builtin", "samples": 2, "seq_len": 16, "metrics": "bi", "no_plots": True}},
        {"prune": {"layers": "1"}},
        {"eval": {"tasks": "piqa"}},
        {"collapse": {}}]}))
    missing(monkeypatch, "lm_eval", "matplotlib")
    assert main(["run", str(recipe)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["depthprune: error: recipe step 3 (eval): --tasks needs lm-eval; recipe step 4 "
                   "(collapse): collapse's similarity plot (--no-plots skips it) needs matplotlib: "
                   "pip install 'depthprune[eval,report]'"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.yaml"]       # no run folder


def test_a_finished_recipe_step_needs_nothing(checkpoint, tmp_path, monkeypatch):
    import yaml

    from depthprune.recipe import run_recipe

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"model": str(checkpoint), "output": str(tmp_path / "run"), "steps": [
        {"score": {"data": "builtin", "samples": 2, "seq_len": 16, "metrics": "bi"}}]}))
    run_recipe(recipe)
    missing(monkeypatch, "matplotlib")     # the plots are drawn already: re-running the recipe skips the step
    assert [s["status"] for s in run_recipe(recipe)["steps"]] == ["skipped (output exists)"]


def test_failing_plots_keep_the_scores(checkpoint, tmp_path, monkeypatch, capsys):
    import depthprune.scoring.plots as plots

    def broken(scores, folder):
        raise RuntimeError("no display")

    monkeypatch.setattr(plots, "write_plots", broken)
    out = tmp_path / "out"
    assert main(["score", str(checkpoint), "--data", "builtin", "--samples", "2", "--seq-len", "16", "--metrics",
                 "bi", "--output", str(out)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("depthprune:")]
    assert len(errors) == 1 and "scores were saved" in errors[0] and "no display" in errors[0]
    assert json.loads((out / "scores.json").read_text())["num_layers"] == 5


def test_a_failing_sweep_plot_keeps_every_point(checkpoint, data_dir, tmp_path, monkeypatch, capsys):
    import depthprune.sweep as sweep_module

    monkeypatch.setattr(sweep_module, "sweep_plot", lambda result: (_ for _ in ()).throw(RuntimeError("no font")))
    out = tmp_path / "sweep"
    assert main(["sweep", str(checkpoint), "--methods", "last", "--n", "0:1", "--data-dir", str(data_dir),
                 "--eval-seq-len", "16", "--max-windows", "2", "--output", str(out)]) == 2
    assert "no font" in capsys.readouterr().err
    assert len(json.loads((out / "sweep.json").read_text())["points"]) == 2
    assert not (out / "sweep.progress.json").exists()


def read_extras() -> dict[str, list[str]]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def distributions(extra: str, table: dict) -> set[str]:
    """The distributions an extra installs, following depthprune[...] self-references."""
    names = set()
    for requirement in table[extra]:
        name = re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].strip().lower()
        if name == "depthprune":
            for inner in re.search(r"\[(.*?)\]", requirement).group(1).split(","):
                names |= distributions(inner.strip(), table)
        else:
            names.add(name)
    return names


def test_every_extra_named_in_an_error_installs_that_package():
    table = read_extras()
    for module, (distribution, extra) in extras.PACKAGES.items():
        assert extra in table, f"{module}: the error says pip install 'depthprune[{extra}]', which does not exist"
        assert distribution.lower() in distributions(extra, table), (module, extra)


def test_each_extra_brings_what_its_verbs_import():
    table = read_extras()
    # heal draws the loss curve, and reads Hugging Face data; qlora is heal plus 4-bit weights
    assert {"accelerate", "peft", "matplotlib", "datasets"} <= distributions("heal", table)
    assert {"accelerate", "peft", "bitsandbytes"} <= distributions("qlora", table)
    assert {"datasets", "pyarrow"} <= distributions("data", table)
    every = distributions("all", table)
    for extra in ("gguf", "data", "heal", "eval", "report"):
        assert distributions(extra, table) <= every
