"""Bad input, verb by verb: exit status 2, one ``depthprune: error:`` line that names the problem and the fix, no
traceback, no output folder, and every file that existed before is unchanged.

The cases run in-process through ``depthprune.cli.main`` (fast); two of them also run in a real subprocess, which
proves that nothing prints a traceback.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from depthprune.cli import main
from tiny_models import tiny_model

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------ the inputs
@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_tokenizer) -> Path:
    """A folder of inputs, good and bad: checkpoints, data files, scores, recipes."""
    root = tmp_path_factory.mktemp("bad-input")
    good = root / "tiny"
    tiny_model("llama", num_layers=6).save_pretrained(good)
    tiny_tokenizer.save_pretrained(good)

    weights_only = root / "weights-only"
    tiny_model("llama", num_layers=6).save_pretrained(weights_only)

    for name, content in {"corrupt-meta": "{not json", "list-meta": "[0, 1, 2]",
                          "foreign-meta": json.dumps({"base_model": "x", "kept_layers": [0, 1, 2]})}.items():
        shutil.copytree(good, root / name)
        (root / name / "depthprune.json").write_text(content)

    # A per-layer list the architecture table does not know about (llama's table lists only layer_types etc.).
    odd = root / "odd-config"
    shutil.copytree(good, odd)
    config = json.loads((odd / "config.json").read_text())
    config["attention_chunk_layers"] = [1, 0, 1, 0, 1, 0]
    (odd / "config.json").write_text(json.dumps(config))

    # Scores written by `depthprune score` for ANOTHER model with the same number of layers.
    other = root / "other-model"
    tiny_model("mistral", num_layers=6).save_pretrained(other)
    tiny_tokenizer.save_pretrained(other)
    assert main(["score", str(other), "--metrics", "magnitude", "--no-plots", "--output", str(root / "other-scores")]) \
        == 0

    data = root / "data"
    data.mkdir()
    (data / "not-object.jsonl").write_text('{"text": "a fine line of text"}\n["a", "list"]\n')
    (data / "null-text.jsonl").write_text('{"text": "a fine line of text"}\n{"text": null}\n')
    (data / "strings.json").write_text(json.dumps(["first document", "second document"]))
    (data / "body.jsonl").write_text("".join(json.dumps({"body": t}) + "\n" for t in ["one text", "another"] * 50))
    (data / "table.csv").write_text("text\nhello\n")
    (data / "empty-folder").mkdir()

    recipes = root / "recipes"
    recipes.mkdir()
    (recipes / "not-yaml.yaml").write_text("model: [unclosed\nsteps: {\n")
    (recipes / "list.yaml").write_text("- score\n- prune\n")
    (recipes / "unknown-key.yaml").write_text(yaml.safe_dump({"model": str(good), "stpes": [{"prune": {}}]}))
    (recipes / "unknown-option.yaml").write_text(yaml.safe_dump({"model": str(good), "output": str(root / "run-x"),
                                                                 "steps": [{"prune": {"layer": "1"}}]}))
    (recipes / "old-tokens.yaml").write_text(yaml.safe_dump({"model": str(good), "output": str(root / "run-z"),
                                                            "defaults": {"tokens": 1000},
                                                            "steps": [{"heal": {"max_steps": 1}}]}))
    (recipes / "bad-threads.yaml").write_text(yaml.safe_dump({"model": str(good), "output": str(root / "run-y"),
                                                              "steps": [{"prune": {"layers": "1", "threads": 0}}]}))
    return root


def snapshot(*folders: Path) -> dict:
    """Every file below the folders with a hash of its content (and every folder), to compare before/after."""
    state = {}
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            state[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
    return state


def run_cli(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exit_:   # argparse exits itself
        return exit_.code


# ------------------------------------------------------------------------------------------------ the cases
# (id, argv with {W} = the inputs folder and {OUT} = an output path that must not appear, words the error must hold)
CASES = [
    # info
    ("info-missing-model", ["info", "{W}/nowhere"], ["not found"]),
    ("info-folder-without-config", ["info", "{W}/data"], ["no config.json"]),
    ("info-corrupt-metadata", ["info", "{W}/corrupt-meta"], ["depthprune.json", "not valid JSON", "remove"]),
    ("info-metadata-not-an-object", ["info", "{W}/list-meta"], ["depthprune.json", "not", "remove"]),
    ("info-foreign-metadata", ["info", "{W}/foreign-meta"], ["3 kept layers", "6", "remove"]),
    ("info-zero-threads", ["info", "{W}/tiny", "--threads", "0"], ["--threads", "at least 1"]),
    # score
    ("score-unknown-metric", ["score", "{W}/tiny", "--metrics", "angluar", "--data", "builtin", "--output", "{OUT}"],
     ["angluar", "angular"]),
    ("score-needs-data", ["score", "{W}/tiny", "--metrics", "bi", "--output", "{OUT}"], ["--data"]),
    ("score-missing-data-file", ["score", "{W}/tiny", "--data", "{W}/missing.txt", "--seq-len", "8",
         "--output", "{OUT}"],
     ["missing.txt", "not found"]),
    ("score-jsonl-line-not-object", ["score", "{W}/tiny", "--data", "{W}/data/not-object.jsonl", "--samples", "1",
                                     "--seq-len", "4", "--output", "{OUT}"], ["line 2", "object", "text"]),
    ("score-null-text", ["score", "{W}/tiny", "--data", "{W}/data/null-text.jsonl", "--samples", "1",
                         "--seq-len", "4", "--output", "{OUT}"], ["line 2", "null", "text"]),
    ("score-json-list-of-strings", ["score", "{W}/tiny", "--data", "{W}/data/strings.json", "--samples", "1",
                                    "--seq-len", "4", "--output", "{OUT}"], ["item 1", "object", "text"]),
    ("score-unsupported-data-file", ["score", "{W}/tiny", "--data", "{W}/data/table.csv", "--seq-len", "8",
         "--output", "{OUT}"],
     ["unsupported", ".jsonl"]),
    ("score-empty-data-folder", ["score", "{W}/tiny", "--data", "{W}/data/empty-folder", "--seq-len", "8",
         "--output", "{OUT}"],
     ["holds no"]),
    ("score-missing-text-field", ["score", "{W}/tiny", "--data", "{W}/data/body.jsonl", "--seq-len", "8",
         "--output", "{OUT}"],
     ["no field 'text'", "--text-field"]),
    ("score-zero-samples", ["score", "{W}/tiny", "--data", "builtin", "--samples", "0", "--output", "{OUT}"],
     ["--samples", "at least 1"]),
    ("score-seq-len-one", ["score", "{W}/tiny", "--data", "builtin", "--seq-len", "1", "--output", "{OUT}"],
     ["--seq-len", "at least 2"]),
    ("score-seq-len-beyond-context", ["score", "{W}/tiny", "--data", "builtin", "--samples", "1", "--seq-len", "4096",
                                      "--output", "{OUT}"], ["--seq-len 4096", "256"]),
    ("score-data-for-data-free-metric", ["score", "{W}/tiny", "--metrics", "magnitude", "--data", "builtin",
                                         "--output", "{OUT}"], ["--data", "ignored", "drop"]),
    ("score-samples-without-data", ["score", "{W}/tiny", "--metrics", "magnitude", "--samples", "4",
                                    "--output", "{OUT}"], ["--samples", "ignored", "magnitude", "drop"]),
    ("score-sleb-n-without-sleb", ["score", "{W}/tiny", "--metrics", "bi", "--data", "builtin", "--sleb-n", "2",
                                   "--output", "{OUT}"], ["--sleb-n", "ignored"]),
    ("score-not-an-integer", ["score", "{W}/tiny", "--samples", "many", "--output", "{OUT}"],
     ["--samples", "invalid int", "--help"]),
    # prune
    ("prune-layers-with-missing-data", ["prune", "{W}/tiny", "--layers", "1", "--data", "{W}/missing.txt",
                                        "--output", "{OUT}"], ["--data", "ignored", "--layers", "drop"]),
    ("prune-layers-with-samples", ["prune", "{W}/tiny", "--layers", "1", "--samples", "4", "--output", "{OUT}"],
     ["--samples", "ignored", "--layers"]),
    ("prune-layers-with-token-positions", ["prune", "{W}/tiny", "--layers", "1", "--token-positions", "all",
                                           "--output", "{OUT}"], ["--token-positions", "ignored"]),
    ("prune-old-tokens-option", ["prune", "{W}/tiny", "--method", "angular", "--n", "1", "--tokens", "all",
                                 "--output", "{OUT}"], ["--tokens was renamed", "--token-positions"]),
    ("prune-layers-with-n", ["prune", "{W}/tiny", "--layers", "1", "--n", "2", "--output", "{OUT}"],
     ["--n", "--method"]),
    ("prune-zero-n", ["prune", "{W}/tiny", "--method", "last", "--n", "0", "--output", "{OUT}"], ["--n", "positive"]),
    ("prune-negative-n", ["prune", "{W}/tiny", "--method", "last", "--n", "-2", "--output", "{OUT}"],
     ["--n", "positive"]),
    ("prune-ratio-out-of-range", ["prune", "{W}/tiny", "--method", "last", "--ratio", "1.5", "--output", "{OUT}"],
     ["--ratio", "between 0 and 1"]),
    ("prune-method-needs-data", ["prune", "{W}/tiny", "--method", "bi", "--n", "2", "--output", "{OUT}"],
     ["needs calibration data", "--data"]),
    ("prune-data-with-last", ["prune", "{W}/tiny", "--method", "last", "--n", "2", "--data", "builtin",
                              "--output", "{OUT}"], ["--data", "ignored", "last"]),
    ("prune-data-with-scores", ["prune", "{W}/tiny", "--method", "magnitude", "--n", "2", "--data", "builtin",
                                "--scores", "{W}/other-scores/scores.json", "--output", "{OUT}"],
     ["--data", "ignored", "--scores"]),
    ("prune-scores-of-another-model", ["prune", "{W}/tiny", "--method", "magnitude", "--n", "2",
                                       "--scores", "{W}/other-scores/scores.json", "--output", "{OUT}"],
     ["other-model", "depthprune score"]),
    ("prune-scores-not-json", ["prune", "{W}/tiny", "--method", "bi", "--n", "2", "--scores",
                               "{W}/data/table.csv", "--output", "{OUT}"], ["not valid JSON"]),
    ("prune-scores-is-a-folder", ["prune", "{W}/tiny", "--method", "bi", "--n", "2", "--scores",
                                  "{W}/other-scores", "--output", "{OUT}"], ["folder", "scores.json"]),
    ("prune-unknown-per-layer-config-list", ["prune", "{W}/odd-config", "--layers", "1", "--output", "{OUT}"],
     ["attention_chunk_layers", "architectures.json", "per_layer_lists"]),
    ("prune-corrupt-metadata", ["prune", "{W}/corrupt-meta", "--layers", "1", "--output", "{OUT}"],
     ["depthprune.json", "not valid JSON"]),
    ("prune-no-output", ["prune", "{W}/tiny", "--layers", "1"], ["--output"]),
    # collapse
    ("collapse-without-tokenizer", ["collapse", "{W}/weights-only", "--combine", "2", "--output", "{OUT}"],
     ["tokenizer", "copy"]),
    ("collapse-combine-one", ["collapse", "{W}/tiny", "--combine", "1", "--output", "{OUT}"], ["--combine", ">= 2"]),
    ("collapse-remove-ratio-out-of-range", ["collapse", "{W}/tiny", "--combine", "2", "--remove-ratio", "1.5",
                                            "--output", "{OUT}"], ["--remove-ratio", "between 0 and 1"]),
    ("collapse-target-depth-too-deep", ["collapse", "{W}/tiny", "--combine", "2", "--target-depth", "6",
                                        "--output", "{OUT}"], ["--target-depth", "between 1 and 5", "kept"]),
    ("collapse-two-targets", ["collapse", "{W}/tiny", "--remove", "2", "--target-depth", "4", "--output", "{OUT}"],
     ["--target-depth", "not allowed with", "--remove"]),
    ("collapse-old-target-layers", ["collapse", "{W}/tiny", "--target-layers", "2", "--output", "{OUT}"],
     ["--target-layers was renamed", "--remove N", "--target-depth D"]),
    ("collapse-null-text", ["collapse", "{W}/tiny", "--combine", "2", "--data", "{W}/data/null-text.jsonl",
                            "--output", "{OUT}"], ["line 2", "null"]),
    ("collapse-zero-batch-size", ["collapse", "{W}/tiny", "--combine", "2", "--batch-size", "0", "--output", "{OUT}"],
     ["--batch-size", "at least 1"]),
    # heal
    ("heal-null-text", ["heal", "{W}/tiny", "--data", "{W}/data/null-text.jsonl", "--max-steps", "1", "--cpu",
                        "--output", "{OUT}"], ["line 2", "null"]),
    ("heal-old-tokens-option", ["heal", "{W}/tiny", "--tokens", "1000", "--cpu", "--output", "{OUT}"],
     ["--tokens was renamed", "--train-tokens"]),
    ("heal-missing-data", ["heal", "{W}/tiny", "--data", "{W}/missing.jsonl", "--max-steps", "1", "--cpu",
                           "--output", "{OUT}"], ["missing.jsonl", "not found"]),
    pytest.param("heal-data-self", ["heal", "{W}/tiny", "--data", "self", "--max-steps", "1", "--cpu",
                                    "--output", "{OUT}"], ["self"], id="heal-data-self"),
    # eval
    ("eval-seq-len-beyond-context", ["eval", "{W}/tiny", "--ppl", "builtin", "--seq-len", "128,512",
                                     "--output", "{OUT}"], ["--seq-len 512", "256", "max_position_embeddings"]),
    ("eval-unknown-task", ["eval", "{W}/tiny", "--tasks", "piqaa", "--data-dir", "{W}/data", "--output", "{OUT}"],
     ["piqaa", "piqa"]),
    ("eval-unknown-ppl-source", ["eval", "{W}/tiny", "--ppl", "wikitext3", "--output", "{OUT}"],
     ["wikitext3", "wikitext2"]),
    ("eval-nothing-to-evaluate", ["eval", "{W}/tiny", "--output", "{OUT}"], ["nothing to evaluate"]),
    ("eval-speed-option-without-speed", ["eval", "{W}/tiny", "--ppl", "builtin", "--speed-repeats", "3",
                                         "--output", "{OUT}"], ["--speed-repeats", "ignored", "--speed"]),
    ("eval-bad-batch-sizes", ["eval", "{W}/tiny", "--speed", "--speed-batch-sizes", "1,x", "--output", "{OUT}"],
     ["--speed-batch-sizes"]),
    ("eval-zero-windows", ["eval", "{W}/tiny", "--ppl", "builtin", "--seq-len", "16", "--ppl-max-windows", "0",
                           "--output", "{OUT}"], ["--ppl-max-windows", "at least 1"]),
    ("eval-negative-few-shot", ["eval", "{W}/tiny", "--tasks", "piqa", "--data-dir", "{W}/data", "--num-fewshot", "-1",
                                "--output", "{OUT}"], ["--num-fewshot", "at least 0"]),
    # sweep
    ("sweep-zero-windows", ["sweep", "{W}/tiny", "--methods", "last", "--n", "1", "--eval", "builtin",
                            "--max-windows", "0", "--output", "{OUT}"], ["--max-windows", "at least 1"]),
    ("sweep-chat-template-without-template", ["sweep", "{W}/tiny", "--methods", "bi", "--n", "1", "--eval",
                                              "builtin", "--samples", "2", "--seq-len", "16", "--chat-template",
                                              "--output", "{OUT}"], ["chat template"]),
    ("sweep-text-field-missing", ["sweep", "{W}/tiny", "--methods", "bi", "--n", "1", "--eval", "builtin",
                                  "--data", "{W}/data/body.jsonl", "--text-field", "content", "--samples", "2",
                                  "--seq-len", "8", "--output", "{OUT}"], ["no field 'content'"]),
    ("sweep-n-too-large", ["sweep", "{W}/tiny", "--methods", "last", "--n", "0:5", "--eval", "builtin",
                           "--output", "{OUT}"], ["--n", "keep at least"]),
    ("sweep-unknown-eval", ["sweep", "{W}/tiny", "--eval", "wikitxt2", "--output", "{OUT}"], ["wikitxt2"]),
    ("sweep-unknown-method", ["sweep", "{W}/tiny", "--methods", "bii", "--eval", "builtin", "--output", "{OUT}"],
     ["bii", "did you mean 'bi'"]),
    ("sweep-heal-method-without-heal-steps", ["sweep", "{W}/tiny", "--methods", "last", "--n", "1", "--eval",
                                              "builtin", "--heal-method", "full", "--output", "{OUT}"],
     ["--heal-method", "ignored", "--heal-steps"]),
    ("sweep-data-with-last-only", ["sweep", "{W}/tiny", "--methods", "last", "--n", "1", "--eval", "builtin",
                                   "--samples", "4", "--output", "{OUT}"], ["--samples", "ignored", "last"]),
    ("sweep-scores-of-another-model", ["sweep", "{W}/tiny", "--methods", "magnitude", "--n", "1", "--eval",
                                       "builtin", "--scores", "{W}/other-scores/scores.json", "--output", "{OUT}"],
     ["other-model", "depthprune score"]),
    # run
    ("run-missing-recipe", ["run", "{W}/recipes/nowhere.yaml"], ["not found"]),
    ("run-not-yaml", ["run", "{W}/recipes/not-yaml.yaml"], ["not valid YAML"]),
    ("run-recipe-not-a-mapping", ["run", "{W}/recipes/list.yaml"], ["mapping"]),
    ("run-unknown-recipe-key", ["run", "{W}/recipes/unknown-key.yaml"], ["stpes", "did you mean 'steps'"]),
    ("run-unknown-step-option", ["run", "{W}/recipes/unknown-option.yaml"], ["'layer'", "did you mean 'layers'"]),
    ("run-old-tokens-in-defaults", ["run", "{W}/recipes/old-tokens.yaml"], ["--tokens was renamed", "--train-tokens"]),
    ("run-zero-threads-in-step", ["run", "{W}/recipes/bad-threads.yaml"], ["--threads", "at least 1"]),
    # report
    ("report-missing-run-folder", ["report", "{W}/no-such-run", "--output", "{OUT}/report.html"], ["no-such-run"]),
    ("report-run-folder-is-a-file", ["report", "{W}/data/table.csv", "--output", "{OUT}/report.html"],
     ["table.csv"]),
    ("report-unknown-verb-option", ["report", "{W}/tiny", "--titel", "x", "--output", "{OUT}/report.html"],
     ["--titel"]),
]


ParameterSet = type(pytest.param(0))


def _case_params():
    for case in CASES:
        yield case if isinstance(case, ParameterSet) else pytest.param(*case, id=case[0])


@pytest.mark.parametrize("name, argv, words", list(_case_params()))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(world, tmp_path, capsys, name, argv, words):
    out = tmp_path / "out"
    argv = [a.replace("{W}", str(world)).replace("{OUT}", str(out)) for a in argv]
    before = snapshot(world, tmp_path)
    status = run_cli(argv)
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("depthprune: error:")]
    assert status == 2, f"exit status {status}; stderr: {captured.err[-2000:]}"
    assert len(errors) == 1, captured.err
    assert "Traceback" not in captured.err
    for word in words:
        assert word in errors[0], errors[0]
    assert not out.exists()
    assert snapshot(world, tmp_path) == before


def test_there_are_at_least_30_cases_covering_every_verb():
    verbs = {(case.values if isinstance(case, ParameterSet) else case)[1][0] for case in CASES}
    assert len(CASES) >= 30
    assert verbs == {"info", "score", "prune", "collapse", "heal", "eval", "sweep", "run", "report"}


@pytest.mark.parametrize("argv, words", [
    (["prune", "{W}/tiny", "--layers", "1", "--data", "{W}/missing.txt", "--output", "{OUT}"], ["ignored"]),
    (["score", "{W}/tiny", "--data", "{W}/data/null-text.jsonl", "--samples", "1", "--seq-len", "4",
      "--output", "{OUT}"], ["null"]),
    (["prune", "{W}/tiny", "--n", "x", "--method", "bi", "--output", "{OUT}"], ["invalid int"]),
])
def test_a_real_process_prints_one_line_and_no_traceback(world, tmp_path, argv, words):
    out = tmp_path / "out"
    argv = [a.replace("{W}", str(world)).replace("{OUT}", str(out)) for a in argv]
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    process = subprocess.run([sys.executable, "-m", "depthprune", *argv], capture_output=True, text=True, env=env,
                             cwd=tmp_path, timeout=300)
    assert process.returncode == 2, process.stderr
    assert "Traceback" not in process.stderr
    errors = [line for line in process.stderr.splitlines() if line.startswith("depthprune: error:")]
    assert len(errors) == 1 and all(word in errors[0] for word in words), process.stderr
    assert not out.exists()


# ------------------------------------------------------------------------------------------------ beyond the table
def test_a_missing_data_file_is_refused_before_the_model_is_loaded(world, tmp_path, monkeypatch, capsys):
    import importlib

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the data was checked")

    monkeypatch.setattr(importlib.import_module("depthprune.loading"), "load_model", no_loading)
    monkeypatch.setattr(importlib.import_module("depthprune.prune"), "load_model", no_loading)
    for argv in (["score", str(world / "tiny"), "--data", str(world / "missing.txt"), "--output", str(tmp_path / "o")],
                 ["prune", str(world / "tiny"), "--method", "bi", "--n", "1", "--data", str(world / "missing.txt"),
                  "--output", str(tmp_path / "o")]):
        assert run_cli(argv) == 2
        assert "missing.txt' not found" in capsys.readouterr().err


def test_sweep_reads_records_through_text_field(world, tmp_path, capsys):
    """--text-field reaches sweep's calibration data (it was ignored, so records without 'text' failed)."""
    out = tmp_path / "sweep"
    assert run_cli(["sweep", str(world / "tiny"), "--methods", "bi", "--n", "1", "--eval", "builtin",
                    "--eval-seq-len", "16", "--max-windows", "2", "--data", str(world / "data" / "body.jsonl"),
                    "--text-field", "body", "--samples", "2", "--seq-len", "8", "--output", str(out)]) == 0
    calibration = json.loads((out / "sweep.json").read_text())["calibration"]
    assert calibration["text_field"] == "body" and calibration["data"].endswith("body.jsonl")


def test_a_refused_config_list_leaves_the_model_untouched(world):
    from transformers import AutoModelForCausalLM

    from depthprune import DepthpruneError, remove_layers

    model = AutoModelForCausalLM.from_pretrained(world / "odd-config")
    with pytest.raises(DepthpruneError, match="attention_chunk_layers"):
        remove_layers(model, [1])
    assert len(model.model.layers) == 6 and model.config.num_hidden_layers == 6
    # A list that only happens to have one entry per layer, and that the table names as such, passes unchanged.
    model.config.attention_chunk_layers = None
    model.config.eos_token_id = [2, 3, 4, 5, 6, 7]
    assert remove_layers(model, [1]) == [0, 2, 3, 4, 5]
    assert model.config.eos_token_id == [2, 3, 4, 5, 6, 7] and model.config.num_hidden_layers == 5


def test_a_recipe_shaped_like_the_demo_is_not_refused(world, tmp_path):
    """The runner passes the score step's scores on; the sweep step repeating that data is not bad input."""
    data = {"data": "builtin", "samples": 2, "seq_len": 16}
    recipe = {"model": str(world / "tiny"), "output": str(tmp_path / "run"), "defaults": {"threads": 1},
              "steps": [{"score": {**data, "metrics": "bi", "no_plots": True}},
                        {"sweep": {"methods": "bi,last", "n": "0:1", "eval": "builtin", "eval_seq_len": 16,
                                   "max_windows": 2, **data}},
                        {"prune": {"method": "bi", "n": 1}}]}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert run_cli(["run", str(path)]) == 0
    pruned = json.loads((tmp_path / "run" / "03-prune" / "depthprune.json").read_text())
    assert pruned["plan"]["settings"]["scores_file"].endswith("01-score/scores.json")
