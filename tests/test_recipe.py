"""Recipes: validation against the CLI's own options, step chaining, resuming."""

from __future__ import annotations

import json

import pytest
import yaml

from depthprune import DepthpruneError
from depthprune.cli import main
from depthprune.recipe import load_recipe, run_recipe, step_argv
from tiny_models import tiny_model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_tokenizer):
    folder = tmp_path_factory.mktemp("ckpt") / "tiny"
    tiny_model("llama", num_layers=6).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


def write(tmp_path, recipe: dict):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_step_keys_become_the_cli_options(checkpoint):
    recipe = load_recipe({"model": str(checkpoint), "steps": [{"prune": {"layers": "1-2", "allow_final_layer": True,
                                                                          "dry-run": False}}]})
    argv = step_argv(recipe.steps[0], "M", "OUT")
    assert argv == ["M", "--layers", "1-2", "--allow-final-layer", "--output", "OUT"]


@pytest.mark.parametrize("options, words", [
    ({"no_plots": True}, ["--no-plots"]), ({"plots": False}, ["--no-plots"]), ({"no-plots": False}, []),
    ({"plots": True}, []), ({"keep_edges": False}, ["--no-keep-edges"]), ({"keep_edges": True}, ["--keep-edges"]),
    ({"token_positions": "all"}, ["--token-positions", "all"]),
    ({"metrics": ["bi", "magnitude"]}, ["--metrics", "bi,magnitude"]),
])
def test_step_keys_of_switches_and_lists(options, words):
    recipe = load_recipe({"model": "M", "steps": [{"score": {"data": "builtin", **options}}]})
    assert step_argv(recipe.steps[0], "M", None) == ["M", "--data", "builtin", *words]


@pytest.mark.parametrize("recipe, message", [
    ({"model": "m", "steps": [{"prune": {"layer": "1"}}]}, "unknown option 'layer'.*did you mean 'layers'"),
    ({"model": "m", "steps": [{"prnue": {}}]}, "unknown recipe step 'prnue'.*did you mean 'prune'"),
    ({"model": "m", "steps": [{"prune": {"layers": "1", "output": "x"}}]}, "set by the run itself"),
    ({"model": "m", "stpes": []}, "unknown key 'stpes'"),
    ({"model": "m", "steps": [{"prune": {"layers": "1", "dry_run": "yes"}}]}, "is a switch"),
    ({"model": "m", "steps": [{"prune": {}}]}, "required"),
    ({"model": "m", "defaults": {"nonsense": 1}, "steps": [{"prune": {"layers": "1"}}]}, "accepted by no step"),
    ({"model": "m", "steps": [{"score": {"tokens": "all"}}]}, "--tokens was renamed; use --token-positions"),
    ({"model": "m", "steps": [{"heal": {"tokens": 100}}]}, "--tokens was renamed; use --train-tokens"),
    ({"model": "m", "defaults": {"tokens": "all"}, "steps": [{"prune": {"layers": "1"}}]}, "--token-positions"),
    ({"model": "m", "steps": [{"collapse": {"target_layers": 2}}]}, "--remove N .*--target-depth D"),
    ({"model": "m", "steps": [{"collapse": {"remove": 2, "target_depth": 3}}]}, "not allowed with"),
    ({"model": "m", "steps": [{"score": {"show_progress": False}}]}, "unknown option 'show_progress'"),
])
def test_invalid_recipes_are_one_line_errors(recipe, message):
    with pytest.raises(DepthpruneError, match=message):
        load_recipe(recipe)


def test_run_chains_models_and_resumes(checkpoint, tmp_path, capsys):
    path = write(tmp_path, {"model": str(checkpoint), "output": str(tmp_path / "run"),
                            "defaults": {"dtype": "float32"},
                            "steps": [{"prune": {"layers": "1"}}, {"prune": {"layers": "1"}}]})
    first = run_recipe(path)
    assert [s["status"] for s in first["steps"]] == ["done", "done"]
    metadata = json.loads((tmp_path / "run" / "02-prune" / "depthprune.json").read_text())
    # the second step pruned the first step's output: current layer 1 is original 2, plus original 1 earlier
    assert metadata["removed_layers"] == [1, 2] and metadata["num_layers"] == 4
    assert first["model"] == str(tmp_path / "run" / "02-prune")
    assert (tmp_path / "run" / "recipe.yaml").is_file()

    stamp = (tmp_path / "run" / "02-prune" / "depthprune.json").stat().st_mtime_ns
    again = run_recipe(path)
    assert [s["status"] for s in again["steps"]] == ["skipped (output exists)"] * 2
    assert (tmp_path / "run" / "02-prune" / "depthprune.json").stat().st_mtime_ns == stamp


def test_resume_after_a_crash_runs_only_the_missing_steps(checkpoint, tmp_path):
    path = write(tmp_path, {"model": str(checkpoint), "output": str(tmp_path / "run"),
                            "steps": [{"prune": {"layers": "1"}}, {"prune": {"layers": "9"}}]})
    with pytest.raises(DepthpruneError, match="out of range"):
        run_recipe(path)
    assert (tmp_path / "run" / "01-prune").is_dir() and not (tmp_path / "run" / "02-prune").exists()
    fixed = write(tmp_path, {"model": str(checkpoint), "output": str(tmp_path / "run"),
                             "steps": [{"prune": {"layers": "1"}}, {"prune": {"layers": "2"}}]})
    result = run_recipe(fixed)
    assert [s["status"] for s in result["steps"]] == ["skipped (output exists)", "done"]


def test_a_step_made_by_other_options_is_refused_until_rerun(checkpoint, tmp_path, capsys):
    run = tmp_path / "run"
    steps = lambda layers: [{"prune": {"layers": layers}}, {"prune": {"layers": "0", "allow_first_layer": True}}]   # noqa: E731
    run_recipe(write(tmp_path, {"model": str(checkpoint), "output": str(run), "steps": steps("1")}))
    record_before = (run / "run.json").read_text()
    edited = write(tmp_path, {"model": str(checkpoint), "output": str(run), "steps": steps("3")})
    with pytest.raises(DepthpruneError, match=r"step 01-prune was made with other options \(--layers 1 -> 3\).*"
                                              r"--rerun 01-prune") as refused:
        run_recipe(edited)
    assert "\n" not in str(refused.value)
    # nothing ran, nothing was recorded: the folder and run.json still say layer 1
    assert json.loads((run / "01-prune" / "depthprune.json").read_text())["removed_layers"] == [1]
    assert (run / "run.json").read_text() == record_before
    capsys.readouterr()
    assert main(["run", str(edited)]) == 2
    assert capsys.readouterr().err.startswith("depthprune: error: step 01-prune was made with other options")

    result = run_recipe(edited, rerun=["01-prune"])
    # the re-made step 1 makes step 2 (which prunes step 1's output) stale: both run
    assert [s["status"] for s in result["steps"]] == ["done", "done"]
    assert json.loads((run / "01-prune" / "depthprune.json").read_text())["removed_layers"] == [3]
    assert json.loads((run / "02-prune" / "depthprune.json").read_text())["removed_layers"] == [0, 3]
    record = json.loads((run / "run.json").read_text())["steps"]
    assert record[0]["argv"][2:5] == [str(checkpoint), "--layers", "3"]
    assert record[1]["inputs"] == {"01-prune": record[0]["produced"]}
    again = run_recipe(edited)
    assert [s["status"] for s in again["steps"]] == ["skipped (output exists)"] * 2


def test_a_deleted_upstream_folder_remakes_the_steps_that_read_it(checkpoint, tmp_path):
    import shutil

    run = tmp_path / "run"
    path = write(tmp_path, {"model": str(checkpoint), "output": str(run),
                            "steps": [{"prune": {"layers": "1"}}, {"prune": {"layers": "0", "allow_first_layer": True}}]})
    run_recipe(path)
    shutil.rmtree(run / "01-prune")
    result = run_recipe(path)
    assert [s["status"] for s in result["steps"]] == ["done", "done"]


def test_a_finished_recipe_with_a_report_skips_every_step(checkpoint, tmp_path, capsys):
    run = tmp_path / "run"
    path = write(tmp_path, {"model": str(checkpoint), "output": str(run),
                            "steps": [{"prune": {"layers": "1"}}, {"report": {}}]})
    assert main(["run", str(path)]) == 0
    report = run / "02-report" / "report.html"
    stamp = report.stat().st_mtime_ns
    capsys.readouterr()
    assert main(["run", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.count("skipped (output exists)") == 2 and report.stat().st_mtime_ns == stamp
    # re-making the prune step re-makes the report that read it
    assert main(["run", str(path), "--rerun", "prune"]) == 0
    assert report.stat().st_mtime_ns != stamp


def test_rerun_names_a_step_or_fails_listing_them(checkpoint, tmp_path, capsys):
    path = write(tmp_path, {"model": str(checkpoint), "output": str(tmp_path / "run"),
                            "steps": [{"prune": {"layers": "1"}}, {"prune": {"layers": "0", "allow_first_layer": True}}]})
    assert main(["run", str(path), "--rerun", "prune"]) == 2      # two prune steps: ambiguous
    err = capsys.readouterr().err
    assert "names no single step; give one of 01-prune, 02-prune" in err and not (tmp_path / "run").exists()


def test_a_moved_run_folder_still_skips_its_finished_steps(checkpoint, tmp_path):
    recipe = {"model": str(checkpoint), "steps": [{"prune": {"layers": "1"}}, {"prune": {"layers": "0", "allow_first_layer": True}}]}
    path = write(tmp_path, recipe)
    run_recipe(path, output=tmp_path / "first")
    (tmp_path / "first").rename(tmp_path / "moved")
    for _ in range(2):     # and again, from the record the moved run wrote
        result = run_recipe(path, output=tmp_path / "moved")
        assert [s["status"] for s in result["steps"]] == ["skipped (output exists)"] * 2
    assert str(tmp_path / "moved" / "01-prune") in json.loads((tmp_path / "moved" / "run.json").read_text()
                                                                )["steps"][1]["argv"]
