"""Full-parameter continued pretraining (LayerChop, arXiv 2305.14864; Shortened LLaMA CPT, arXiv 2402.02834).

AdamW with betas (0.9, 0.95) and weight decay 0.1 on matrices only (norms and biases are not decayed, as in
nanoGPT), cosine decay after warm-up. The same optimiser serves LoRA (only the adapters are trainable there).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import HealConfig


def make_all_trainable(model: nn.Module) -> nn.Module:
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    return model


def build_optimizer(model: nn.Module, config: HealConfig) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters: weight decay on tensors of 2+ dimensions, none on norms and biases."""
    decay, no_decay = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (decay if parameter.dim() >= 2 else no_decay).append(parameter)
    groups = [{"params": decay, "weight_decay": config.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=config.lr, betas=config.betas)


def build_scheduler(optimizer: torch.optim.Optimizer, config: HealConfig, num_steps: int, warmup_steps: int):
    """Linear warm-up to ``lr`` over ``warmup_steps``, then cosine decay to 0 at ``num_steps`` (or constant)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        if config.schedule == "constant":
            return 1.0
        progress = (step - warmup_steps) / max(1, num_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def effective_warmup(config: HealConfig, num_steps: int) -> int:
    """The papers' warm-up (100 steps) shrunk to at most a tenth of a short run, so the run ever reaches its lr."""
    return min(config.warmup_steps, num_steps // 10)
