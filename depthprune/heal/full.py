"""Full-parameter continued pretraining (LayerChop, arXiv 2305.14864; Shortened LLaMA CPT, arXiv 2402.02834).

AdamW with betas (0.9, 0.95) and weight decay 0.1 on matrices only (norms and biases are not decayed, as in
nanoGPT), cosine decay after warm-up (transformers' own schedules). The same optimiser serves every method (only
what the method leaves trainable is optimised).
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from ..adapter import ModelAdapter
from .config import HealConfig
from .methods import HealingMethod, Preset, register

# transformers' schedule names for ours (both warm up linearly from 0 to lr first)
_SCHEDULES = {"cosine": "cosine", "constant": "constant_with_warmup"}


def make_trainable(model: nn.Module, config: HealConfig | None = None, layers: list[int] | None = None) -> nn.Module:
    """Every weight trainable, or (``layers`` given) only the weights of those decoder layers."""
    if layers is None:
        model.requires_grad_(True)
        return model
    model.requires_grad_(False)
    decoder_layers = ModelAdapter(model).layers
    for index in layers:
        decoder_layers[index].requires_grad_(True)
    return model


def build_optimizer(model: nn.Module, config: HealConfig, fused: bool = True) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters: weight decay on tensors of 2+ dimensions, none on norms and biases.

    Args:
        fused: use the fused kernel where torch has one for the parameters' device (CPU and CUDA since torch 2.4;
            what transformers' Trainer uses by default): one kernel per step instead of a loop over tensors. Not
            under an fp16 loss scaler: a fused optimizer takes the scaler's inf check into its own step, and
            accelerate then cannot tell that the step was skipped.
    """
    decay, no_decay = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (decay if parameter.dim() >= 2 else no_decay).append(parameter)
    groups = [{"params": decay, "weight_decay": config.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    fused = fused and _fused_adamw_supported(decay + no_decay)
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, **({"fused": True} if fused else {}))


def _fused_adamw_supported(parameters: list[torch.Tensor]) -> bool:
    if "fused" not in inspect.signature(torch.optim.AdamW).parameters or not parameters:
        return False
    devices = {p.device.type for p in parameters}
    dtypes = {p.dtype for p in parameters}
    return devices <= {"cpu", "cuda"} and len(devices) == 1 and dtypes <= {torch.float32, torch.bfloat16,
                                                                             torch.float16, torch.float64}


def build_scheduler(optimizer: torch.optim.Optimizer, config: HealConfig, num_steps: int, warmup_steps: int):
    """transformers' schedule: linear warm-up from 0 to ``lr`` over ``warmup_steps``, then cosine decay to 0 at
    ``num_steps`` (or constant)."""
    from transformers import get_scheduler

    return get_scheduler(_SCHEDULES[config.schedule], optimizer, num_warmup_steps=warmup_steps,
                         num_training_steps=num_steps)


def effective_warmup(config: HealConfig, num_steps: int) -> int:
    """The papers' warm-up (100 steps) shrunk to at most a tenth of a short run, so the run ever reaches its lr."""
    return min(config.warmup_steps, num_steps // 10)


_CPT = dict(method="full", lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, schedule="cosine", warmup_steps=100)

FULL = register(HealingMethod(
    name="full", help="every weight (continued pretraining)",
    presets=(Preset("shortened-cpt", "Kim et al. 2024, Shortened LLaMA (2402.02834): continued pretraining",
                    dict(_CPT)),
             Preset("layerchop-cpt", "Chen et al. 2023, LayerChop (2305.14864): continued pretraining after the chop",
                    dict(_CPT), "the paper does not pin its optimiser; we use the Shortened LLaMA CPT settings")),
    make_student=make_trainable))
