"""Ctrl-C (SIGINT) or a kill (SIGTERM) during a real run leaves no half-written output; a SIGKILLed run's temporary
folder is removed by the next run; a sweep and a recipe continue from what was finished.

Each case runs the real CLI in a child process. A test-only patch, injected with ``python -c``, makes the run stop
right after it wrote a given file inside its temporary output (the middle of the work) and say so; the test then
sends the signal.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from depthprune.cli import main
from depthprune.data import builtin_texts
from tiny_models import tiny_model

REPO = Path(__file__).resolve().parents[1]

CHILD = """
import pathlib, signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)   # a background test runner may pass SIGINT ignored
import depthprune.saving as saving
original, seen = saving.write_json_atomic, {{}}
def write_then_wait(path, data):
    original(path, data)
    name = pathlib.Path(path).name
    seen[name] = seen.get(name, 0) + 1
    if name == {name!r} and seen[name] == {nth}:
        pathlib.Path({ready!r}).write_text(str(path))
        time.sleep(600)
saving.write_json_atomic = write_then_wait
from depthprune.cli import main
sys.exit(main({argv!r}))
"""


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


def run_until(argv: list[str], name: str, nth: int, tmp_path: Path, signum: int) -> subprocess.CompletedProcess:
    """Run ``depthprune ARGV`` in a child, wait until it has written ``name`` for the ``nth`` time, send ``signum``."""
    ready = tmp_path / "child-ready"
    code = CHILD.format(name=name, nth=nth, ready=str(ready), argv=argv)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    deadline = time.monotonic() + 300
    while not ready.exists():
        if child.poll() is not None:
            pytest.fail(f"the run ended before writing {name}: {child.communicate()[1][-2000:]}")
        if time.monotonic() > deadline:
            child.kill()
            pytest.fail(f"the run never wrote {name}")
        time.sleep(0.1)
    child.send_signal(signum)
    stdout, stderr = child.communicate(timeout=120)
    return subprocess.CompletedProcess(argv, child.returncode, stdout, stderr)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def assert_interrupted(finished: subprocess.CompletedProcess, signum: int) -> None:
    assert finished.returncode == 128 + signum, finished.stderr[-2000:]
    assert "Traceback" not in finished.stderr
    word = "terminated" if signum == signal.SIGTERM else "interrupted"
    assert finished.stderr.strip().splitlines()[-1].startswith(f"depthprune: {word};")


@pytest.mark.parametrize("verb, signum", [("score", signal.SIGTERM), ("prune", signal.SIGINT),
                                          ("collapse", signal.SIGTERM), ("eval", signal.SIGTERM)])
def test_a_signal_mid_run_leaves_no_output_and_no_temp_folder(verb, signum, checkpoint, data_dir, tmp_path):
    out = tmp_path / "out"
    argv, written = {
        "score": (["score", str(checkpoint), "--data", "builtin", "--samples", "2", "--seq-len", "16",
                   "--metrics", "bi", "--no-plots"], "scores.json"),
        "prune": (["prune", str(checkpoint), "--layers", "1"], "depthprune.json"),
        "collapse": (["collapse", str(checkpoint), "--samples", "2", "--seq-len", "16", "--combine", "2",
                      "--no-plots"], "depthprune.json"),
        "eval": (["eval", str(checkpoint), "--ppl", "wikitext2", "--data-dir", str(data_dir), "--seq-len", "16",
                  "--ppl-max-windows", "2"], "results.json"),
    }[verb]
    finished = run_until(argv + ["--output", str(out)], written, 1, tmp_path, signum)
    assert_interrupted(finished, signum)
    assert not out.exists()
    assert leftovers(tmp_path) == []


def test_a_killed_runs_temp_folder_is_removed_by_the_next_run(checkpoint, tmp_path):
    out = tmp_path / "out"
    argv = ["prune", str(checkpoint), "--layers", "1", "--output", str(out)]
    killed = run_until(argv, "depthprune.json", 1, tmp_path, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    stale = leftovers(tmp_path)
    assert len(stale) == 1 and stale[0].startswith(".out.tmp-")     # SIGKILL cannot be cleaned up at once ...
    user_folder = tmp_path / ".out.tmp-mine"                          # ... and a look-alike that is not ours
    user_folder.mkdir()
    assert main(argv) == 0                                            # ... but the next run removes it
    assert leftovers(tmp_path) == [".out.tmp-mine"]
    assert json.loads((out / "depthprune.json").read_text())["removed_layers"] == [1]


def test_a_terminated_sweep_keeps_its_finished_points_and_continues(checkpoint, data_dir, tmp_path, monkeypatch):
    out = tmp_path / "sweep"
    argv = ["sweep", str(checkpoint), "--methods", "bi,last", "--n", "0:2", "--eval", "wikitext2", "--data-dir",
            str(data_dir), "--eval-seq-len", "16", "--max-windows", "2", "--samples", "2", "--seq-len", "16",
            "--no-plots", "--output", str(out)]
    # sweep.progress.json is written once when the folder is made, then after every point: stop after the first
    finished = run_until(argv, "sweep.progress.json", 2, tmp_path, signal.SIGTERM)
    assert_interrupted(finished, signal.SIGTERM)
    assert leftovers(tmp_path) == []
    saved = json.loads((out / "sweep.progress.json").read_text())["points"]
    assert [(p["method"], p["n"]) for p in saved] == [("bi", 0)]
    assert not (out / "sweep.json").exists() and (out / "scores.json").is_file()

    import depthprune.evaluate.runner as runner

    evaluated = []
    original = runner.evaluate
    monkeypatch.setattr(runner, "evaluate", lambda *a, **k: evaluated.append(1) or original(*a, **k))
    assert main(argv) == 0
    result = json.loads((out / "sweep.json").read_text())
    assert [(p["method"], p["n"]) for p in result["points"]] == [(m, n) for m in ("bi", "last") for n in (0, 1, 2)]
    assert result["points"][0] == saved[0]                          # the finished point was kept, not redone
    distinct = {tuple(p["removed_layers"]) for p in result["points"]}
    assert len(evaluated) == len(distinct) - 1                       # every other removal set once
    assert not (out / "sweep.progress.json").exists()


def test_a_terminated_recipe_continues_from_its_finished_steps(checkpoint, tmp_path):
    import yaml

    run_dir = tmp_path / "run"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"model": str(checkpoint), "output": str(run_dir), "steps": [
        {"score": {"data": "builtin", "samples": 2, "seq_len": 16, "metrics": "bi", "no_plots": True}},
        {"prune": {"layers": "1"}}]}))
    finished = run_until(["run", str(recipe)], "depthprune.json", 1, tmp_path, signal.SIGTERM)
    assert_interrupted(finished, signal.SIGTERM)
    assert sorted(p.name for p in run_dir.iterdir()) == ["01-score", "recipe.yaml", "run.json"]
    assert [s["step"] for s in json.loads((run_dir / "run.json").read_text())["steps"]] == ["01-score"]
    stamp = (run_dir / "01-score" / "scores.json").stat().st_mtime_ns

    from depthprune.recipe import run_recipe

    result = run_recipe(recipe)
    assert [s["status"] for s in result["steps"]] == ["skipped (output exists)", "done"]
    assert (run_dir / "01-score" / "scores.json").stat().st_mtime_ns == stamp
    assert json.loads((run_dir / "02-prune" / "depthprune.json").read_text())["removed_layers"] == [1]
