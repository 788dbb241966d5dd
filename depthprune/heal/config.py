"""What a healing run does: one config dataclass; presets (named after the papers they come from) belong to the
healing methods' registry entries (:mod:`depthprune.heal.methods`).

A preset is a partial :class:`HealConfig`; options given on the command line or in Python override it.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass

from ..errors import DepthpruneError
from .methods import HEALING_METHODS, Preset, all_presets

TARGET_NAMES = ("mlp", "attn", "all")
TRAIN_LAYER_CHOICES = ("all", "touched")
SCHEDULES = ("cosine", "constant")
TOP_K_NORMS = ("top-k", "vocab")     # the student's side of a top-K distillation loss (heal/distill.py)


@dataclass
class HealConfig:
    """Every setting of a healing run (CLI options, ``--config`` YAML keys and Python keywords are these fields).

    Defaults are Gromov et al.'s LoRA recipe (arXiv 2403.17887): LoRA on the MLP projections, alpha = r,
    dropout 0.05, cosine schedule with 100 warm-up steps, lr 3e-4.
    """

    method: str = "lora"                # a registered healing method: lora | qlora | full | distill
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
    top_k: int = 0                      # 0: KL over the whole vocabulary; K: over the teacher's top K
    top_k_norm: str = "top-k"           # top-k | vocab: over what the student's side of a top-K loss is normalised
    # what trains: every decoder layer, or only the kept layers next to each gap the pruning left
    train_layers: str = "all"           # all | touched
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
        HEALING_METHODS.get(self.method)          # an unknown method names the registered ones
        for option, value, valid in (("--targets", self.targets, TARGET_NAMES),
                                     ("--train-layers", self.train_layers, TRAIN_LAYER_CHOICES),
                                     ("--schedule", self.schedule, SCHEDULES),
                                     ("--top-k-norm", self.top_k_norm, TOP_K_NORMS)):
            if value not in valid:
                raise DepthpruneError(unknown_name_message(option, value, valid))
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
        if self.warmup_steps < 0 or self.eval_samples < 0 or self.max_grad_norm < 0 or self.top_k < 0:
            raise DepthpruneError("--warmup-steps, --eval-samples, --max-grad-norm and --top-k must not be negative")
        if self.max_steps is not None and self.tokens is not None:
            raise DepthpruneError("give either --max-steps or --train-tokens, not both")
        if self.max_steps is not None and self.max_steps < 1:
            raise DepthpruneError(f"--max-steps must be at least 1 (got {self.max_steps})")
        if self.tokens is not None and self.tokens < 1:
            raise DepthpruneError(f"--train-tokens must be at least 1 (got {self.tokens})")
        if self.top_k == 0 and self.top_k_norm != "top-k":
            raise DepthpruneError("--top-k-norm applies to --top-k K only (with --top-k 0 the KL covers the whole "
                                  "vocabulary); add --top-k K or drop --top-k-norm")
        self._refuse_other_methods_settings()

    def _refuse_other_methods_settings(self) -> None:
        """A setting that only other methods read, set away from its default, would be ignored: refuse it."""
        defaults = {f.name: f.default for f in dataclasses.fields(HealConfig)}
        own = set(HEALING_METHODS.get(self.method).settings)
        for method in HEALING_METHODS:
            for name in method.settings:
                if name in own or getattr(self, name) == defaults[name]:
                    continue
                readers = [m.name for m in HEALING_METHODS if name in m.settings]
                raise DepthpruneError(f"--{name.replace('_', '-')} applies to --method {', '.join(readers)} only; "
                                      "drop it")

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


def presets() -> dict[str, Preset]:
    """Every preset of every registered healing method, by name."""
    return all_presets()


def default_presets() -> dict[str, str]:
    """The recipe each method follows when no preset is named: its paper's."""
    return {method.name: method.default_preset for method in HEALING_METHODS}


def unknown_name_message(kind: str, name: str, valid) -> str:
    """'unknown X 'y'; valid: ...' plus a 'did you mean' when one name is close."""
    close = difflib.get_close_matches(str(name), list(valid), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown {kind} {name!r}; valid: {', '.join(valid)}{hint}"


def get_preset(name: str) -> Preset:
    known = presets()
    try:
        return known[name]
    except KeyError:
        raise DepthpruneError(unknown_name_message("preset", name, known)) from None


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
        preset = default_presets().get(method)
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
