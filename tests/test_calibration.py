"""The streaming pass: per-layer call capture, and sequential (one layer in memory) == in-memory scoring."""

from __future__ import annotations

import pytest
import torch

from depthprune import DepthpruneError
from depthprune.adapter import ModelAdapter
from depthprune.calibration import CalibrationPass, SafetensorsWeights, load_skeleton
from depthprune.scoring import make_configs, score_model
from tiny_models import tiny_model

NUM_LAYERS = 6


def _ids(samples=5, seq_len=12):
    return torch.randint(3, 500, (samples, seq_len), generator=torch.Generator().manual_seed(7))


def test_capture_records_each_layers_own_call_gemma3_sliding_vs_full():
    model = tiny_model("gemma3_text", NUM_LAYERS)
    layer_types = model.config.layer_types
    run = CalibrationPass(model, _ids(seq_len=20), batch_size=5, show_progress=False)
    hidden_in = run.capture()
    assert len(run.calls) == 1 and len(run.calls[0]) == NUM_LAYERS
    masks = [call[1]["attention_mask"] for call in run.calls[0]]
    rotary = [call[1]["position_embeddings"][0] for call in run.calls[0]]
    sliding = [i for i, t in enumerate(layer_types) if t == "sliding_attention"]
    full = [i for i, t in enumerate(layer_types) if t == "full_attention"]
    assert not torch.equal(masks[sliding[0]], masks[full[0]])          # window 8 < 20 tokens: masks differ
    assert not torch.equal(rotary[sliding[0]], rotary[full[0]])        # local and global rope differ
    assert all(masks[i] is masks[sliding[0]] for i in sliding)          # shared, not copied per layer
    # the layers re-run from the recorded calls give exactly what a plain forward gives
    with torch.no_grad():
        expected = model(input_ids=_ids(seq_len=20), output_hidden_states=True, use_cache=False).hidden_states
        hidden = hidden_in[0]
        assert torch.allclose(hidden, expected[0])
        for index in range(NUM_LAYERS - 1):
            hidden = run.run_layer(index, hidden, 0)
            assert torch.allclose(hidden, expected[index + 1], atol=1e-5), index
    assert all(type(layer).__name__ != "_Recorder" for layer in ModelAdapter(model).layers)   # restored


def test_capture_restores_the_layers_when_the_forward_fails():
    model = tiny_model("llama", 3)
    run = CalibrationPass(model, torch.full((2, 5), 10_000), show_progress=False)   # ids beyond the vocabulary
    with pytest.raises(IndexError):
        run.capture()
    assert all(type(layer).__name__ == "LlamaDecoderLayer" for layer in ModelAdapter(model).layers)


@pytest.mark.parametrize("model_type", ["llama", "gemma3_text"])
def test_sequential_scores_equal_in_memory_scores_with_one_layer_loaded_at_a_time(model_type, tmp_path):
    model = tiny_model(model_type, NUM_LAYERS)
    model.save_pretrained(tmp_path, max_shard_size="100KB")          # sharded: exercises the index file
    assert (tmp_path / "model.safetensors.index.json").is_file()
    ids = _ids()
    configs = make_configs("angular,bi,magnitude", keep_edges=False)
    in_memory = score_model(model, configs, input_ids=ids, batch_size=2, show_progress=False)

    skeleton, weights = load_skeleton(tmp_path)
    layers = ModelAdapter(skeleton).layers
    assert all(p.device.type == "meta" for p in layers.parameters())
    most_loaded = []
    original_load = CalibrationPass.load_layer

    def counting_load(self, index):
        original_load(self, index)
        most_loaded.append(sum(any(p.device.type != "meta" for p in layer.parameters()) for layer in layers))

    CalibrationPass.load_layer = counting_load
    try:
        sequential = score_model(skeleton, configs, input_ids=ids, batch_size=2, weights=weights,
                                 show_progress=False)
    finally:
        CalibrationPass.load_layer = original_load
    assert max(most_loaded) == 1
    for n in range(1, NUM_LAYERS):
        assert sequential["angular"][str(n)] == pytest.approx(in_memory["angular"][str(n)], abs=1e-5)
    assert sequential["bi"] == pytest.approx(in_memory["bi"], abs=1e-5)
    assert sequential["magnitude"] == pytest.approx(in_memory["magnitude"], rel=1e-6)
    assert all(p.device.type == "meta" for p in layers.parameters())          # everything released again


def test_sequential_refuses_criteria_that_need_every_layer(tmp_path):
    model = tiny_model("llama", 3)
    model.save_pretrained(tmp_path)
    skeleton, weights = load_skeleton(tmp_path)
    with pytest.raises(DepthpruneError, match="ppl, taylor need every layer in memory; drop --sequential"):
        score_model(skeleton, make_configs("bi,ppl,taylor"), input_ids=_ids(), weights=weights,
                    show_progress=False)


def test_safetensors_reader_refuses_a_folder_without_safetensors(tmp_path):
    with pytest.raises(DepthpruneError, match="no .safetensors files"):
        SafetensorsWeights(tmp_path)


def test_checkpoint_size_counts_one_kind_of_weight_file(tmp_path):
    from depthprune.loading import checkpoint_bytes

    assert checkpoint_bytes(None) == 0 and checkpoint_bytes(tmp_path) == 0
    (tmp_path / "pytorch_model.bin").write_bytes(b"x" * 100)
    assert checkpoint_bytes(tmp_path) == 100
    (tmp_path / "model-00001-of-00002.safetensors").write_bytes(b"x" * 7)
    (tmp_path / "model-00002-of-00002.safetensors").write_bytes(b"x" * 3)
    (tmp_path / "config.json").write_text("{}")
    assert checkpoint_bytes(tmp_path) == 10          # the same weights shipped twice are counted once
