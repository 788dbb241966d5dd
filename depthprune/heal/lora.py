"""LoRA healing through peft (Gromov et al., arXiv 2403.17887; Shortened LLaMA, arXiv 2402.02834).

Targets are resolved from the model's own decoder layers and checked after wrapping: every projection we meant is
adapted and nothing else, so a name that peft would silently skip or over-match is an error, not a surprise.
"""

from __future__ import annotations

import logging
import warnings

import torch
from torch import nn

from ..adapter import ModelAdapter
from ..errors import DepthpruneError
from .config import HealConfig
from .methods import HealingMethod, Preset, register

logger = logging.getLogger(__name__)

_MLP_WORDS = ("mlp", "feed_forward", "ffn", "fc1", "fc2", "c_fc", "dense_h_to_4h", "dense_4h_to_h")
_ATTN_WORDS = ("attn", "attention")
_ROUTER_NAMES = ("gate", "router", "shared_expert_gate")   # MoE routers are not projections; never adapted


def _linear_types() -> tuple[type, ...]:
    from transformers.pytorch_utils import Conv1D   # GPT-2's transposed linear

    return (nn.Linear, Conv1D)


def projection_kind(relative_name: str) -> str | None:
    """``mlp``, ``attn`` or None for a linear module's name inside a decoder layer (e.g. ``mlp.gate_proj``)."""
    parts = relative_name.split(".")
    if parts[-1] in _ROUTER_NAMES:
        return None
    if any(word in part for part in parts for word in _ATTN_WORDS):
        return "attn"
    if any(word in part for part in parts for word in _MLP_WORDS):
        return "mlp"
    return None


def resolve_targets(model: nn.Module, targets: str, layers: list[int] | None = None) -> tuple[list[str], list[str]]:
    """The linear modules of the decoder layers that ``targets`` (mlp | attn | all) selects.

    Args:
        layers: only these decoder layers (indices into the model's own layers); None: all of them.

    Returns:
        (names to hand to peft: suffixes such as ``mlp.gate_proj`` for all layers, the full module names when only
        some layers are adapted; the full module names the adapted modules must be exactly).
    """
    adapter = ModelAdapter(model)
    prefix = adapter.layers_path
    linear = _linear_types()
    chosen, seen_kinds = [], {}
    for name, module in model.named_modules():
        if not name.startswith(prefix + ".") or not isinstance(module, linear):
            continue
        index, _, relative = name[len(prefix) + 1:].partition(".")
        kind = projection_kind(relative)
        seen_kinds.setdefault(relative, kind)
        if layers is not None and int(index) not in layers:
            continue
        if kind is not None and (targets == "all" or kind == targets):
            chosen.append(name)
    if not chosen:
        found = ", ".join(f"{n} ({k or 'unclassified'})" for n, k in sorted(seen_kinds.items())) or "none"
        raise DepthpruneError(f"--targets {targets}: no matching linear projections in the decoder layers "
                              f"(found: {found}); choose another --targets, or --method full (fused MoE experts are "
                              "not linear modules)")
    if layers is not None:     # peft matches a full name exactly (or as a suffix after a dot)
        return sorted(chosen), sorted(chosen)
    suffixes = sorted({name[len(prefix) + 1:].split(".", 1)[1] for name in chosen})
    return suffixes, sorted(chosen)


def lora_config(model: nn.Module, config: HealConfig, layers: list[int] | None = None):
    from peft import LoraConfig

    from transformers.pytorch_utils import Conv1D

    suffixes, names = resolve_targets(model, config.targets, layers)
    # GPT-2's Conv1D stores its weight transposed (fan_in, fan_out); say so rather than let peft guess and warn
    modules = dict(model.named_modules())
    transposed = any(isinstance(modules[name], Conv1D) for name in names)
    return LoraConfig(r=config.rank, lora_alpha=config.lora_alpha, lora_dropout=config.dropout,
                      target_modules=suffixes, bias="none", task_type="CAUSAL_LM", fan_in_fan_out=transposed)


def apply_lora(model: nn.Module, config: HealConfig, layers: list[int] | None = None) -> nn.Module:
    """Wrap ``model`` in a peft LoRA model (only the adapters train) and verify the adapted modules exactly.

    Args:
        layers: adapt only these decoder layers (``--train-layers touched``); None: every layer.
    """
    from peft import get_peft_model

    peft_config = lora_config(model, config, layers)
    _, expected = resolve_targets(model, config.targets, layers)
    with warnings.catch_warnings():
        # peft (<= 0.21) reads transformers' deprecated `is_gradient_checkpointing` alias inside get_peft_model;
        # the call is peft's, not ours, and there is no argument that avoids it
        warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        peft_model = get_peft_model(model, peft_config)
    adapted = sorted(name.removeprefix("base_model.model.") for name, module in peft_model.named_modules()
                     if hasattr(module, "lora_A") and isinstance(getattr(module, "lora_A", None), nn.ModuleDict))
    if adapted != expected:
        missing, extra = sorted(set(expected) - set(adapted)), sorted(set(adapted) - set(expected))
        raise DepthpruneError(f"LoRA matched the wrong modules (missing {missing[:3]}, extra {extra[:3]}); report this "
                              "model type, or use --method full")
    return peft_model


def adapter_state(peft_model: nn.Module) -> dict[str, torch.Tensor]:
    """The LoRA weights alone (what ``--keep-adapter`` saves and what QLoRA merges into a full-precision base)."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().cpu() for k, v in get_peft_model_state_dict(peft_model).items()}


def merge_adapter_into(base: nn.Module, config: HealConfig, state: dict[str, torch.Tensor],
                       layers: list[int] | None = None) -> nn.Module:
    """Apply trained LoRA weights to a full-precision ``base`` and fold them into its weights."""
    from peft import set_peft_model_state_dict

    peft_model = apply_lora(base, config, layers)
    result = set_peft_model_state_dict(peft_model, state)
    if getattr(result, "unexpected_keys", None):
        raise DepthpruneError(f"adapter weights do not fit the model ({result.unexpected_keys[:2]}...)")
    return peft_model.merge_and_unload()


LORA_SETTINGS = ("rank", "alpha", "dropout", "targets")

LORA = register(HealingMethod(
    name="lora", help="LoRA adapters on the decoder layers' projections (--targets), merged into the weights",
    presets=(
        Preset("gromov-lora", "Gromov et al. 2024, The Unreasonable Ineffectiveness of the Deeper Layers "
               "(2403.17887)", dict(method="lora", rank=8, alpha=None, dropout=0.05, targets="mlp", warmup_steps=100,
                                    schedule="cosine", lr=3e-4),
               "the paper sweeps r from 2 to 64; alpha = r; lr 3e-4 was for 7B-class"),
        Preset("shortened-lora", "Kim et al. 2024, Shortened LLaMA (2402.02834): LoRA retraining",
               dict(method="lora", rank=8, alpha=16, dropout=0.05, targets="all", lr=1e-4, schedule="cosine",
                    warmup_steps=100)),
    ),
    make_student=apply_lora, settings=LORA_SETTINGS, packages=("peft",), adapter=True))
