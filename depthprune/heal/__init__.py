"""Heal pruned models: LoRA, QLoRA, continued pretraining and distillation, on accelerate.

``depthprune.heal.heal(...)`` is ``depthprune heal ...``; ``accelerate launch -m depthprune heal ...`` runs the same
code data-parallel, with FSDP or with DeepSpeed (see docs/healing.md).

The healing methods are registered by importing each method module here, by name (no package walking); a new
method is one more module and one more import.
"""

# each registers its healing method; this order is the order --method lists them in
from . import lora  # noqa: I001,F401
from . import qlora  # noqa: F401
from . import full  # noqa: F401
from . import distill  # noqa: F401
from .config import HealConfig, build_config, default_presets, get_preset, presets
from .distill import kd_loss, topk_kd_loss
from .healing import HealResult, heal, touched_layers
from .lora import apply_lora, resolve_targets
from .methods import HEALING_METHODS, HealingMethod, Preset
from .trainer import LossDiverged, TrainResult, TrainState, train

__all__ = ["HEALING_METHODS", "HealConfig", "HealResult", "HealingMethod", "LossDiverged", "Preset", "TrainResult",
           "TrainState", "apply_lora", "build_config", "default_presets", "get_preset", "heal", "kd_loss", "presets",
           "resolve_targets", "topk_kd_loss", "touched_layers", "train"]
