"""QLoRA healing: the LoRA recipe over a 4-bit NF4 base (bitsandbytes, CUDA only; Gromov et al., arXiv 2403.17887).

The pruned checkpoint's weights are read once for training, in 4 bits; the trained adapter is merged into a
full-precision reload of the checkpoint (it cannot be merged into 4-bit weights without rounding it away).
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import torch
from torch import nn

from ..errors import DepthpruneError
from .config import HealConfig
from .lora import LORA_SETTINGS, apply_lora
from .methods import HealingMethod, Preset, register

logger = logging.getLogger(__name__)


def qlora_available() -> str | None:
    """None when QLoRA can run here, else the reason it cannot."""
    if not torch.cuda.is_available():
        return "QLoRA's 4-bit base (bitsandbytes NF4) runs on CUDA only and this machine has no CUDA GPU"
    if importlib.util.find_spec("bitsandbytes") is None:
        return "QLoRA needs bitsandbytes: pip install 'depthprune[qlora]'"
    return None


def run_method(config: HealConfig) -> str:
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



QLORA = register(HealingMethod(
    name="qlora", help="the LoRA recipe over a 4-bit NF4 base (bitsandbytes, CUDA only; --qlora-fallback: plain LoRA)",
    presets=(Preset("gromov-qlora", "Gromov et al. 2024 (2403.17887): the paper's QLoRA healing",
                    dict(method="qlora", rank=8, alpha=None, dropout=0.05, targets="mlp", warmup_steps=100,
                         schedule="cosine", lr=3e-4), "4-bit NF4 base via bitsandbytes; CUDA only"),),
    make_student=apply_lora, settings=LORA_SETTINGS + ("qlora_fallback",), packages=("peft", "bitsandbytes"),
    adapter=True, resolve=lambda config: run_method(config)))
