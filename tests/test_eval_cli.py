"""``depthprune eval`` end to end on a tiny saved model, and the speed comparison."""

from __future__ import annotations

import copy
import json

import pytest

from depthprune import remove_layers
from depthprune.cli import main
from depthprune.evaluate.speed import compare_speed, weights_read_per_token
from tiny_models import tiny_model
from tiny_tokenizer import build_tiny_tokenizer


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-llama")
    tiny_model("llama", num_layers=4).save_pretrained(folder)
    build_tiny_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    (root / "wikitext2").mkdir()
    (root / "wikitext2" / "wiki.test.raw").write_text(
        " \n = Valkyria Chronicles = \n \n" + " The game began development in 2010 , carrying over a large portion "
        "of the work done on Valkyria Chronicles II . \n \n" * 6)
    (root / "piqa").mkdir()
    (root / "piqa" / "valid.jsonl").write_text(
        '{"goal": "Open a jar", "sol1": "Twist the lid.", "sol2": "Paint the lid."}\n'
        '{"goal": "Dry hands", "sol1": "Use water.", "sol2": "Use a towel."}\n'
        '{"goal": "Boil water", "sol1": "Heat it.", "sol2": "Freeze it."}\n')
    (root / "piqa" / "valid-labels.lst").write_text("0\n1\n0\n")
    return root


def test_eval_writes_results_and_refuses_existing_output(checkpoint, data_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    argv = ["eval", str(checkpoint), "--ppl", "wikitext2", "--seq-len", "16,32", "--tasks", "piqa", "--limit", "2",
            "--data-dir", str(data_dir), "--batch-size", "2", "--output", str(out)]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["perplexity"]["wikitext2"]) == {"16", "32"}
    at16 = results["perplexity"]["wikitext2"]["16"]
    assert at16["seq_len"] == 16 and at16["tokens"] == at16["windows"] * 15 and at16["ppl"] > 1
    piqa = results["tasks"]["piqa"]
    assert piqa["n"] == 2 and 0 <= piqa["acc"] <= 1 and 0 <= piqa["acc_norm"] <= 1 and piqa["num_fewshot"] == 0
    table = (out / "results.md").read_text()
    assert "| piqa | 0 | 2 |" in table and "| wikitext2 | 16 |" in table
    assert "| piqa |" in capsys.readouterr().out
    # An existing output is refused before any work, and kept as it was.
    assert main(argv) == 2
    assert "already exists" in capsys.readouterr().err
    assert json.loads((out / "results.json").read_text()) == results


def test_eval_missing_data_is_one_clear_line(checkpoint, tmp_path, capsys, monkeypatch):
    from transformers import AutoModelForCausalLM

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the data was read")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", refuse)
    code = main(["eval", str(checkpoint), "--tasks", "arc_challenge", "--data-dir", str(tmp_path),
                 "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("depthprune: error:")
    assert str(tmp_path / "arc_challenge") in err and not (tmp_path / "out").exists()
    # Without --data-dir lm-eval downloads; offline that fails, in one line that names the fix.
    import socket

    def offline(*args, **kwargs):
        raise OSError("no network in this test")

    monkeypatch.setattr(socket.socket, "connect", offline)
    monkeypatch.setattr(socket, "create_connection", offline)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["eval", str(checkpoint), "--tasks", "piqa", "--output", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "piqa: lm-eval could not load its data" in err and "--data-dir" in err


def test_speed_compare_reports_ratios_and_ideals():
    base = tiny_model("llama", num_layers=6)
    pruned = copy.deepcopy(base)
    remove_layers(pruned, [2, 3])
    result = compare_speed(pruned, base, batch_sizes=(1, 2), prompt_len=8, new_tokens=4, repeats=2, warmup=1)
    assert result["model"]["num_layers"] == 4 and result["base"]["num_layers"] == 6
    assert result["ideal"]["layers"] == pytest.approx(6 / 4)
    # Weights read per decoded token, counted by hand: a tied head reads the embedding matrix once.
    per_layer = sum(p.numel() for p in base.model.layers[0].parameters())
    rest = sum(p.numel() for p in base.parameters()) - 6 * per_layer
    assert weights_read_per_token(base) == rest + 6 * per_layer
    assert result["ideal"]["weights_read"] == pytest.approx((rest + 6 * per_layer) / (rest + 4 * per_layer))
    for batch in (1, 2):
        entry = result["model"]["batches"][batch]
        assert entry["prefill_tokens_per_s"] == pytest.approx(batch * 8 / entry["prefill_s"])
        assert entry["decode_tokens_per_s"] == pytest.approx(batch * 4 / entry["decode_s"])
        ratio = result["ratios"][batch]["decode"]
        assert ratio == pytest.approx(entry["decode_tokens_per_s"]
                                      / result["base"]["batches"][batch]["decode_tokens_per_s"])
    assert result["model"]["parameters"] == result["base"]["parameters"] - 2 * per_layer


def test_untied_head_counts_the_embedding_table_out():
    model = tiny_model("mistral", num_layers=2)  # untied: the embedding is a lookup, the head is read
    embedding = sum(p.numel() for p in model.get_input_embeddings().parameters())
    assert weights_read_per_token(model) == sum(p.numel() for p in model.parameters()) - embedding
