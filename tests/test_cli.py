"""The CLI end to end on a tiny checkpoint folder: info, prune, dry run, errors and overwrite protection."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from depthprune import DepthpruneError, load_model, prune
from depthprune.cli import main
from tiny_models import tiny_model


def _error_lines(stderr: str) -> list[str]:
    """Our error lines (progress bars of the loaders may share stderr)."""
    return [line for line in stderr.splitlines() if line.startswith("depthprune: error:")]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_tokenizer):
    folder = tmp_path_factory.mktemp("ckpt") / "tiny-llama"
    model = tiny_model("llama", num_layers=6)
    model.save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


def test_info(checkpoint, capsys):
    assert main(["info", str(checkpoint), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["num_layers"] == 6 and summary["model_type"] == "llama" and summary["tied_embeddings"]
    assert summary["parameters"] == sum(p.numel() for p in tiny_model("llama", 6).parameters())


def test_prune_writes_a_checkpoint_that_plain_transformers_loads(checkpoint, tmp_path, capsys):
    out = tmp_path / "pruned"
    assert main(["prune", str(checkpoint), "--layers", "1-2,4", "--output", str(out)]) == 0
    metadata = json.loads((out / "depthprune.json").read_text())
    assert metadata["removed_layers"] == [1, 2, 4] and metadata["kept_layers"] == [0, 3, 5]
    assert metadata["method"] == "manual" and metadata["depthprune_version"]
    assert metadata["base_model"] == str(checkpoint.resolve())
    assert (out / "README.md").read_text().startswith("---")
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.num_hidden_layers == 3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]   # no temporary folders left


def test_pruning_a_pruned_model_keeps_original_numbering(checkpoint, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    prune(str(checkpoint), layers="1", output=first)        # keeps 0,2,3,4,5
    prune(str(first), layers="2", output=second)             # removes current 2 == original 3
    metadata = json.loads((second / "depthprune.json").read_text())
    assert metadata["kept_layers"] == [0, 2, 4, 5] and metadata["removed_layers"] == [1, 3]
    assert metadata["base_model"] == str(checkpoint.resolve())
    assert metadata["base_model_source"] == str(checkpoint)     # loadable, for a distillation teacher
    # weights: the twice-pruned model equals the original with layers 1 and 3 removed at once
    once = tmp_path / "once"
    prune(str(checkpoint), layers="1,3", output=once)
    ids = torch.randint(3, 500, (1, 16))
    a = AutoModelForCausalLM.from_pretrained(second)(ids).logits
    b = AutoModelForCausalLM.from_pretrained(once)(ids).logits
    assert torch.allclose(a, b, atol=1e-6)


def test_dry_run_writes_nothing(checkpoint, tmp_path, capsys):
    out = tmp_path / "dry"
    assert main(["prune", str(checkpoint), "--layers", "2", "--output", str(out), "--dry-run"]) == 0
    assert "remove [2]" in capsys.readouterr().out and not out.exists()


def test_existing_output_is_refused_without_force_and_untouched(checkpoint, tmp_path, capsys):
    out = tmp_path / "exists"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    assert main(["prune", str(checkpoint), "--layers", "2", "--output", str(out)]) == 2
    errors = _error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and "already exists" in errors[0] and "--force" in errors[0]
    assert (out / "keep.txt").read_text() == "precious"
    assert main(["prune", str(checkpoint), "--layers", "2", "--output", str(out), "--force"]) == 0
    assert not (out / "keep.txt").exists() and (out / "depthprune.json").is_file()


@pytest.mark.parametrize("args, message", [
    (["--layers", "9"], "out of range"), (["--layers", "2,2"], "more than once"),
    (["--layers", "0-5", "--allow-final-layer"], "all 6"), (["--layers", "5"], "final layer"),
    (["--layers", "4-2"], "backwards"), (["--layers", "a"], "cannot read layer list"),
])
def test_bad_layer_lists_are_one_line_errors(checkpoint, tmp_path, capsys, args, message):
    out = tmp_path / "out"
    assert main(["prune", str(checkpoint), *args, "--output", str(out)]) == 2
    errors = _error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and message in errors[0] and not out.exists()


def test_unknown_model_path(tmp_path, capsys):
    assert main(["info", str(tmp_path / "missing-model")]) == 2
    assert "not found" in capsys.readouterr().err


def test_failure_while_writing_leaves_no_output(checkpoint, tmp_path, monkeypatch):
    import depthprune.saving as saving

    def explode(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(saving, "write_json_atomic", explode)
    with pytest.raises(RuntimeError):
        prune(str(checkpoint), layers="1", output=tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_folder_without_tokenizer_still_prunes(tmp_path):
    folder = tmp_path / "weights-only"
    tiny_model("mistral", 4).save_pretrained(folder)
    loaded = load_model(folder)
    assert loaded.tokenizer is None
    prune(loaded, layers="1", output=tmp_path / "out")
    from depthprune.loading import require_tokenizer
    with pytest.raises(DepthpruneError, match="no tokenizer"):
        require_tokenizer(loaded)
