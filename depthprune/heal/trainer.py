"""The healing loop, on accelerate: one code path from a laptop CPU to DDP, FSDP or DeepSpeed on many GPUs.

``accelerate launch -m depthprune heal ...`` runs this same loop in every process; accelerate shards the batches,
averages gradients, and saves/restores the full training state (weights, optimizer, schedule, RNG) for --resume.

Data order is fixed up front: epochs of seeded permutations of the token blocks, cut into micro-batches that
accelerate deals out to the processes in turn. Step k of the run therefore sees the same tokens however often the
run was interrupted, and a 2-process run with batch b sees what a 1-process run with batch 2b sees.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DepthpruneError
from .config import HealConfig
from .distill import kd_loss
from .full import build_optimizer, build_scheduler, effective_warmup

logger = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
CHECKPOINT_PREFIX = "step-"
# Settings that must not change between an interrupted run and its --resume (they decide data order and schedule).
# The learning rate may change (the way out of a diverged run is to lower it and resume).
RESUME_KEYS = ("method", "rank", "alpha", "targets", "betas", "weight_decay", "batch_size", "grad_accum",
               "seq_len", "seed", "schedule", "temperature", "lm_loss_weight")


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

    def to_dict(self) -> dict:
        return {"step": self.step, "tokens_seen": self.tokens_seen, "train_losses": self.train_losses,
                "eval_losses": [list(e) for e in self.eval_losses], "num_steps": self.num_steps,
                "num_processes": self.num_processes, "settings": self.settings}

    @classmethod
    def from_dict(cls, data: dict) -> "TrainState":
        return cls(step=data["step"], tokens_seen=data["tokens_seen"], train_losses=list(data["train_losses"]),
                   eval_losses=[(int(s), float(v)) for s, v in data["eval_losses"]], num_steps=data["num_steps"],
                   num_processes=data["num_processes"], settings=data["settings"])


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
    """Token blocks in a fixed order (indices into ``blocks``)."""

    def __init__(self, blocks: torch.Tensor, order: torch.Tensor):
        self.blocks, self.order = blocks, order

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.blocks[self.order[index]]


def data_order(num_blocks: int, count: int, seed: int) -> torch.Tensor:
    """``count`` block indices: epoch e is a permutation of all blocks seeded with ``seed + e``."""
    epochs = math.ceil(count / num_blocks)
    perms = [torch.randperm(num_blocks, generator=torch.Generator().manual_seed(seed + e)) for e in range(epochs)]
    return torch.cat(perms)[:count]


def make_accelerator(config: HealConfig, cpu: bool = False, mixed_precision: str | None = None):
    """The Accelerator of this process; refuses a launch whose processes did not join one group."""
    import os

    from accelerate import Accelerator

    accelerator = Accelerator(gradient_accumulation_steps=config.grad_accum, cpu=cpu, mixed_precision=mixed_precision)
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and accelerator.num_processes != launched:
        # e.g. `accelerate launch --multi_gpu` on a machine without GPUs: every process would train alone
        # and all of them would write the same output
        raise DepthpruneError(f"{launched} processes were launched but accelerate joined {accelerator.num_processes}; "
                              "without GPUs launch with `torchrun --nproc_per_node N -m depthprune heal ... --cpu`")
    return accelerator


def lm_loss(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy averaged over positions. logits ``(batch, seq, vocab)``, input_ids ``(batch, seq)``."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), input_ids[:, 1:].flatten())


def training_loss(model, batch: torch.Tensor, config: HealConfig, teacher=None, accelerator=None) -> torch.Tensor:
    """The loss this method minimises on one micro-batch ``(batch, seq)`` of token ids."""
    logits = model(input_ids=batch).logits                  # (batch, seq, vocab)
    if teacher is None:
        return lm_loss(logits, batch)
    with torch.no_grad(), (accelerator.autocast() if accelerator is not None else _nullcontext()):
        teacher_logits = teacher(input_ids=batch).logits
    # positions 0..T-2 predict tokens 1..T-1: the same positions the LM loss scores
    distill = kd_loss(logits[:, :-1], teacher_logits[:, :-1], config.temperature)
    if config.lm_loss_weight == 0.0:
        return distill
    return (1 - config.lm_loss_weight) * distill + config.lm_loss_weight * lm_loss(logits, batch)


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


@torch.no_grad()
def evaluate(model, loader, accelerator) -> float:
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


def latest_checkpoint(checkpoint_dir: Path) -> Path | None:
    found = sorted(p for p in Path(checkpoint_dir).glob(f"{CHECKPOINT_PREFIX}*") if (p / STATE_FILE).is_file())
    return found[-1] if found else None


def _settings(config: HealConfig) -> dict:
    data = config.to_dict()
    return {key: data[key] for key in RESUME_KEYS + ("lr",)}


def _save_checkpoint(accelerator, checkpoint_dir: Path, state: TrainState) -> Path:
    """Save the full training state to ``step-NNNNNNNN`` (written aside, then renamed) and drop older ones."""
    final = checkpoint_dir / f"{CHECKPOINT_PREFIX}{state.step:08d}"
    tmp = checkpoint_dir / f".{final.name}.tmp"
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
        # keep two: if the next steps diverge, the newest may hold the weights that diverged (see _check_divergence)
        for older in sorted(checkpoint_dir.glob(f"{CHECKPOINT_PREFIX}*"))[:-2]:
            shutil.rmtree(older, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def train(model: nn.Module, train_blocks: torch.Tensor, eval_blocks: torch.Tensor | None, config: HealConfig,
          accelerator=None, checkpoint_dir: str | Path | None = None, resume: bool = False, teacher=None,
          callback: Callable[[int, float], None] | None = None, progress: bool = True) -> TrainResult:
    """Train ``model`` (its trainable parameters) on token blocks with ``config``'s method and schedule.

    Args:
        model: the model to heal, already wrapped for its method (peft for LoRA; all parameters trainable for
            full/distill).
        train_blocks: token ids ``(num_blocks, seq_len)``, cycled through in seeded epochs.
        eval_blocks: held-out token ids ``(n, seq_len)`` scored at step 0, every ``eval_every`` steps and at the end.
        config: the recipe; ``config.resolve_steps`` gives the number of optimizer steps.
        accelerator: an ``accelerate.Accelerator`` (one is made if None).
        checkpoint_dir: where ``save_every`` checkpoints go (None: no checkpoints).
        resume: continue from the latest checkpoint in ``checkpoint_dir``.
        teacher: for distillation, the frozen teacher model.
        callback: called as ``callback(step, loss)`` after every optimizer step on every process.
        progress: show a progress bar (main process only).

    Returns:
        A :class:`TrainResult`. Raises :class:`LossDiverged` when the loss is NaN/inf or exceeds
        ``max_loss_ratio`` times the lowest loss seen; the weights are then not saved, the checkpoints stay.
    """
    from tqdm.auto import tqdm

    if (config.method == "distill") != (teacher is not None):
        raise DepthpruneError("distillation needs a teacher and only distillation uses one")
    if train_blocks.dim() != 2 or train_blocks.shape[1] != config.seq_len:
        raise DepthpruneError(f"training blocks have shape {tuple(train_blocks.shape)}, expected (n, {config.seq_len})")
    accelerator = accelerator or make_accelerator(config)
    num_processes = accelerator.num_processes
    num_steps = config.resolve_steps(num_processes)
    warmup = effective_warmup(config, num_steps)
    if warmup < config.warmup_steps:
        logger.warning("warm-up shortened from %d to %d steps (a tenth of this %d-step run)", config.warmup_steps,
                       warmup, num_steps)
    micro_batches = num_steps * config.grad_accum * num_processes
    order = data_order(len(train_blocks), micro_batches * config.batch_size, config.seed)
    # Loaders get their own generators: each new iterator draws a seed, and drawing it from the global RNG would
    # shift dropout masks after a resume (which starts a new iterator mid-run).
    train_loader = torch.utils.data.DataLoader(_OrderedBlocks(train_blocks, order), batch_size=config.batch_size,
                                               shuffle=False, drop_last=True,
                                               generator=torch.Generator().manual_seed(config.seed))
    eval_loader = None
    if eval_blocks is not None and len(eval_blocks):
        eval_loader = torch.utils.data.DataLoader(eval_blocks, batch_size=config.batch_size, shuffle=False,
                                                  generator=torch.Generator().manual_seed(config.seed))

    optimizer = build_optimizer(model, config)
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

    state = TrainState(num_steps=num_steps, num_processes=num_processes, settings=_settings(config))
    checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    resumed_from = None
    if resume:
        last = latest_checkpoint(checkpoint_dir) if checkpoint_dir is not None else None
        if last is None:
            raise DepthpruneError(f"--resume: no checkpoint in {checkpoint_dir}; run without --resume to start afresh")
        saved = TrainState.from_dict(json.loads((last / STATE_FILE).read_text()))
        changed = [k for k in RESUME_KEYS if saved.settings.get(k) != state.settings[k]]
        if changed or saved.num_processes != num_processes:
            what = ", ".join(changed) or f"number of processes ({saved.num_processes} -> {num_processes})"
            raise DepthpruneError(f"--resume: {what} differ from the interrupted run in {last}; use the same settings "
                                  "or start afresh without --resume")
        accelerator.load_state(str(last))
        if saved.settings.get("lr") != config.lr:
            logger.warning("resuming with lr %g instead of %g", config.lr, saved.settings.get("lr"))
            scheduler.base_lrs = [config.lr] * len(scheduler.base_lrs)
            for group, schedule in zip(optimizer.param_groups, scheduler.lr_lambdas):
                group["lr"] = config.lr * schedule(scheduler.last_epoch)
            saved.settings["lr"] = config.lr
        saved.num_steps = num_steps
        state, resumed_from = saved, saved.step
        train_loader = accelerator.skip_first_batches(train_loader, state.step * config.grad_accum)
        logger.info("resumed from %s (step %d)", last, state.step)
    if checkpoint_dir is not None and accelerator.is_main_process:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)

    if eval_loader is not None and not state.eval_losses:
        state.eval_losses.append((state.step, evaluate(model, eval_loader, accelerator)))
    tokens_per_step = config.tokens_per_step(num_processes)
    bar = tqdm(total=num_steps, initial=state.step, desc=f"healing ({config.method})", unit="step",
               disable=not (progress and accelerator.is_main_process))
    model.train()
    start, steps_this_session, not_training = time.perf_counter(), 0, 0.0   # seconds in evaluation/saving
    accumulated = torch.zeros((), device=accelerator.device)
    for batch in train_loader:
        if state.step >= num_steps:
            break
        with accelerator.accumulate(model):
            loss = training_loss(model, batch, config, teacher, accelerator)
            accelerator.backward(loss)
            accumulated += loss.detach().float()
            if accelerator.sync_gradients:
                step_loss = accelerator.reduce(accumulated / config.grad_accum, reduction="mean").item()
                # max_grad_norm 0: no clipping, but the norm is still measured (inf clips nothing)
                grad_norm = accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm or math.inf)
                _check_divergence(step_loss, grad_norm, state, config, checkpoint_dir, accelerator)
            optimizer.step()
            optimizer.zero_grad()
        if not accelerator.sync_gradients:
            continue
        scheduler.step()
        accumulated.zero_()
        state.step += 1
        steps_this_session += 1
        state.tokens_seen += tokens_per_step
        state.train_losses.append(step_loss)
        training_seconds = time.perf_counter() - start - not_training
        bar.update(1)
        bar.set_postfix(loss=f"{step_loss:.4f}",
                        tok_s=f"{steps_this_session * tokens_per_step / training_seconds:,.0f}")
        paused = time.perf_counter()
        if eval_loader is not None and (state.step % config.eval_every == 0 or state.step == num_steps):
            state.eval_losses.append((state.step, evaluate(model, eval_loader, accelerator)))
            if progress and accelerator.is_main_process:
                bar.write(f"step {state.step}: held-out loss {state.eval_losses[-1][1]:.4f}")
        if checkpoint_dir is not None and state.step % config.save_every == 0 and state.step < num_steps:
            _save_checkpoint(accelerator, checkpoint_dir, state)
        not_training += time.perf_counter() - paused
        if callback is not None:
            callback(state.step, step_loss)
    bar.close()
    training_seconds = time.perf_counter() - start - not_training
    accelerator.wait_for_everyone()
    speed = steps_this_session * tokens_per_step / training_seconds if training_seconds > 0 else float("nan")
    return TrainResult(model=accelerator.unwrap_model(model), state=state, tokens_per_second=speed,
                       warmup_steps=warmup, resumed_from=resumed_from, prepared_model=model)


def _check_divergence(step_loss: float, grad_norm, state: TrainState, config: HealConfig,
                      checkpoint_dir: Path | None, accelerator) -> None:
    """Stop before a NaN/inf or exploding step is applied (every process sees the same reduced values)."""
    norm = float(grad_norm) if grad_norm is not None else 0.0
    lowest = min(state.train_losses) if state.train_losses else None
    problem = None
    if not math.isfinite(step_loss) or not math.isfinite(norm):
        problem = f"the loss became {step_loss} (gradient norm {norm})"
    elif lowest is not None and step_loss > config.max_loss_ratio * lowest:
        problem = f"the loss exploded to {step_loss:.4g} (more than {config.max_loss_ratio}x the lowest, {lowest:.4g})"
    if problem is None:
        return
    # A checkpoint saved at the step just completed holds the weights that produced this loss: not good.
    if checkpoint_dir is not None and accelerator.is_main_process:
        suspect = checkpoint_dir / f"{CHECKPOINT_PREFIX}{state.step:08d}"
        if suspect.exists():
            shutil.rmtree(suspect)
    accelerator.wait_for_everyone()
    last = latest_checkpoint(checkpoint_dir) if checkpoint_dir is not None else None
    kept = f"the last good checkpoint {last} is kept; lower --lr and pass --resume" if last else \
        "no good checkpoint was saved yet; lower --lr and run again"
    raise LossDiverged(f"stopped at step {state.step + 1}: {problem}; {kept}")
