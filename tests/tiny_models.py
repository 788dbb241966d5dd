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


# The table's other architectures, and variants whose path from the last decoder layer to the logits holds more
# than a norm and a head: Granite divides the logits by ``logits_scaling``, OPT-350m-style models project the
# hidden state down (``project_out``, no final norm), Gemma 2 soft-caps the logits. Scales are chosen so that each
# extra step changes the loss visibly on random weights. name -> (model_type, config kwargs).
HEAD_VARIANT_KWARGS: dict[str, tuple[str, dict]] = {
    "gemma": ("gemma", dict(_COMMON, head_dim=16)),
    "qwen3_moe": ("qwen3_moe", dict(_COMMON, head_dim=16, num_experts=4, num_experts_per_tok=2,
                                    moe_intermediate_size=32, decoder_sparse_step=1, mlp_only_layers=[0])),
    "olmo2": ("olmo2", dict(_COMMON, pad_token_id=1, bos_token_id=None, eos_token_id=2)),
    "smollm3": ("smollm3", dict(_COMMON, no_rope_layer_interval=2, pad_token_id=0, bos_token_id=1,
                                  eos_token_id=2)),
    "granite-logits-scaling": ("granite", dict(_COMMON, logits_scaling=4.0, embedding_multiplier=2.0,
                                                residual_multiplier=0.5)),
    "opt-project-out": ("opt", dict(vocab_size=VOCAB, hidden_size=HIDDEN, ffn_dim=128, num_attention_heads=4,
                                    word_embed_proj_dim=HIDDEN // 2, do_layer_norm_before=False,
                                    max_position_embeddings=256, pad_token_id=1)),
    "gemma2-softcap": ("gemma2", dict(_COMMON, head_dim=16, sliding_window=8, query_pre_attn_scalar=16,
                                      final_logit_softcapping=0.5)),
}

# Every tiny model the head tests run: the surgery set plus the variants above (covers the whole table).
HEAD_CASES = REQUIRED_ARCHITECTURES + sorted(HEAD_VARIANT_KWARGS)


def tiny_case_model(name: str, num_layers: int = 4, seed: int = 0):
    """A random fp32 eval-mode model for a name of :data:`HEAD_CASES` (a model_type or a variant)."""
    if name not in HEAD_VARIANT_KWARGS:
        return tiny_model(name, num_layers=num_layers, seed=seed)
    model_type, kwargs = HEAD_VARIANT_KWARGS[name]
    config = CONFIG_MAPPING[model_type](**dict(kwargs, num_hidden_layers=num_layers))
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config).float().eval()
