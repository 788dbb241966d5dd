"""``depthprune score`` and ``depthprune prune --method`` end to end on a tiny checkpoint folder."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from depthprune import remove_layers
from depthprune.cli import main
from depthprune.selection import best_block
from tiny_models import tiny_model

DATA = ["--data", "builtin", "--samples", "4", "--seq-len", "16"]


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("depthprune: error:")]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_tokenizer):
    folder = tmp_path_factory.mktemp("ckpt") / "tiny-llama"
    tiny_model("llama", num_layers=6).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def scored(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("scores") / "out"
    assert main(["score", str(checkpoint), *DATA, "--metrics", "angular,bi,magnitude,sleb", "--sleb-n", "2",
                 "--output", str(out)]) == 0
    return out


def test_score_writes_the_full_table_plots_and_provenance(scored, capsys):
    scores = json.loads((scored / "scores.json").read_text())
    assert scores["num_layers"] == 6
    assert sorted(scores["angular"], key=int) == ["1", "2", "3", "4", "5"]
    assert all(len(scores["angular"][str(n)]) == 6 - n + 1 for n in range(1, 6))
    assert len(scores["bi"]) == 6 and len(scores["magnitude"]) == 6 and len(scores["sleb"]) == 2
    assert scores["data"]["data"] == "builtin" and scores["data"]["samples"] == 4 and scores["tokens"] == 64
    assert scores["settings"]["angular"]["tokens"] == "last" and scores["protected"]["magnitude"] == [0, 1, 2, 3, 4, 5]
    for plot in ("angular_heatmap.png", "angular_min_curve.png", "bi.png", "rankings.png"):
        assert (scored / plot).read_bytes()[:4] == b"\x89PNG"


def test_score_sequential_gives_the_same_scores(checkpoint, scored, tmp_path, capsys):
    out = tmp_path / "seq"
    assert main(["score", str(checkpoint), *DATA, "--metrics", "angular,bi", "--sequential", "--no-plots",
                 "--output", str(out)]) == 0
    sequential = json.loads((out / "scores.json").read_text())
    in_memory = json.loads((scored / "scores.json").read_text())
    assert sequential["sequential"] is True and in_memory["sequential"] is False
    assert sequential["bi"] == pytest.approx(in_memory["bi"], abs=1e-5)
    assert sequential["angular"]["2"] == pytest.approx(in_memory["angular"]["2"], abs=1e-5)
    assert "rank" in capsys.readouterr().out


def test_prune_by_angular_reusing_scores_removes_the_best_block(checkpoint, scored, tmp_path):
    out = tmp_path / "pruned"
    assert main(["prune", str(checkpoint), "--method", "angular", "--n", "2", "--scores",
                 str(scored / "scores.json"), "--output", str(out)]) == 0
    scores = json.loads((scored / "scores.json").read_text())
    start, _ = best_block(scores["angular"], 2, 6)
    metadata = json.loads((out / "depthprune.json").read_text())
    assert metadata["removed_layers"] == [start, start + 1] and metadata["method"] == "angular"
    assert metadata["plan"]["scores"]["angular_block_start"] == start
    assert json.loads((out / "scores.json").read_text())["bi"] == scores["bi"]
    # the saved weights are the original model with that block deleted by hand
    pruned = AutoModelForCausalLM.from_pretrained(out).eval()
    reference = copy.deepcopy(tiny_model("llama", 6))
    remove_layers(reference, [start, start + 1])
    ids = torch.randint(3, 500, (2, 9))
    with torch.no_grad():
        assert torch.allclose(pruned(ids).logits, reference(ids).logits, atol=1e-5)


def test_prune_by_bi_scores_on_the_fly_and_dry_run_prints_the_evidence(checkpoint, scored, capsys):
    assert main(["prune", str(checkpoint), "--method", "bi", "--n", "2", *DATA, "--dry-run"]) == 0
    plan = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    bi = json.loads((scored / "scores.json").read_text())["bi"]
    expected = sorted(sorted(range(5), key=lambda i: bi[i])[:2])        # same data: same scores
    assert plan["removed_layers"] == expected and plan["scores"]["bi"] == pytest.approx(bi, abs=1e-6)


def test_prune_last_and_ratio(checkpoint, capsys):
    assert main(["prune", str(checkpoint), "--method", "last", "--ratio", "0.34", "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out.split("\n", 1)[1])["removed_layers"] == [3, 4]


@pytest.mark.parametrize("args, message", [
    (["--method", "bi", "--n", "2"], "method 'bi' needs calibration data; pass --data"),
    (["--method", "bi", "--n", "6", *DATA], "--n must be below 6"),
    (["--method", "bi", "--n", "2", "--scores", "/nonexistent/scores.json"], "does not exist"),
    (["--layers", "1", "--n", "2"], "go with --method"),
])
def test_prune_by_criterion_errors_are_one_clear_line(checkpoint, tmp_path, capsys, args, message):
    assert main(["prune", str(checkpoint), *args, "--output", str(tmp_path / "x")]) == 2
    errors = _error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and message in errors[0]
    assert not (tmp_path / "x").exists()


def test_layers_and_method_are_mutually_exclusive(checkpoint, capsys):
    with pytest.raises(SystemExit):
        main(["prune", str(checkpoint), "--layers", "1", "--method", "bi", "--n", "1", "--dry-run"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_score_errors(checkpoint, tmp_path, capsys):
    assert main(["score", str(checkpoint), "--metrics", "angular", "--output", str(tmp_path / "a")]) == 2
    assert "need calibration data" in _error_lines(capsys.readouterr().err)[0]
    assert main(["score", str(checkpoint), *DATA, "--metrics", "blockinfluence,bi", "--output",
                 str(tmp_path / "b")]) == 2
    assert "for --metrics; valid: angular, bi" in _error_lines(capsys.readouterr().err)[0]
    assert main(["score", str(checkpoint), "--data", "builtin", "--samples", "100000", "--seq-len", "256",
                 "--output", str(tmp_path / "c")]) == 2
    assert "too little data" in _error_lines(capsys.readouterr().err)[0]
    assert main(["score", str(checkpoint), *DATA, "--metrics", "ppl", "--sequential", "--output",
                 str(tmp_path / "d")]) == 2
    assert "drop --sequential" in _error_lines(capsys.readouterr().err)[0]
