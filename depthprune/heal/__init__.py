"""Heal pruned models: LoRA, QLoRA, continued pretraining and distillation, on accelerate.

``depthprune.heal.heal(...)`` is ``depthprune heal ...``; ``accelerate launch -m depthprune heal ...`` runs the same
code data-parallel, with FSDP or with DeepSpeed (see docs/healing.md).
"""

from .api import HealResult, heal
from .config import DEFAULT_PRESETS, METHOD_NAMES, PRESETS, HealConfig, Preset, build_config, get_preset
from .distill import kd_loss
from .lora import apply_lora, resolve_targets
from .trainer import LossDiverged, TrainResult, TrainState, train

__all__ = ["DEFAULT_PRESETS", "HealConfig", "HealResult", "LossDiverged", "METHOD_NAMES", "PRESETS", "Preset",
           "TrainResult", "TrainState", "apply_lora", "build_config", "get_preset", "heal", "kd_loss",
           "resolve_targets", "train"]
