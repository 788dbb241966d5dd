"""Layer surgery on every architecture in the table, checked against an independently built reference.

The reference is a FRESH model constructed from a config with fewer layers (so transformers itself assigns the
layer indices) into which the kept layers' weights are copied under renamed state-dict keys. Surgery must give
the same logits in memory and after a save/reload with plain transformers.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from depthprune import DepthpruneError, ModelAdapter, remove_layers, save
from tiny_models import REQUIRED_ARCHITECTURES, tiny_config, tiny_model

REMOVED = [1, 3]            # non-contiguous on purpose
KEPT = [0, 2, 4, 5]         # of 6 layers
LAYERS_PREFIX = {"gpt2": "transformer.h", "falcon": "transformer.h", "gpt_neox": "gpt_neox.layers",
                 "opt": "model.decoder.layers"}


def reference_model(model_type: str, original):
    """Build the pruned model by hand: fresh config with len(KEPT) layers, per-layer entries picked by hand."""
    config = tiny_config(model_type, num_layers=len(KEPT))
    original_config = original.config
    if getattr(original_config, "layer_types", None) is not None:
        config.layer_types = [original_config.layer_types[i] for i in KEPT]
    if model_type in ("qwen2", "qwen3"):
        config.max_window_layers = sum(1 for i in KEPT if i < original_config.max_window_layers)
    if model_type == "qwen2_moe":
        # original rule: layer i is sparse iff i not in mlp_only_layers and (i + 1) % step == 0
        step, dense = original_config.decoder_sparse_step, set(original_config.mlp_only_layers)
        sparse = [i not in dense and (i + 1) % step == 0 for i in range(6)]
        config.decoder_sparse_step = 1
        config.mlp_only_layers = [new for new, old in enumerate(KEPT) if not sparse[old]]
    torch.manual_seed(123)
    reference = AutoModelForCausalLM.from_config(config).float().eval()
    prefix = LAYERS_PREFIX.get(model_type, "model.layers") + "."
    renamed = {}
    for key, value in original.state_dict().items():
        if key.startswith(prefix):
            index, rest = key[len(prefix):].split(".", 1)
            if int(index) not in KEPT:
                continue
            key = f"{prefix}{KEPT.index(int(index))}.{rest}"
        renamed[key] = value
    reference.load_state_dict(renamed, strict=True)
    return reference


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


@pytest.fixture(scope="module")
def ids():
    torch.manual_seed(0)
    return torch.randint(3, 512, (2, 24))   # longer than the sliding windows (8) of Gemma/Qwen2 configs


@pytest.mark.parametrize("model_type", REQUIRED_ARCHITECTURES)
def test_prune_save_reload_matches_hand_built_reference(model_type, ids, tmp_path):
    original = tiny_model(model_type, num_layers=6)
    reference = reference_model(model_type, original)
    pruned = copy.deepcopy(original)

    kept = remove_layers(pruned, REMOVED)

    assert kept == KEPT
    adapter = ModelAdapter(pruned)
    assert adapter.num_layers == len(KEPT)
    assert getattr(pruned.config, adapter.spec.num_layers_key) == len(KEPT)
    expected = _logits(reference, ids)
    assert torch.allclose(_logits(pruned, ids), expected, atol=1e-5, rtol=0)

    # every submodule with a layer_idx carries its new position (the KV cache is keyed by it)
    for position, layer in enumerate(adapter.layers):
        indices = {m.layer_idx for m in layer.modules() if isinstance(getattr(m, "layer_idx", None), int)}
        assert indices <= {position}

    save(pruned, None, tmp_path / "out", metadata={"base_model": "tiny", "removed_layers": REMOVED,
                                                   "kept_layers": KEPT, "method": "manual"})
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out").float().eval()
    assert (tmp_path / "out" / "model.safetensors").is_file()
    assert torch.allclose(_logits(reloaded, ids), expected, atol=1e-5, rtol=0)
    metadata = json.loads((tmp_path / "out" / "depthprune.json").read_text())
    assert metadata["removed_layers"] == REMOVED and metadata["kept_layers"] == KEPT

    # generate with the KV cache equals generate without it (would fail with stale layer indices)
    prompt = ids[:1, :10]
    for model in (pruned, reloaded):
        with_cache = model.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=True, pad_token_id=0)
        without = model.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=False, pad_token_id=0)
        assert torch.equal(with_cache, without)


@pytest.mark.parametrize("model_type", ["gemma2", "gemma3_text", "qwen2"])
def test_per_layer_lists_are_filtered_by_kept_layers_not_truncated(model_type):
    model = tiny_model(model_type, num_layers=6)
    original_types = list(model.config.layer_types)
    remove_layers(model, REMOVED)
    assert model.config.layer_types == [original_types[i] for i in KEPT]
    reloaded_types = [layer.self_attn.sliding_window is not None for layer in ModelAdapter(model).layers]
    assert reloaded_types == [original_types[i] == "sliding_attention" for i in KEPT]


def test_gemma3_pattern_would_differ_if_truncated():
    # guards the test above: with this pattern and removal, filtering and truncation disagree
    types = tiny_config("gemma3_text", 6).layer_types
    assert [types[i] for i in KEPT] != types[:len(KEPT)]


def test_qwen2_moe_sparse_pattern_made_explicit():
    model = tiny_model("qwen2_moe", num_layers=6)   # step 2, mlp_only [0]: sparse layers 1, 3, 5
    remove_layers(model, [1, 2])                      # kept 0, 3, 4, 5 -> sparse at new 1 and 3
    assert model.config.decoder_sparse_step == 1
    assert model.config.mlp_only_layers == [0, 2]
    kinds = [type(layer.mlp).__name__ for layer in ModelAdapter(model).layers]
    assert kinds == ["Qwen2MoeMLP", "Qwen2MoeSparseMoeBlock", "Qwen2MoeMLP", "Qwen2MoeSparseMoeBlock"]


def test_tied_embeddings_stay_tied(tmp_path):
    model = tiny_model("llama", num_layers=4)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    remove_layers(model, [1])
    assert model.lm_head.weight is model.model.embed_tokens.weight
    save(model, None, tmp_path / "out")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert reloaded.lm_head.weight.data_ptr() == reloaded.model.embed_tokens.weight.data_ptr()


@pytest.mark.parametrize("layers, message", [
    ([6], "out of range"), ([-1], "out of range"), ([1, 1], "more than once"), ([0, 1, 2, 3, 4, 5], "all 6"),
    ([5], "final layer"), (["2"], "not an integer"),
])
def test_bad_removals_are_refused_and_leave_the_model_alone(layers, message):
    model = tiny_model("llama", num_layers=6)
    with pytest.raises(DepthpruneError, match=message):
        remove_layers(model, layers)
    assert ModelAdapter(model).num_layers == 6 and model.config.num_hidden_layers == 6


def test_final_layer_with_explicit_flag():
    model = tiny_model("mistral", num_layers=4)
    assert remove_layers(model, [3], allow_final_layer=True) == [0, 1, 2]


def test_gpt2_position_dependent_scaling_is_refused():
    model = tiny_model("gpt2", num_layers=4)
    model.config.scale_attn_by_inverse_layer_idx = True
    with pytest.raises(DepthpruneError, match="scale_attn_by_inverse_layer_idx"):
        remove_layers(model, [1])


def test_unknown_architecture_falls_back_with_a_warning():
    model = tiny_model("llama", num_layers=4)
    model.config.model_type = "my_llama_variant"
    with pytest.warns(UserWarning, match="guessing"):
        adapter = ModelAdapter(model)
    assert adapter.layers_path == "model.layers" and adapter.spec.num_layers_key == "num_hidden_layers"
    assert adapter.spec.guessed


def test_unknown_architecture_without_fallback_lists_supported():
    model = tiny_model("llama", num_layers=4)
    model.config.model_type = "my_llama_variant"
    with pytest.raises(DepthpruneError, match="supported: .*llama"):
        ModelAdapter(model, allow_guess=False)


def test_multimodal_text_model_found_through_text_config(ids):
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, SiglipVisionConfig

    text = tiny_config("gemma3_text", num_layers=6)
    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                image_size=28, patch_size=14)
    config = Gemma3Config(text_config=text.to_dict(), vision_config=vision.to_dict(), mm_tokens_per_image=4)
    torch.manual_seed(0)
    model = Gemma3ForConditionalGeneration(config).eval()
    adapter = ModelAdapter(model)
    assert adapter.num_layers == 6 and adapter.spec.model_type == "gemma3_text"
    original_types = list(model.config.text_config.layer_types)
    remove_layers(model, REMOVED)
    assert model.config.text_config.num_hidden_layers == 4
    assert model.config.text_config.layer_types == [original_types[i] for i in KEPT]
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=ids).logits).all()
