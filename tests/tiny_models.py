"""Tiny random models of every architecture in the table, built from configs (no downloads).

Shapes are small (hidden 64, 4-6 layers, vocab 512) so that a whole test module runs in seconds. Each config
exercises what surgery must get right for its family: non-uniform ``layer_types`` (Gemma 2/3, Qwen2 sliding
windows), dense/sparse MoE patterns (Qwen2-MoE), tied and untied heads.
"""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, CONFIG_MAPPING

VOCAB = 512
HIDDEN = 64

_COMMON = dict(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=128, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=256)

# model_type -> config kwargs; num_hidden_layers (or its alias) is filled in by tiny_config().
TINY_CONFIG_KWARGS: dict[str, dict] = {
    "llama": dict(_COMMON, tie_word_embeddings=True),
    "mistral": dict(_COMMON, sliding_window=None),
    "qwen2": dict(_COMMON, use_sliding_window=True, sliding_window=8, max_window_layers=2),
    "qwen3": dict(_COMMON, head_dim=16, tie_word_embeddings=True),
    "gemma2": dict(_COMMON, head_dim=16, sliding_window=8, query_pre_attn_scalar=16),
    "gemma3_text": dict(_COMMON, head_dim=16, sliding_window=8, query_pre_attn_scalar=16,
                        layer_types=None),  # set per depth in tiny_config
    "phi3": dict(_COMMON, pad_token_id=0),
    "mixtral": dict(_COMMON, num_local_experts=4, num_experts_per_tok=2),
    "qwen2_moe": dict(_COMMON, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                      shared_expert_intermediate_size=64, decoder_sparse_step=2, mlp_only_layers=[0]),
    "gpt2": dict(vocab_size=VOCAB, n_embd=HIDDEN, n_head=4, n_positions=256),
    "gpt_neox": dict(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=128, num_attention_heads=4,
                     max_position_embeddings=256, rotary_pct=0.5),
    "opt": dict(vocab_size=VOCAB, hidden_size=HIDDEN, ffn_dim=128, num_attention_heads=4,
                word_embed_proj_dim=HIDDEN, max_position_embeddings=256, pad_token_id=1),
    "falcon": dict(vocab_size=VOCAB, hidden_size=HIDDEN, num_attention_heads=4, new_decoder_architecture=True,
                   num_kv_heads=2, alibi=False),
}

REQUIRED_ARCHITECTURES = sorted(TINY_CONFIG_KWARGS)
_LAYER_KEY = {"gpt2": "n_layer"}


def tiny_config(model_type: str, num_layers: int = 6):
    kwargs = dict(TINY_CONFIG_KWARGS[model_type])
    kwargs[_LAYER_KEY.get(model_type, "num_hidden_layers")] = num_layers
    if model_type == "gemma3_text":
        # Irregular on purpose: truncating instead of filtering would give a different pattern.
        pattern = ["sliding_attention", "full_attention", "sliding_attention", "sliding_attention",
                   "full_attention", "full_attention"]
        kwargs["layer_types"] = [pattern[i % len(pattern)] for i in range(num_layers)]
    config = CONFIG_MAPPING[model_type](**kwargs)
    config._attn_implementation = "eager"  # exact and deterministic on CPU; sdpa is tested via generate
    return config


def tiny_model(model_type: str, num_layers: int = 6, seed: int = 0):
    """A random fp32 model in eval mode."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(model_type, num_layers))
    return model.float().eval()
