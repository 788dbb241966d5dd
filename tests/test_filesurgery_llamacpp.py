"""llama.cpp (through llama-cpp-python) as the client of the GGUF files depthprune writes, and its speed backend.

The tiny GGUF of test_filesurgery.py in float32, pruned at the file level, loads in llama.cpp with the new layer
count, and llama.cpp's logits equal the logits transformers computes from the same file; ``eval --speed-backend
llamacpp`` times it against its source with the ideal speed-ups computed from the files' own tensor sizes.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from depthprune import api
from depthprune.cli import main
from test_filesurgery import KEPT, REMOVED, gguf_logits, write_tiny_gguf

gguf = pytest.importorskip("gguf", reason="SKIPPED LOUDLY: the gguf package is not installed")
llama_cpp = pytest.importorskip("llama_cpp", reason="SKIPPED LOUDLY: llama-cpp-python is not installed "
                                                    "(make llamacpp builds and installs it)")


@pytest.fixture(scope="module")
def pruned_f32(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llamacpp")
    source = write_tiny_gguf(folder / "source.gguf", weight_type="F32")
    api.prune(str(source), layers=REMOVED, output=folder / "pruned.gguf")
    return source, folder / "pruned.gguf"


def test_llama_cpp_loads_the_pruned_gguf_and_agrees_with_transformers(pruned_f32):
    _, pruned = pruned_f32
    llm = llama_cpp.Llama(model_path=str(pruned), n_ctx=64, logits_all=True, n_threads=1, verbose=False)
    assert int(llm.metadata["llama.block_count"]) == len(KEPT)
    ids = [1, 5, 77, 300, 12, 9, 401, 33]
    llm.eval(ids)
    logits = np.array(llm.scores[:len(ids)])                     # (tokens, vocab)
    expected = gguf_logits(pruned, torch.tensor([ids]))[0].numpy()
    assert np.abs(logits - expected).max() < 2e-3 * max(1.0, float(np.abs(expected).max()))
    answer = llm.create_completion(prompt=[1, 300, 301], max_tokens=4, temperature=0.0)
    assert answer["usage"]["completion_tokens"] >= 1


def _bytes_read(path) -> int:
    tensors = {t.name: int(t.n_bytes) for t in gguf.GGUFReader(path).tensors}
    return sum(tensors.values()) - (tensors["token_embd.weight"] if "output.weight" in tensors else 0)


def test_eval_speed_backend_llamacpp(pruned_f32, tmp_path):
    source, pruned = pruned_f32
    assert main(["eval", str(pruned), "--speed", "--speed-backend", "llamacpp", "--compare", str(source),
                 "--speed-prompt-len", "16", "--speed-new-tokens", "4", "--speed-repeats", "2",
                 "--output", str(tmp_path / "eval")]) == 0
    speed = json.loads((tmp_path / "eval" / "results.json").read_text())["speed"]
    assert speed["settings"]["backend"] == "llama.cpp" and speed["settings"]["batch_sizes"] == [1]
    assert speed["model"]["num_layers"] == 4 and speed["base"]["num_layers"] == 6
    assert speed["ideal"]["layers"] == pytest.approx(6 / 4)
    assert speed["ideal"]["weights_read"] == pytest.approx(_bytes_read(source) / _bytes_read(pruned))
    for kind in ("prefill", "decode"):
        assert speed["model"]["batches"]["1"][f"{kind}_tokens_per_s"] > 0
        assert len(speed["model"]["batches"]["1"][f"{kind}_s_runs"]) == 2


def test_llamacpp_backend_refuses_what_it_cannot_time(pruned_f32, tmp_path, capsys):
    _, pruned = pruned_f32
    assert main(["eval", str(pruned), "--speed", "--speed-backend", "llamacpp", "--speed-batch-sizes", "4",
                 "--output", str(tmp_path / "a")]) == 2
    assert "--speed-batch-sizes would be ignored" in capsys.readouterr().err
    folder = tmp_path / "hf"
    from tiny_models import tiny_case_model

    tiny_case_model("llama", num_layers=4).save_pretrained(folder)
    assert main(["eval", str(folder), "--speed", "--speed-backend", "llamacpp", "--output", str(tmp_path / "b")]) == 2
    assert "times GGUF files" in capsys.readouterr().err


def test_an_exported_gguf_loads_in_llama_cpp(pruned_f32, tmp_path):
    from transformers import AutoModelForCausalLM

    source, _ = pruned_f32
    api.prune(str(source), layers=REMOVED, output=tmp_path / "pruned", surgery="memory")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned")
    with torch.no_grad():
        model.model.layers[2].self_attn.q_proj.weight.mul_(0.8)      # a Llama q row permutation on the way back
    model.save_pretrained(tmp_path / "pruned")
    api.export(str(tmp_path / "pruned"), to_gguf=tmp_path / "out.gguf")
    llm = llama_cpp.Llama(model_path=str(tmp_path / "out.gguf"), n_ctx=64, logits_all=True, n_threads=1,
                          verbose=False)
    ids = [1, 5, 77, 300, 12, 9]
    llm.eval(ids)
    with torch.no_grad():
        expected = model(torch.tensor([ids])).logits[0].numpy()
    logits = np.array(llm.scores[:len(ids)])
    assert np.abs(logits - expected).max() < 2e-3 * max(1.0, float(np.abs(expected).max()))
