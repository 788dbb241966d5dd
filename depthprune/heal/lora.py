"""LoRA and QLoRA healing through peft (Gromov et al., arXiv 2403.17887; Shortened LLaMA, arXiv 2402.02834).

Targets are resolved from the model's own decoder layers and checked after wrapping: every projection we meant is
adapted and nothing else, so a name that peft would silently skip or over-match is an error, not a surprise.
"""

from __future__ import annotations

import importlib.util
import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from ..adapter import ModelAdapter
from ..errors import DepthpruneError
from .config import HealConfig

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


def resolve_targets(model: nn.Module, targets: str) -> tuple[list[str], list[str]]:
    """The linear modules of the decoder layers that ``targets`` (mlp | attn | all) selects.

    Returns:
        (suffixes such as ``mlp.gate_proj`` to hand to peft, full module names they must match exactly).
    """
    adapter = ModelAdapter(model)
    prefix = adapter.layers_path
    linear = _linear_types()
    chosen, seen_kinds = [], {}
    for name, module in model.named_modules():
        if not name.startswith(prefix + ".") or not isinstance(module, linear):
            continue
        relative = name[len(prefix) + 1:].split(".", 1)[1] if "." in name[len(prefix) + 1:] else ""
        kind = projection_kind(relative)
        seen_kinds.setdefault(relative, kind)
        if kind is not None and (targets == "all" or kind == targets):
            chosen.append(name)
    if not chosen:
        found = ", ".join(f"{n} ({k or 'unclassified'})" for n, k in sorted(seen_kinds.items())) or "none"
        raise DepthpruneError(f"--targets {targets}: no matching linear projections in the decoder layers "
                              f"(found: {found}); choose another --targets, or --method full (fused MoE experts are "
                              "not linear modules)")
    suffixes = sorted({name[len(prefix) + 1:].split(".", 1)[1] for name in chosen})
    return suffixes, sorted(chosen)


def lora_config(model: nn.Module, config: HealConfig):
    from peft import LoraConfig

    from transformers.pytorch_utils import Conv1D

    suffixes, names = resolve_targets(model, config.targets)
    # GPT-2's Conv1D stores its weight transposed (fan_in, fan_out); say so rather than let peft guess and warn
    modules = dict(model.named_modules())
    transposed = any(isinstance(modules[name], Conv1D) for name in names)
    return LoraConfig(r=config.rank, lora_alpha=config.lora_alpha, lora_dropout=config.dropout,
                      target_modules=suffixes, bias="none", task_type="CAUSAL_LM", fan_in_fan_out=transposed)


def apply_lora(model: nn.Module, config: HealConfig) -> nn.Module:
    """Wrap ``model`` in a peft LoRA model (only the adapters train) and verify the adapted modules exactly."""
    from peft import get_peft_model

    peft_config = lora_config(model, config)
    _, expected = resolve_targets(model, config.targets)
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


def qlora_available() -> str | None:
    """None when QLoRA can run here, else the reason it cannot."""
    if not torch.cuda.is_available():
        return "QLoRA's 4-bit base (bitsandbytes NF4) runs on CUDA only and this machine has no CUDA GPU"
    if importlib.util.find_spec("bitsandbytes") is None:
        return "QLoRA needs bitsandbytes: pip install 'depthprune[qlora]'"
    return None


def effective_method(config: HealConfig) -> str:
    """``qlora`` when it can run, ``lora`` when it cannot but --qlora-fallback was given; otherwise refuse."""
    if config.method != "qlora":
        return config.method
    reason = qlora_available()
    if reason is None:
        return "qlora"
    if config.qlora_fallback:
        logger.warning("%s; training plain LoRA instead (--qlora-fallback)", reason)
        return "lora"
    raise DepthpruneError(f"{reason}; use --method lora, or pass --qlora-fallback to train plain LoRA instead")


def qlora_source(spec, trust_remote_code: bool = False):
    """The checkpoint folder QLoRA trains on, with its tokenizer but WITHOUT its weights (``model`` is None):
    QLoRA reads the weights once, in 4 bits (:func:`load_qlora_base`)."""
    from transformers import AutoTokenizer

    from ..loading import LoadedModel

    folder = Path(str(spec)).expanduser()
    if not (folder / "config.json").is_file():
        raise DepthpruneError(f"QLoRA reads the model in 4 bits from a checkpoint folder and {spec} is not one (no "
                              "config.json); save or prune it to a folder first")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError) as error:
        raise DepthpruneError(f"{folder} has no usable tokenizer ({type(error).__name__}); copy the base model's "
                              "tokenizer files into it") from None
    return LoadedModel(model=None, tokenizer=tokenizer, source=str(spec), description=str(folder.resolve()),
                       checkpoint_dir=folder)


def load_qlora_base(checkpoint_dir, device_index: int, trust_remote_code: bool = False) -> nn.Module:
    """The checkpoint with its linear layers in 4-bit NF4 (double quantisation, bf16 compute), ready for k-bit
    training (the QLoRA recipe). This is the only read of the weights during QLoRA training."""
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                      bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(str(checkpoint_dir), quantization_config=quantization,
                                                 device_map={"": device_index}, trust_remote_code=trust_remote_code)
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def adapter_state(peft_model: nn.Module) -> dict[str, torch.Tensor]:
    """The LoRA weights alone (what ``--keep-adapter`` saves and what QLoRA merges into a full-precision base)."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().cpu() for k, v in get_peft_model_state_dict(peft_model).items()}


def merge_adapter_into(base: nn.Module, config: HealConfig, state: dict[str, torch.Tensor]) -> nn.Module:
    """Apply trained LoRA weights to a full-precision ``base`` and fold them into its weights."""
    from peft import set_peft_model_state_dict

    peft_model = apply_lora(base, config)
    result = set_peft_model_state_dict(peft_model, state)
    if getattr(result, "unexpected_keys", None):
        raise DepthpruneError(f"adapter weights do not fit the model ({result.unexpected_keys[:2]}...)")
    return peft_model.merge_and_unload()
