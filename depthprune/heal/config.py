"""What a healing run does: one config dataclass, and presets named after the papers they come from.

A preset is a partial :class:`HealConfig`; options given on the command line or in Python override it.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field

from ..errors import DepthpruneError

METHOD_NAMES = ("lora", "qlora", "full", "distill")
TARGET_NAMES = ("mlp", "attn", "all")


@dataclass
class HealConfig:
    """Every setting of a healing run (CLI options, ``--config`` YAML keys and Python keywords are these fields).

    Defaults are Gromov et al.'s LoRA recipe (arXiv 2403.17887): LoRA on the MLP projections, alpha = r,
    dropout 0.05, cosine schedule with 100 warm-up steps, lr 3e-4.
    """

    method: str = "lora"                # lora | qlora | full | distill
    # LoRA / QLoRA
    rank: int = 8
    alpha: float | None = None          # None: alpha = rank (Gromov)
    dropout: float = 0.05
    targets: str = "mlp"                # mlp | attn | all  (which linear projections of the decoder layers)
    qlora_fallback: bool = False        # qlora without CUDA: train plain LoRA instead of refusing
    # optimisation
    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    warmup_steps: int = 100
    schedule: str = "cosine"            # cosine | constant (both after linear warm-up)
    max_grad_norm: float = 1.0
    # budget: max_steps optimizer steps, or a token budget turned into steps
    max_steps: int | None = None
    tokens: int | None = None
    batch_size: int = 4                 # blocks per process per micro-batch
    grad_accum: int = 1
    seq_len: int = 512
    # distillation (Minitron, arXiv 2408.11796)
    temperature: float = 1.0
    lm_loss_weight: float = 0.0         # loss = (1 - w) * KL(teacher || student) + w * LM loss
    # bookkeeping
    eval_every: int = 50
    eval_samples: int = 16              # held-out blocks
    save_every: int = 100
    seed: int = 0
    max_loss_ratio: float = 4.0         # stop when a step's loss jumps above this times the running median
    preset: str | None = None

    def __post_init__(self):
        self.betas = tuple(float(b) for b in self.betas)
        self.validate()

    @property
    def lora_alpha(self) -> float:
        return float(self.rank if self.alpha is None else self.alpha)

    def validate(self) -> None:
        """Raise :class:`DepthpruneError` naming the first bad setting and its fix."""
        if self.method not in METHOD_NAMES:
            raise DepthpruneError(unknown_name_message("method", self.method, METHOD_NAMES))
        if self.targets not in TARGET_NAMES:
            raise DepthpruneError(unknown_name_message("--targets", self.targets, TARGET_NAMES))
        if self.schedule not in ("cosine", "constant"):
            raise DepthpruneError(f"unknown schedule {self.schedule!r}; use cosine or constant")
        positive = {"rank": self.rank, "lr": self.lr, "batch_size": self.batch_size, "grad_accum": self.grad_accum,
                    "eval_every": self.eval_every, "save_every": self.save_every, "temperature": self.temperature,
                    "max_loss_ratio": self.max_loss_ratio}
        for name, value in positive.items():
            if not value > 0:
                raise DepthpruneError(f"--{name.replace('_', '-')} must be positive (got {value})")
        if self.seq_len < 2:
            raise DepthpruneError(f"--seq-len must be at least 2 (got {self.seq_len})")
        if not 0.0 <= self.dropout < 1.0:
            raise DepthpruneError(f"--dropout must be in [0, 1) (got {self.dropout})")
        if not 0.0 <= self.lm_loss_weight <= 1.0:
            raise DepthpruneError(f"--lm-loss-weight must be in [0, 1] (got {self.lm_loss_weight})")
        if self.warmup_steps < 0 or self.eval_samples < 0 or self.max_grad_norm < 0:
            raise DepthpruneError("--warmup-steps, --eval-samples and --max-grad-norm must not be negative")
        if self.max_steps is not None and self.tokens is not None:
            raise DepthpruneError("give either --max-steps or --train-tokens, not both")
        if self.max_steps is not None and self.max_steps < 1:
            raise DepthpruneError(f"--max-steps must be at least 1 (got {self.max_steps})")
        if self.tokens is not None and self.tokens < 1:
            raise DepthpruneError(f"--train-tokens must be at least 1 (got {self.tokens})")
        if self.method != "distill" and self.lm_loss_weight != 0.0:
            raise DepthpruneError("--lm-loss-weight applies to --method distill only; drop it")

    def tokens_per_step(self, num_processes: int = 1) -> int:
        return self.batch_size * self.grad_accum * self.seq_len * num_processes

    def resolve_steps(self, num_processes: int = 1) -> int:
        """Optimizer steps of the run: ``max_steps``, or the token budget rounded up to whole steps."""
        if self.max_steps is not None:
            return self.max_steps
        if self.tokens is None:
            raise DepthpruneError("no training budget; pass --max-steps N or --train-tokens T")
        return max(1, math.ceil(self.tokens / self.tokens_per_step(num_processes)))

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["betas"] = list(self.betas)
        data["lora_alpha"] = self.lora_alpha
        return data


@dataclass(frozen=True)
class Preset:
    """A named recipe: the paper it comes from and the settings it fixes."""

    name: str
    paper: str
    settings: dict = field(default_factory=dict)
    note: str = ""


_GROMOV = dict(rank=8, alpha=None, dropout=0.05, targets="mlp", warmup_steps=100, schedule="cosine", lr=3e-4)
_CPT = dict(method="full", lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, schedule="cosine", warmup_steps=100)

PRESETS: dict[str, Preset] = {p.name: p for p in [
    Preset("gromov-lora", "Gromov et al. 2024, The Unreasonable Ineffectiveness of the Deeper Layers (2403.17887)",
           dict(_GROMOV, method="lora"), "the paper sweeps r from 2 to 64; alpha = r; lr 3e-4 was for 7B-class"),
    Preset("gromov-qlora", "Gromov et al. 2024 (2403.17887): the paper's QLoRA healing",
           dict(_GROMOV, method="qlora"), "4-bit NF4 base via bitsandbytes; CUDA only"),
    Preset("shortened-lora", "Kim et al. 2024, Shortened LLaMA (2402.02834): LoRA retraining",
           dict(method="lora", rank=8, alpha=16, dropout=0.05, targets="all", lr=1e-4, schedule="cosine",
                warmup_steps=100)),
    Preset("shortened-cpt", "Kim et al. 2024, Shortened LLaMA (2402.02834): continued pretraining",
           dict(_CPT)),
    Preset("layerchop-cpt", "Chen et al. 2023, LayerChop (2305.14864): continued pretraining after the chop",
           dict(_CPT), "the paper does not pin its optimiser; we use the Shortened LLaMA CPT settings"),
    Preset("minitron-kd", "Muralidharan et al. 2024, Minitron (2407.14679) / Sreenivas et al. (2408.11796): "
           "logit distillation from the unpruned teacher",
           dict(method="distill", temperature=1.0, lm_loss_weight=0.0, lr=1e-4, betas=(0.9, 0.95),
                weight_decay=0.1, schedule="cosine", warmup_steps=100)),
]}

# The recipe a method follows when no preset is named.
DEFAULT_PRESETS = {"lora": "gromov-lora", "qlora": "gromov-qlora", "full": "shortened-cpt", "distill": "minitron-kd"}


def unknown_name_message(kind: str, name: str, valid) -> str:
    """'unknown X 'y'; valid: ...' plus a 'did you mean' when one name is close."""
    close = difflib.get_close_matches(str(name), list(valid), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown {kind} {name!r}; valid: {', '.join(valid)}{hint}"


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise DepthpruneError(unknown_name_message("preset", name, PRESETS)) from None


def build_config(preset: str | None = None, config_file: str | None = None, **overrides) -> HealConfig:
    """A :class:`HealConfig` from a preset, then a YAML file, then explicit keyword overrides (None = not given).

    Unknown keys are errors, never ignored.
    """
    fields = {f.name for f in dataclasses.fields(HealConfig)}
    settings: dict = {}
    if config_file is not None:
        settings.update(_read_config_file(config_file, fields))
    preset = overrides.pop("preset", None) or preset or settings.pop("preset", None)
    if preset is None:   # each method's defaults are its paper's recipe
        method = overrides.get("method") or settings.get("method") or "lora"
        preset = DEFAULT_PRESETS.get(method)
    merged: dict = {}
    if preset is not None:
        merged.update(get_preset(preset).settings)
        merged["preset"] = preset
    merged.update(settings)
    for key, value in overrides.items():
        if key not in fields:
            raise DepthpruneError(unknown_name_message("healing setting", key, sorted(fields)))
        if value is not None:
            merged[key] = value
    return HealConfig(**merged)


def _read_config_file(path: str, fields: set[str]) -> dict:
    import yaml

    try:
        with open(path) as handle:
            data = yaml.safe_load(handle) or {}
    except OSError as error:
        raise DepthpruneError(f"cannot read --config {path}: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise DepthpruneError(f"--config {path} is not valid YAML ({type(error).__name__})") from None
    if not isinstance(data, dict):
        raise DepthpruneError(f"--config {path} must be a mapping of setting: value")
    data = {str(k).replace("-", "_"): v for k, v in data.items()}
    for key in data:
        if key not in fields:
            raise DepthpruneError(f"--config {path}: " + unknown_name_message("setting", key, sorted(fields)))
    return data
