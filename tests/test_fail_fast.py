"""A newcomer's mistakes fail fast: one line, exit status 2, no traceback, nothing written and no work done first."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import depthprune.hub
from depthprune.cli import main
from tiny_models import tiny_model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_tokenizer):
    folder = tmp_path_factory.mktemp("ckpt") / "tiny-llama"
    tiny_model("llama", num_layers=6).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    depthprune.hub.hub_reachable.cache_clear()
    yield
    depthprune.hub.hub_reachable.cache_clear()


@pytest.fixture
def no_loading(monkeypatch):
    """Fail the test if any weights are read: the error must come before the work."""
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the bad input was reported")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)


def _one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("depthprune: error: ") and "Traceback" not in captured.err
    return lines[0]


def _tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def test_hub_id_while_offline_is_one_quick_line(offline, no_loading, tmp_path, capsys):
    assert main(["prune", "some-org/some-model", "--layers", "2", "--output", str(tmp_path / "out")]) == 2
    line = _one_error_line(capsys)
    assert "some-org/some-model" in line and "HF_HUB_OFFLINE" in line and "local checkpoint folder" in line
    assert _tree(tmp_path) == set()


def test_online_perplexity_source_without_data_dir_offline(offline, checkpoint, tmp_path, capsys, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("datasets tried to download"))
    assert main(["eval", str(checkpoint), "--ppl", "wikitext2", "--output", str(tmp_path / "eval")]) == 2
    line = _one_error_line(capsys)
    assert "wikitext2" in line and "--data-dir" in line
    assert _tree(tmp_path) == set()


@pytest.mark.parametrize("device, message", [
    ("cuda", "no CUDA GPU"), ("cuda:3", "CUDA"), ("cpuu", "unknown device 'cpuu'"), ("tpu", "unknown device")])
def test_bad_device_is_one_line_before_loading(device, message, checkpoint, no_loading, tmp_path, capsys):
    if device.startswith("cuda") and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["prune", str(checkpoint), "--layers", "2", "--device", device, "--output", str(tmp_path / "o")]) == 2
    assert message in _one_error_line(capsys)
    assert _tree(tmp_path) == set()


def test_info_takes_device(checkpoint, capsys):
    assert main(["info", str(checkpoint), "--device", "cpu", "--json"]) == 0
    assert main(["info", str(checkpoint), "--device", "nonsense"]) == 2


def test_output_under_a_file_fails_before_scoring(checkpoint, no_loading, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("mine")
    assert main(["score", str(checkpoint), "--data", "builtin", "--output", str(blocker / "scores")]) == 2
    assert "is a file, not a folder" in _one_error_line(capsys)
    assert blocker.read_text() == "mine"


def test_read_only_parent_fails_before_scoring(checkpoint, no_loading, tmp_path, capsys, monkeypatch):
    # root can write anywhere, so the permission answer is stubbed; the check itself is what runs
    read_only = tmp_path / "ro"
    read_only.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if Path(path) == read_only else real_access(path, mode))
    assert main(["score", str(checkpoint), "--data", "builtin", "--output", str(read_only / "scores")]) == 2
    assert "not writable" in _one_error_line(capsys)
    assert _tree(read_only) == set()


def test_missing_parent_folders_are_created(checkpoint, tmp_path):
    out = tmp_path / "not" / "yet" / "there"
    assert main(["prune", str(checkpoint), "--layers", "2", "--output", str(out)]) == 0
    assert (out / "config.json").is_file()


@pytest.mark.parametrize("name", ["weights.txt", "weights.jsonl"])
def test_binary_file_given_as_text_data(name, checkpoint, no_loading, tmp_path, capsys):
    data = tmp_path / name
    data.write_bytes(bytes(range(256)) * 64)
    assert main(["score", str(checkpoint), "--data", str(data), "--output", str(tmp_path / "scores")]) == 2
    assert "binary file" in _one_error_line(capsys)
    assert not (tmp_path / "scores").exists()


def _error_line_after_loading(capsys) -> str:
    """The one error line of a verb that had to load the model first (its progress bars share stderr)."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("depthprune: ")]
    assert len(lines) == 1 and lines[0].startswith("depthprune: error: ") and "Traceback" not in err, err
    return lines[0]


def test_criterion_asked_for_almost_every_layer_is_refused(checkpoint, tmp_path, capsys):
    # 6 layers, --n 5: the only way is to remove layer 0 or leave one layer; today it silently did
    assert main(["prune", str(checkpoint), "--method", "magnitude", "--no-keep-edges", "--n", "5", "--output",
                 str(tmp_path / "o")]) == 2
    assert "only 4 of 6 are candidates" in _error_line_after_loading(capsys)
    assert not (tmp_path / "o").exists()


def test_explicit_first_layer_and_single_layer_need_flags(checkpoint, tmp_path, capsys):
    assert main(["prune", str(checkpoint), "--layers", "0", "--output", str(tmp_path / "a")]) == 2
    assert "--allow-first-layer" in _error_line_after_loading(capsys)
    assert main(["prune", str(checkpoint), "--layers", "0", "--allow-first-layer", "--output", str(tmp_path / "a")]) == 0
    capsys.readouterr()     # the successful run's own lines (it says it pruned at the file level)
    assert main(["prune", str(checkpoint), "--layers", "1-5", "--allow-final-layer", "--output",
                 str(tmp_path / "b")]) == 2
    assert "leaves one" in _error_line_after_loading(capsys)
    assert main(["prune", str(checkpoint), "--layers", "1-5", "--allow-final-layer", "--allow-single-layer",
                 "--output", str(tmp_path / "b")]) == 0
