"""The healing loop, on accelerate: one code path from a laptop CPU to DDP, FSDP or DeepSpeed on many GPUs.

``accelerate launch -m depthprune heal ...`` runs this same loop in every process; accelerate shards the batches,
averages gradients, and saves/restores the full training state (weights, optimizer, schedule, RNG) for --resume.

Data order is fixed up front: epochs of seeded permutations of the token blocks, cut into micro-batches that
accelerate deals out to the processes in turn. Step k of the run therefore sees the same tokens however often the
run was interrupted, and a 2-process run with batch b sees what a 1-process run with batch 2b sees.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil
import statistics
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DepthpruneError
from .config import HealConfig
from .distill import kd_loss, topk_kd_loss
from .full import build_optimizer, build_scheduler, effective_warmup
from .teacher_cache import TeacherCache

logger = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
CHECKPOINT_PREFIX = "step-"
# Our checkpoint folders: step-NNNNNNNN holding a state file we wrote; while being written, .step-NNNNNNNN.tmp.
# Nothing else in a checkpoint folder is ever deleted (it may be the user's own folder).
_CHECKPOINT_NAME = re.compile(r"step-\d{8}")
_PARTIAL_CHECKPOINT_NAME = re.compile(r"\.step-\d{8}\.tmp")
# Recipe settings that must not change between an interrupted run and its --resume: they decide the model being
# trained, the data order, the schedule and the budget. The learning rate may change (the way out of a diverged
# run is to lower it and resume), and so may eval_every, save_every, max_grad_norm and max_loss_ratio.
RESUME_KEYS = ("method", "rank", "alpha", "dropout", "targets", "betas", "weight_decay", "batch_size", "grad_accum",
               "seq_len", "seed", "schedule", "warmup_steps", "max_steps", "tokens", "eval_samples", "temperature",
               "lm_loss_weight", "top_k", "top_k_norm", "train_layers")
# Loss history the divergence check compares a step with (a running median, robust to single noisy batches).
DIVERGENCE_WINDOW = 32
DIVERGENCE_MIN_HISTORY = 3
# A loss counts as a jump only when it is also this many robust standard deviations (1.4826 MAD) above the median.
DIVERGENCE_SPREAD = 10.0
# fp16: the loss scaler halves its scale on each overflow; this many skipped steps in a row is not a transient.
MAX_CONSECUTIVE_SKIPPED = 25


class LossDiverged(DepthpruneError):
    """The loss became NaN/inf or exploded; the run stopped and the last good checkpoint was kept."""


@dataclass
class TrainState:
    """What a run has done so far; saved beside every checkpoint and restored by --resume."""

    step: int = 0
    tokens_seen: int = 0
    train_losses: list[float] = field(default_factory=list)         # one per optimizer step
    eval_losses: list[tuple[int, float]] = field(default_factory=list)  # (step, held-out loss)
    num_steps: int = 0
    num_processes: int = 1
    settings: dict = field(default_factory=dict)
    skipped_steps: list[int] = field(default_factory=list)          # fp16 overflow: the update was not applied

    def to_dict(self) -> dict:
        return {"step": self.step, "tokens_seen": self.tokens_seen, "train_losses": self.train_losses,
                "eval_losses": [list(e) for e in self.eval_losses], "num_steps": self.num_steps,
                "num_processes": self.num_processes, "settings": self.settings, "skipped_steps": self.skipped_steps}

    @classmethod
    def from_dict(cls, data: dict) -> "TrainState":
        return cls(step=data["step"], tokens_seen=data["tokens_seen"], train_losses=list(data["train_losses"]),
                   eval_losses=[(int(s), float(v)) for s, v in data["eval_losses"]], num_steps=data["num_steps"],
                   num_processes=data["num_processes"], settings=data["settings"],
                   skipped_steps=list(data.get("skipped_steps", [])))


@dataclass
class TrainResult:
    """The trained model (still wrapped by peft for LoRA; unwrapped from accelerate) and the run's record."""

    model: nn.Module
    state: TrainState
    tokens_per_second: float
    warmup_steps: int
    resumed_from: int | None = None
    prepared_model: nn.Module | None = None   # as accelerate wrapped it (DDP/FSDP/DeepSpeed), for a full state dict


class _OrderedBlocks(torch.utils.data.Dataset):
    """Token blocks in a fixed order (indices into ``blocks``); each item says which block it is, so that a cached
    teacher's logits for that block can be looked up."""

    def __init__(self, blocks: torch.Tensor, order: torch.Tensor):
        self.blocks, self.order = blocks, order

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        block = self.order[index]
        return {"input_ids": self.blocks[block], "block_index": block}


def data_order(num_blocks: int, count: int, seed: int) -> torch.Tensor:
    """``count`` block indices: epoch e is a permutation of all blocks seeded with ``seed + e``."""
    epochs = math.ceil(count / num_blocks)
    perms = [torch.randperm(num_blocks, generator=torch.Generator().manual_seed(seed + e)) for e in range(epochs)]
    return torch.cat(perms)[:count]


def check_launch_settings(env: Mapping[str, str], grad_accum: int, max_grad_norm: float,
                          deepspeed_file: Mapping | None = None) -> None:
    """Refuse a launch configuration that sets gradient accumulation or clipping differently from the CLI.

    ``--grad-accum`` and ``--max-grad-norm`` are the one source of both (they shape the data order and the token
    budget); an accelerate config (``deepspeed_config.gradient_accumulation_steps``/``gradient_clipping``, which
    ``accelerate launch`` passes on as ACCELERATE_GRADIENT_ACCUMULATION_STEPS/ACCELERATE_GRADIENT_CLIPPING) or a
    DeepSpeed JSON file may say ``auto`` or the same value; anything else would be silently overridden one way or
    the other, so it is an error.

    Args:
        env: the process environment (what ``accelerate launch`` set).
        grad_accum, max_grad_norm: the run's settings (``max_grad_norm`` 0: no clipping).
        deepspeed_file: the JSON of ``ACCELERATE_DEEPSPEED_CONFIG_FILE``, when one is used.
    """
    sources = [("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", env.get("ACCELERATE_GRADIENT_ACCUMULATION_STEPS"),
                "--grad-accum", grad_accum),
               ("ACCELERATE_GRADIENT_CLIPPING", env.get("ACCELERATE_GRADIENT_CLIPPING"),
                "--max-grad-norm", max_grad_norm)]
    if deepspeed_file is not None:
        sources += [("gradient_accumulation_steps in the DeepSpeed config file",
                     deepspeed_file.get("gradient_accumulation_steps"), "--grad-accum", grad_accum),
                    ("gradient_clipping in the DeepSpeed config file", deepspeed_file.get("gradient_clipping"),
                     "--max-grad-norm", max_grad_norm)]
    for where, value, option, ours in sources:
        if value is None or str(value).strip().lower() in ("auto", "none", ""):
            continue
        try:
            same = float(value) == float(ours)
        except ValueError:
            raise DepthpruneError(f"{where} is {value!r}, not a number; set it to auto (depthprune takes it from "
                                  f"{option})") from None
        if not same:
            raise DepthpruneError(f"{where} is {value} but {option} is {ours}; set it to auto in the accelerate "
                                  f"config (as examples/accelerate/deepspeed.yaml does) or pass {option} {value}")


def deepspeed_plugin(config: HealConfig):
    """The DeepSpeed settings of this run: accumulation and clipping from the CLI, the rest from the launch config."""
    from accelerate.utils import DeepSpeedPlugin

    plugin = DeepSpeedPlugin(gradient_accumulation_steps=config.grad_accum,
                             gradient_clipping=float(config.max_grad_norm))
    if not config.max_grad_norm:
        # no clipping is DeepSpeed's own default, with the key absent; accelerate 1.16 writes 0.0 where 1.15 left the
        # key out, so the config is the same whichever accelerate is installed
        plugin.deepspeed_config.pop("gradient_clipping", None)
    return plugin


def make_accelerator(config: HealConfig, cpu: bool = False, mixed_precision: str | None = None):
    """The Accelerator of this process; refuses a launch whose processes did not join one group, and one whose
    config sets gradient accumulation or clipping differently from the CLI."""
    from accelerate import Accelerator
    from accelerate.utils import GradientAccumulationPlugin

    deepspeed_file = None
    if os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "none") != "none":
        try:
            deepspeed_file = json.loads(Path(os.environ["ACCELERATE_DEEPSPEED_CONFIG_FILE"]).read_text())
        except (OSError, ValueError):
            deepspeed_file = None          # accelerate reports an unreadable file itself
    check_launch_settings(os.environ, config.grad_accum, config.max_grad_norm, deepspeed_file)
    # An explicit plugin: accelerate would otherwise read ACCELERATE_GRADIENT_ACCUMULATION_STEPS and fail on "auto"
    extra = {}
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        extra["deepspeed_plugin"] = deepspeed_plugin(config)
    if mixed_precision == "auto":
        mixed_precision = auto_mixed_precision(cpu)
    accelerator = Accelerator(gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=config.grad_accum),
                              cpu=cpu, mixed_precision=mixed_precision, **extra)
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and accelerator.num_processes != launched:
        # e.g. `accelerate launch --multi_gpu` on a machine without GPUs: every process would train alone
        # and all of them would write the same output
        raise DepthpruneError(f"{launched} processes were launched but accelerate joined {accelerator.num_processes}; "
                              "without GPUs launch with `torchrun --nproc_per_node N -m depthprune heal ... --cpu`")
    return accelerator


def cpu_has_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX-BF16 in /proc/cpuinfo's flags)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def auto_mixed_precision(cpu: bool = False) -> str:
    """``--mixed-precision auto``: bf16 autocast where the hardware has bf16 arithmetic (a CUDA GPU that supports
    it, or a CPU with AVX512-BF16/AMX), else none. The master weights stay in their own dtype (float32)."""
    if torch.cuda.is_available() and not cpu:
        return "bf16" if torch.cuda.is_bf16_supported() else "no"
    return "bf16" if cpu_has_bf16() else "no"


IGNORE_INDEX = -100     # transformers' label for "no target here"


def lm_loss(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy averaged over positions. logits ``(batch, seq, vocab)``, input_ids ``(batch, seq)``.

    As transformers' own causal-LM loss: the labels are shifted (the last position predicts nothing), not the
    logits, so the logits are never copied (a slice ``logits[:, :-1]`` would copy batch x seq x vocab floats).
    """
    labels = F.pad(input_ids[:, 1:], (0, 1), value=IGNORE_INDEX)        # (batch, seq)
    return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX)


def training_loss(model, batch: Mapping[str, torch.Tensor], config: HealConfig, teacher=None,
                  teacher_cache: TeacherCache | None = None, accelerator=None) -> torch.Tensor:
    """The loss this method minimises on one micro-batch: ``input_ids`` ``(batch, seq)`` and ``block_index``
    ``(batch,)`` (which training blocks they are, for the cached teacher)."""
    input_ids = batch["input_ids"]
    logits = model(input_ids=input_ids).logits                  # (batch, seq, vocab)
    if teacher is None and teacher_cache is None:
        return lm_loss(logits, input_ids)
    # positions 0..T-2 predict tokens 1..T-1: the same positions the LM loss scores
    student = logits[:, :-1]                                    # a view: (batch, seq - 1, vocab)
    if teacher_cache is not None:
        values, indices = teacher_cache.lookup(batch["block_index"])     # (batch, seq - 1, k) each
        distill = topk_kd_loss(student, values.to(logits.device), indices.to(logits.device), config.temperature,
                               config.top_k_norm)
    else:
        with torch.no_grad(), (accelerator.autocast() if accelerator is not None else nullcontext()):
            teacher_logits = teacher(input_ids=input_ids).logits[:, :-1]
        if config.top_k:
            top = teacher_logits.float().topk(config.top_k, dim=-1)
            # rounded as the cache stores them, so the on-the-fly and the cached teacher give one loss
            distill = topk_kd_loss(student, top.values.to(torch.float16), top.indices, config.temperature,
                                   config.top_k_norm)
        else:
            distill = kd_loss(student, teacher_logits, config.temperature)
    if config.lm_loss_weight == 0.0:
        return distill
    return (1 - config.lm_loss_weight) * distill + config.lm_loss_weight * lm_loss(logits, input_ids)


@torch.no_grad()
def validation_loss(model, loader, accelerator) -> float:
    """Mean next-token loss over the held-out blocks (all processes together)."""
    was_training = model.training
    model.eval()
    losses = []
    for batch in loader:
        logits = model(input_ids=batch).logits
        per_block = F.cross_entropy(logits[:, :-1].transpose(1, 2).float(), batch[:, 1:], reduction="none").mean(1)
        losses.append(accelerator.gather_for_metrics(per_block))
    model.train(was_training)
    return torch.cat(losses).mean().item() if losses else float("nan")


def is_own_checkpoint(path: Path) -> bool:
    """Whether ``path`` is a finished checkpoint depthprune wrote: ``step-NNNNNNNN`` holding our state file."""
    if not (_CHECKPOINT_NAME.fullmatch(path.name) and path.is_dir() and (path / STATE_FILE).is_file()):
        return False
    try:
        state = json.loads((path / STATE_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(state, dict) and {"step", "tokens_seen", "train_losses", "settings"} <= state.keys()


def own_checkpoints(checkpoint_dir: str | Path) -> list[Path]:
    """The finished checkpoints depthprune wrote in ``checkpoint_dir``, oldest first."""
    folder = Path(checkpoint_dir)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if is_own_checkpoint(p))


def latest_checkpoint(checkpoint_dir: str | Path) -> Path | None:
    found = own_checkpoints(checkpoint_dir)
    return found[-1] if found else None


def remove_own_checkpoints(checkpoint_dir: str | Path) -> None:
    """Delete the checkpoints depthprune wrote (finished ones and ones interrupted while being written) and then the
    folder if nothing else is left in it; anything else in the folder is the user's and stays."""
    folder = Path(checkpoint_dir)
    if not folder.is_dir():
        return
    for path in own_checkpoints(folder):
        shutil.rmtree(path)
    for path in folder.iterdir():
        if _PARTIAL_CHECKPOINT_NAME.fullmatch(path.name) and path.is_dir():
            shutil.rmtree(path)
    try:
        folder.rmdir()             # only succeeds when empty
    except OSError:
        pass


def blocks_fingerprint(blocks: torch.Tensor | None) -> str | None:
    """A digest of token blocks (their shape and ids): any change of data, samples, seq-len, seed or split shows."""
    if blocks is None:
        return None
    ids = blocks.detach().to("cpu", torch.int64).contiguous()
    digest = hashlib.sha256(str(tuple(ids.shape)).encode())
    digest.update(ids.numpy().data)
    return digest.hexdigest()[:32]


def _settings(config: HealConfig) -> dict:
    data = config.to_dict()
    return {key: data[key] for key in RESUME_KEYS + ("lr",)}


def resume_differences(saved: Mapping, current: Mapping) -> list[str]:
    """``name (saved -> current)`` for every setting that must match on --resume but does not (``lr`` may change)."""
    changed = []
    for key in sorted(set(saved) | set(current)):
        if key == "lr":
            continue
        before, after = saved.get(key, "not recorded"), current.get(key, "not recorded")
        if _comparable(before) != _comparable(after):
            changed.append(f"{key} ({before} -> {after})" if "fingerprint" not in key else f"{key} (the token blocks "
                                                                                           "differ)")
    return changed


def _comparable(value):
    return [_comparable(v) for v in value] if isinstance(value, (list, tuple)) else value


def _save_checkpoint(accelerator, checkpoint_dir: Path, state: TrainState) -> Path:
    """Save the full training state to ``step-NNNNNNNN`` (written aside, then renamed) and drop older ones."""
    final = checkpoint_dir / f"{CHECKPOINT_PREFIX}{state.step:08d}"
    tmp = checkpoint_dir / f".{final.name}.tmp"
    if accelerator.is_main_process and final.exists() and not is_own_checkpoint(final):
        raise DepthpruneError(f"{final} exists and was not written by depthprune; move it or choose another "
                              "--checkpoint-dir")
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=False)   # tied embeddings share storage
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / STATE_FILE).write_text(json.dumps(state.to_dict()))
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        # keep two: if the next steps diverge, the newest may hold the weights that diverged (see _stop_diverged)
        for older in own_checkpoints(checkpoint_dir)[:-2]:
            shutil.rmtree(older, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def divergence_problem(loss: float, grad_norm: float | None, recent_losses: Sequence[float],
                       max_loss_ratio: float, loss_scaling: bool = False) -> str | None:
    """Why this optimizer step must not be applied, or None. Scale-free: it compares the loss with the running median
    of the recent losses, so an LM loss near 3 and a distillation KL near 0.05 are judged alike.

    A step diverged when its loss is not finite; when its gradient norm is not finite (except under an fp16 loss
    scaler, which skips such a step itself and lowers its scale); or when its loss jumps above ``max_loss_ratio``
    times the median of the recent losses AND lies far outside their spread (more than ``DIVERGENCE_SPREAD`` robust
    standard deviations above the median), so that a noisy batch of a noisy loss is not a divergence.

    Args:
        loss: this step's loss (averaged over processes and micro-batches).
        grad_norm: its gradient norm before clipping (None when not measured).
        recent_losses: the losses of the steps before, oldest first (only the last ``DIVERGENCE_WINDOW`` count;
            the jump test needs ``DIVERGENCE_MIN_HISTORY`` of them).
        max_loss_ratio: how many times the running median a jump must exceed.
        loss_scaling: an fp16 loss scaler is active.
    """
    norm = float(grad_norm) if grad_norm is not None else 0.0
    if not math.isfinite(loss):
        return f"the loss became {loss} (gradient norm {norm})"
    if not math.isfinite(norm) and not loss_scaling:
        return f"the gradient norm became {norm} (loss {loss:.4g})"
    window = [x for x in recent_losses[-DIVERGENCE_WINDOW:] if math.isfinite(x)]
    if len(window) < DIVERGENCE_MIN_HISTORY:
        return None
    median = statistics.median(window)
    spread = 1.4826 * statistics.median(abs(x - median) for x in window)   # a standard deviation, robustly
    if loss > max_loss_ratio * median and loss - median > DIVERGENCE_SPREAD * spread:
        return (f"the loss jumped to {loss:.4g} (more than {max_loss_ratio}x the running median {median:.4g} of the "
                f"last {len(window)} steps)")
    return None


def loss_scaler_active(accelerator) -> bool:
    """Whether an fp16 loss scaler may skip optimizer steps (accelerate's GradScaler, or DeepSpeed's own)."""
    from accelerate.utils import DistributedType

    if getattr(accelerator, "scaler", None) is not None:
        return True
    return accelerator.distributed_type == DistributedType.DEEPSPEED and accelerator.mixed_precision == "fp16"


def train(model: nn.Module, train_blocks: torch.Tensor, eval_blocks: torch.Tensor | None, config: HealConfig,
          accelerator=None, checkpoint_dir: str | Path | None = None, resume: bool = False, teacher=None,
          callback: Callable[[int, float], None] | None = None, progress: bool = True,
          run_identity: Mapping | None = None, teacher_cache: TeacherCache | None = None) -> TrainResult:
    """Train ``model`` (its trainable parameters) on token blocks with ``config``'s method and schedule.

    Args:
        model: the model to heal, already wrapped for its method (peft for LoRA; the parameters it trains left
            trainable for full/distill).
        train_blocks: token ids ``(num_blocks, seq_len)``, cycled through in seeded epochs.
        eval_blocks: held-out token ids ``(n, seq_len)`` scored at step 0, every ``eval_every`` steps and at the end.
        config: the recipe; ``config.resolve_steps`` gives the number of optimizer steps.
        accelerator: an ``accelerate.Accelerator`` (one is made if None).
        checkpoint_dir: where ``save_every`` checkpoints go (None: no checkpoints).
        resume: continue from the latest checkpoint in ``checkpoint_dir``.
        teacher: for distillation on the fly, the frozen teacher model.
        callback: called as ``callback(step, loss)`` after every optimizer step on every process.
        progress: show a progress bar (main process only).
        run_identity: more settings that must not change on --resume (``heal`` passes the data spec); the
            recipe's own (:data:`RESUME_KEYS`), the step budget and digests of the token blocks are always checked.
        teacher_cache: for distillation from a cached teacher, its top-k logits over ``train_blocks``.

    Returns:
        A :class:`TrainResult`. Raises :class:`LossDiverged` when a step diverges (see :func:`divergence_problem`);
        the weights are then not saved, the checkpoints stay. Under an fp16 loss scaler an overflowing step is
        skipped (no update, no schedule step), counted in ``state.skipped_steps``, and the run goes on.
    """
    if (config.method == "distill") != (teacher is not None or teacher_cache is not None):
        raise DepthpruneError("distillation needs a teacher and only distillation uses one")
    if train_blocks.dim() != 2 or train_blocks.shape[1] != config.seq_len:
        raise DepthpruneError(f"training blocks have shape {tuple(train_blocks.shape)}, expected (n, {config.seq_len})")
    accelerator = accelerator or make_accelerator(config)
    num_steps = config.resolve_steps(accelerator.num_processes)
    warmup = effective_warmup(config, num_steps)
    if warmup < config.warmup_steps:
        logger.warning("warm-up shortened from %d to %d steps (a tenth of this %d-step run)", config.warmup_steps,
                       warmup, num_steps)
    train_loader, eval_loader = _loaders(train_blocks, eval_blocks, config, num_steps * accelerator.num_processes)
    settings = {**_settings(config), **dict(run_identity or {}), "num_steps": num_steps, "warmup_steps_used": warmup,
                "data_fingerprint": blocks_fingerprint(train_blocks), "held_out_fingerprint":
                blocks_fingerprint(eval_blocks if eval_blocks is not None and len(eval_blocks) else None)}
    state = TrainState(num_steps=num_steps, num_processes=accelerator.num_processes, settings=settings)
    checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    # checked before anything is built: a changed budget or data order is refused, not obeyed
    last, saved = _checkpoint_to_resume(checkpoint_dir, settings, accelerator.num_processes) if resume else (None, None)

    optimizer = build_optimizer(model, config, fused=not loss_scaler_active(accelerator))
    scheduler = build_scheduler(optimizer, config, num_steps, warmup)
    # The scheduler stays outside prepare(): accelerate would step it once per process, but our schedule counts
    # optimizer steps, which do not depend on the number of processes.
    if eval_loader is not None:
        model, optimizer, train_loader, eval_loader = accelerator.prepare(model, optimizer, train_loader, eval_loader)
    else:
        model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    accelerator.register_for_checkpointing(scheduler)
    if teacher is not None:
        teacher.to(accelerator.device)
    resumed_from = None
    if saved is not None:
        state, resumed_from = _restore(accelerator, last, saved, config, optimizer, scheduler), saved.step
        train_loader = accelerator.skip_first_batches(train_loader, state.step * config.grad_accum)
    if checkpoint_dir is not None and accelerator.is_main_process:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
    if eval_loader is not None and not state.eval_losses:
        state.eval_losses.append((state.step, validation_loss(model, eval_loader, accelerator)))

    run = _Run(model=model, optimizer=optimizer, scheduler=scheduler, accelerator=accelerator, config=config,
               state=state, checkpoint_dir=checkpoint_dir, teacher=teacher, teacher_cache=teacher_cache,
               eval_loader=eval_loader, callback=callback, progress=progress)
    speed = run.steps(train_loader)
    return TrainResult(model=accelerator.unwrap_model(model), state=state, tokens_per_second=speed,
                       warmup_steps=warmup, resumed_from=resumed_from, prepared_model=model)


def _loaders(train_blocks: torch.Tensor, eval_blocks: torch.Tensor | None, config: HealConfig, step_batches: int):
    """The training loader (the fixed data order of the whole run) and the held-out loader (None without blocks).

    ``step_batches``: optimizer steps times processes (each step takes ``grad_accum`` micro-batches per process).
    """
    order = data_order(len(train_blocks), step_batches * config.grad_accum * config.batch_size, config.seed)
    # Loaders get their own generators: each new iterator draws a seed, and drawing it from the global RNG would
    # shift dropout masks after a resume (which starts a new iterator mid-run).
    train_loader = torch.utils.data.DataLoader(_OrderedBlocks(train_blocks, order), batch_size=config.batch_size,
                                               shuffle=False, drop_last=True,
                                               generator=torch.Generator().manual_seed(config.seed))
    eval_loader = None
    if eval_blocks is not None and len(eval_blocks):
        eval_loader = torch.utils.data.DataLoader(eval_blocks, batch_size=config.batch_size, shuffle=False,
                                                  generator=torch.Generator().manual_seed(config.seed))
    return train_loader, eval_loader


def _checkpoint_to_resume(checkpoint_dir: Path | None, settings: dict, num_processes: int):
    """The latest checkpoint and its saved state; refuses a missing one and any setting that differs."""
    last = latest_checkpoint(checkpoint_dir) if checkpoint_dir is not None else None
    if last is None:
        raise DepthpruneError(f"--resume: no checkpoint in {checkpoint_dir}; run without --resume to start afresh")
    saved = TrainState.from_dict(json.loads((last / STATE_FILE).read_text()))
    changed = resume_differences(saved.settings, settings)
    if saved.num_processes != num_processes:
        changed.append(f"number of processes ({saved.num_processes} -> {num_processes})")
    if changed:
        raise DepthpruneError(f"--resume: {', '.join(changed)} differ from the interrupted run in {last}; resume "
                              "with the same options (only --lr may change), or start afresh without --resume")
    return last, saved


def _restore(accelerator, last: Path, saved: TrainState, config: HealConfig, optimizer, scheduler) -> TrainState:
    """Load the full training state of checkpoint ``last``; a changed --lr rescales the schedule from here on."""
    accelerator.load_state(str(last))
    if saved.settings.get("lr") != config.lr:
        logger.warning("resuming with lr %g instead of %g", config.lr, saved.settings.get("lr"))
        scheduler.base_lrs = [config.lr] * len(scheduler.base_lrs)
        for group, schedule in zip(optimizer.param_groups, scheduler.lr_lambdas):
            group["lr"] = config.lr * schedule(scheduler.last_epoch)
        saved.settings["lr"] = config.lr
    logger.info("resumed from %s (step %d)", last, saved.step)
    return saved


@dataclass
class _Run:
    """The optimizer steps of one training session, and what happens after each (record, evaluate, save)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    accelerator: object
    config: HealConfig
    state: TrainState
    checkpoint_dir: Path | None
    teacher: nn.Module | None
    teacher_cache: TeacherCache | None
    eval_loader: object
    callback: Callable[[int, float], None] | None
    progress: bool

    def steps(self, train_loader) -> float:
        """Train until the step budget is spent; returns training tokens/s (evaluation and saving excluded)."""
        from tqdm.auto import tqdm

        config, state, accelerator = self.config, self.state, self.accelerator
        # clipping and its norm over what trains: a LoRA model's frozen base is no work
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.loss_scaling = loss_scaler_active(accelerator)
        self.skipped_in_a_row = 0
        self.bar = tqdm(total=state.num_steps, initial=state.step, desc=f"healing ({config.method})", unit="step",
                        disable=not (self.progress and accelerator.is_main_process))
        self.model.train()
        self.start, self.session_steps, self.not_training = time.perf_counter(), 0, 0.0
        accumulated = torch.zeros((), device=accelerator.device)
        for batch in train_loader:
            if state.step >= state.num_steps:
                break
            with accelerator.accumulate(self.model):
                loss = training_loss(self.model, batch, config, self.teacher, self.teacher_cache, accelerator)
                # Under DeepSpeed this also applies the optimizer step at the accumulation boundary (docs/healing.md)
                accelerator.backward(loss)
                accumulated += loss.detach().float()
                if accelerator.sync_gradients:
                    step_loss, grad_norm = self._check_step(accumulated)
                self.optimizer.step()
                self.optimizer.zero_grad()
            if accelerator.sync_gradients:
                self._after_step(step_loss, grad_norm)
                accumulated.zero_()
        self.bar.close()
        seconds = time.perf_counter() - self.start - self.not_training
        accelerator.wait_for_everyone()
        tokens = self.session_steps * config.tokens_per_step(accelerator.num_processes)
        return tokens / seconds if seconds > 0 else float("nan")

    def _check_step(self, accumulated: torch.Tensor):
        """This step's loss (over processes and micro-batches) and gradient norm; stops a diverged step before
        it is applied."""
        config, accelerator = self.config, self.accelerator
        step_loss = accelerator.reduce(accumulated / config.grad_accum, reduction="mean").item()
        # max_grad_norm 0: no clipping, but the norm is still measured (inf clips nothing)
        grad_norm = accelerator.clip_grad_norm_(self.trainable, config.max_grad_norm or math.inf)
        problem = divergence_problem(step_loss, grad_norm, self.state.train_losses, config.max_loss_ratio,
                                     self.loss_scaling)
        if problem is not None:
            _stop_diverged(problem, self.state, self.checkpoint_dir, accelerator)
        return step_loss, grad_norm

    def _after_step(self, step_loss: float, grad_norm) -> None:
        state, config, accelerator = self.state, self.config, self.accelerator
        if accelerator.optimizer_step_was_skipped:
            # the loss scaler found inf/nan gradients and lowered its scale; the weights are untouched, so the
            # schedule does not advance either (as accelerate intends); the data is consumed as usual
            state.skipped_steps.append(state.step + 1)
            self.skipped_in_a_row += 1
            if self.skipped_in_a_row > MAX_CONSECUTIVE_SKIPPED:
                _stop_diverged(f"the fp16 loss scaler skipped {self.skipped_in_a_row} steps in a row (the gradients "
                               "overflow at every scale); use --mixed-precision bf16 or lower --lr", state,
                               self.checkpoint_dir, accelerator)
        else:
            self.skipped_in_a_row = 0
            self.scheduler.step()
            if grad_norm is not None and not math.isfinite(float(grad_norm)):
                _stop_diverged(f"the gradient norm became {float(grad_norm)} and the step was applied", state,
                               self.checkpoint_dir, accelerator)
        tokens_per_step = config.tokens_per_step(accelerator.num_processes)
        state.step += 1
        self.session_steps += 1
        state.tokens_seen += tokens_per_step
        state.train_losses.append(step_loss)
        seconds = time.perf_counter() - self.start - self.not_training
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{step_loss:.4f}", tok_s=f"{self.session_steps * tokens_per_step / seconds:,.0f}")
        paused = time.perf_counter()
        if self.eval_loader is not None and (state.step % config.eval_every == 0 or state.step == state.num_steps):
            state.eval_losses.append((state.step, validation_loss(self.model, self.eval_loader, accelerator)))
            if self.progress and accelerator.is_main_process:
                self.bar.write(f"step {state.step}: held-out loss {state.eval_losses[-1][1]:.4f}")
        if self.checkpoint_dir is not None and state.step % config.save_every == 0 and state.step < state.num_steps:
            _save_checkpoint(accelerator, self.checkpoint_dir, state)
        self.not_training += time.perf_counter() - paused
        if self.callback is not None:
            self.callback(state.step, step_loss)


def _stop_diverged(problem: str, state: TrainState, checkpoint_dir: Path | None, accelerator) -> None:
    """Stop the run (every process sees the same reduced values, so all stop together), keeping good checkpoints."""
    # A checkpoint saved at the step just completed holds the weights that produced this loss: not good.
    if checkpoint_dir is not None and accelerator.is_main_process:
        suspect = checkpoint_dir / f"{CHECKPOINT_PREFIX}{state.step:08d}"
        if is_own_checkpoint(suspect):
            shutil.rmtree(suspect)
    accelerator.wait_for_everyone()
    last = latest_checkpoint(checkpoint_dir) if checkpoint_dir is not None else None
    kept = f"the last good checkpoint {last} is kept; lower --lr and pass --resume" if last else \
        "no good checkpoint was saved yet; lower --lr and run again"
    raise LossDiverged(f"stopped at step {state.step + 1}: {problem}; {kept}")
