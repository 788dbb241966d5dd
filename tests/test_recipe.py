"""Recipes: validation against the CLI's own options, step chaining, resuming."""

from __future__ import annotations

import json

import pytest
import yaml

from depthprune import DepthpruneError
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


@pytest.mark.parametrize("recipe, message", [
    ({"model": "m", "steps": [{"prune": {"layer": "1"}}]}, "unknown option 'layer'.*did you mean 'layers'"),
    ({"model": "m", "steps": [{"prnue": {}}]}, "unknown recipe step 'prnue'.*did you mean 'prune'"),
    ({"model": "m", "steps": [{"prune": {"layers": "1", "output": "x"}}]}, "set by the run itself"),
    ({"model": "m", "stpes": []}, "unknown key 'stpes'"),
    ({"model": "m", "steps": [{"prune": {"layers": "1", "dry_run": "yes"}}]}, "is a switch"),
    ({"model": "m", "steps": [{"prune": {}}]}, "required"),
    ({"model": "m", "defaults": {"nonsense": 1}, "steps": [{"prune": {"layers": "1"}}]}, "accepted by no step"),
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
