"""The sweep keeps every finished point: it is saved at once, a re-run with the same options continues, other
options are refused (naming what differs), and every (method, n) is checked before the first is evaluated."""

from __future__ import annotations

import json

import pytest

import depthprune.evaluate.runner as runner
from depthprune import DepthpruneError, LoadedModel
from depthprune.data import builtin_texts
from depthprune.sweep import sweep
from tiny_models import tiny_model

SEQ = 16


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    (folder / "wikitext2").mkdir()
    (folder / "wikitext2" / "wiki.test.raw").write_text("\n".join(builtin_texts()[-8:]))
    return folder


@pytest.fixture
def loaded(tiny_tokenizer):
    return LoadedModel(model=tiny_model("llama", num_layers=5), tokenizer=tiny_tokenizer, source="tiny",
                       description="tiny")


@pytest.fixture
def evaluations(monkeypatch):
    """Counts the evaluations; set ``fail_at`` to make that one (1-based) raise as Ctrl-C would."""
    state = {"count": 0, "fail_at": None}
    original = runner.evaluate

    def counted(*args, **kwargs):
        state["count"] += 1
        if state["count"] == state["fail_at"]:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(runner, "evaluate", counted)
    return state


def options(data_dir, **changes):
    return {"methods": "bi,last", "n": "0:2", "eval": "wikitext2", "data": "builtin", "samples": 2,
            "seq_len": SEQ, "eval_seq_len": SEQ, "data_dir": data_dir, "max_windows": 2, "plots": False, **changes}


def without_time(points):
    return [{k: v for k, v in p.items() if k != "seconds"} for p in points]


def test_an_interrupted_sweep_continues_from_its_finished_points(loaded, data_dir, tmp_path, evaluations):
    straight = sweep(loaded, **options(data_dir))          # the same sweep, run without interruption
    distinct = len({tuple(p["removed_layers"]) for p in straight["points"]})
    evaluations.update(count=0, fail_at=3)
    out = tmp_path / "sweep"
    with pytest.raises(KeyboardInterrupt):
        sweep(loaded, output=out, **options(data_dir))
    saved = json.loads((out / "sweep.progress.json").read_text())
    assert len(saved["points"]) == 2                       # both finished points are on disk
    assert not (out / "sweep.json").exists()
    assert json.loads((out / "scores.json").read_text())["num_layers"] == 5

    evaluations.update(count=0, fail_at=None)
    resumed = sweep(loaded, output=out, **options(data_dir))
    assert evaluations["count"] == distinct - 2            # nothing finished is evaluated again
    assert without_time(resumed["points"]) == without_time(straight["points"])
    assert resumed["points"][:2] == saved["points"]
    assert json.loads((out / "sweep.json").read_text())["points"] == resumed["points"]
    assert not (out / "sweep.progress.json").exists()

    with pytest.raises(DepthpruneError, match="finished sweep.*--force"):
        sweep(loaded, output=out, **options(data_dir))


def test_other_options_are_refused_naming_what_differs(loaded, data_dir, tmp_path, evaluations):
    out = tmp_path / "sweep"
    evaluations["fail_at"] = 2
    with pytest.raises(KeyboardInterrupt):
        sweep(loaded, output=out, **options(data_dir))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    evaluations.update(count=0, fail_at=None)
    with pytest.raises(DepthpruneError, match=r"unfinished sweep with other options \(max_windows: 2 then, 3 now; "
                                              r"n: \[0, 1, 2\] then, \[0, 1\] now\).*--force"):
        sweep(loaded, output=out, **options(data_dir, max_windows=3, n="0:1"))
    assert evaluations["count"] == 0
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before     # nothing changed on disk

    result = sweep(loaded, output=out, force=True, **options(data_dir, n="0:1"))   # --force starts over
    assert [(p["method"], p["n"]) for p in result["points"]] == [("bi", 0), ("bi", 1), ("last", 0), ("last", 1)]
    assert evaluations["count"] == len({tuple(p["removed_layers"]) for p in result["points"]})


def test_every_method_and_n_is_checked_before_the_first_evaluation(loaded, data_dir, tmp_path, evaluations):
    # magnitude keeps the first 4 and last 2 layers by default: none of 5 layers is a candidate at n=1
    with pytest.raises(DepthpruneError, match="cannot remove 1 layers"):
        sweep(loaded, output=tmp_path / "sweep", **options(data_dir, methods="bi,magnitude", n="0:1"))
    assert evaluations["count"] == 0
    assert list(tmp_path.iterdir()) == []


def test_a_folder_that_is_not_a_sweep_is_refused(loaded, data_dir, tmp_path, evaluations):
    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / "notes.txt").write_text("mine")
    with pytest.raises(DepthpruneError, match="not a sweep.*--force"):
        sweep(loaded, output=tmp_path / "sweep", **options(data_dir))
    assert evaluations["count"] == 0 and (tmp_path / "sweep" / "notes.txt").read_text() == "mine"
