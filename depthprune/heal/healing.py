"""``depthprune heal``: train a pruned model back to health and save it as an ordinary checkpoint."""

from __future__ import annotations

import gc
import io
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from ..data import DataSpec, load_texts, tokenize_blocks
from ..errors import DepthpruneError
from ..extras import require
from ..loading import LoadedModel, load_model
from ..metadata import HEALING_KEY, PARENT_HEALING_KEY
from ..saving import check_output_dir, read_metadata, save
from .config import HealConfig, build_config
from .distill import load_teacher, parameter_bytes, teacher_name, teacher_source
from .lora import adapter_state, apply_lora, merge_adapter_into
from .methods import HEALING_METHODS, HealingMethod
from .qlora import load_qlora_base, qlora_source
from .teacher_cache import ensure_cache
from .trainer import (TrainResult, blocks_fingerprint, make_accelerator, own_checkpoints, remove_own_checkpoints,
                      train)

logger = logging.getLogger(__name__)


@dataclass
class HealResult:
    """What ``heal`` did: the healed (merged) model, the run's record, and where it was saved."""

    model: torch.nn.Module
    config: HealConfig
    train: TrainResult
    metadata: dict
    output: Path | None


LOSS_CURVE_FILE = "loss_curve.png"


def default_checkpoint_dir(output: str | Path) -> Path:
    """Checkpoints live beside the output (``OUT.checkpoints``) until the final model is saved."""
    output = Path(output)
    return output.with_name(output.name + ".checkpoints")


def healing_blocks(spec: DataSpec, tokenizer, needed: int, eval_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed causal-LM blocks: ``spec.samples`` (or ``needed`` when 0) for training, then ``eval_samples`` held out.

    Both come from one tokenised stream of the shuffled documents, so held-out blocks never overlap training ones.
    """
    train_count = spec.samples or needed
    texts = load_texts(spec.source, spec.text_field)
    if not texts:
        raise DepthpruneError(f"data {spec.source!r} holds no text")
    blocks = tokenize_blocks(texts, tokenizer, train_count + eval_samples, spec.seq_len, spec.seed,
                             spec.chat_template, spec.source)
    return blocks[:train_count], blocks[train_count:]


def curve_png(result: TrainResult, title: str) -> bytes:
    """The loss curve (training loss per step, held-out loss at its steps) as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    steps = range(1, len(result.state.train_losses) + 1)
    axis.plot(steps, result.state.train_losses, label="training loss", linewidth=1)
    if result.state.eval_losses:
        eval_steps, eval_values = zip(*result.state.eval_losses)
        axis.plot(eval_steps, eval_values, "o-", label="held-out loss")
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("loss (nats/token)")
    axis.set_title(title)
    axis.legend()
    axis.grid(alpha=0.3)
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return buffer.getvalue()


def _write_loss_curve(result: TrainResult, output: Path, title: str) -> None:
    """Add ``loss_curve.png`` to the saved output (written aside, then renamed); a failure costs only the plot."""
    tmp = None
    try:
        png = curve_png(result, title)
        fd, tmp = tempfile.mkstemp(prefix=f".{LOSS_CURVE_FILE}.", dir=output)
        with os.fdopen(fd, "wb") as handle:
            handle.write(png)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, output / LOSS_CURVE_FILE)
        tmp = None
    except Exception as error:    # noqa: BLE001  (the healed model is saved; a plot must not make that a failure)
        logger.warning("the healed model is saved in %s, but its loss curve could not be drawn (%s: %s)", output,
                       type(error).__name__, error)
    finally:
        if tmp is not None:       # also on Ctrl-C: no stray temporary file in the finished output
            Path(tmp).unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def provenance(loaded: LoadedModel, num_layers: int) -> dict:
    """The pruning provenance carried over from the input checkpoint (or that of an unpruned model)."""
    parent = read_metadata(loaded.checkpoint_dir)
    if parent is None:
        return {"base_model": loaded.description, "num_layers_original": num_layers,
                "kept_layers": list(range(num_layers)), "removed_layers": [], "method": "none"}
    carried = {k: v for k, v in parent.items() if k not in ("created", "depthprune_version", "requires", HEALING_KEY)}
    carried["parent_model"] = loaded.description
    if HEALING_KEY in parent:
        carried[PARENT_HEALING_KEY] = parent.get(PARENT_HEALING_KEY, []) + [parent[HEALING_KEY]]
    return carried


def touched_layers(metadata: dict) -> list[int]:
    """The kept layers next to each gap the pruning left, numbered as in the pruned model.

    ``metadata``: the pruned model's provenance (``kept_layers`` and ``num_layers_original``, original numbering).
    A kept layer is touched when the layer before or after it in the original model was removed.
    """
    kept = sorted(metadata.get("kept_layers") or [])
    total = metadata.get("num_layers_original")
    if not kept or total is None or len(kept) == total:
        raise DepthpruneError("--train-layers touched needs a pruned model whose depthprune.json names its kept and "
                              "removed layers; prune it with depthprune first, or use --train-layers all")
    kept_set = set(kept)
    return [position for position, layer in enumerate(kept)
            if (layer > 0 and layer - 1 not in kept_set) or (layer < total - 1 and layer + 1 not in kept_set)]


def heal(model: str | LoadedModel, data: str | DataSpec = "builtin", output: str | Path | None = None,
         method: str | None = None, preset: str | None = None, teacher: str | LoadedModel | None = None,
         config_file: str | None = None, keep_adapter: bool = False, resume: bool = False, force: bool = False,
         checkpoint_dir: str | Path | None = None, dtype="float32", cpu: bool = False,
         mixed_precision: str | None = None, trust_remote_code: bool = False, progress: bool = True,
         plots: bool = True, callback=None, teacher_cache: str | Path | None = None, **settings) -> HealResult:
    """Heal a (pruned) model with LoRA, QLoRA, continued pretraining or distillation; save it merged.

    Args:
        model: anything :func:`depthprune.load_model` accepts (a pruned checkpoint folder, typically).
        data: a data SPEC (see :mod:`depthprune.data`) or a :class:`DataSpec`; ``samples=0`` means "as many
            blocks as the step budget needs".
        output: destination folder (written atomically; refused if it exists unless ``force``).
        method: a registered healing method, ``lora`` | ``qlora`` | ``full`` | ``distill`` (default: the preset's,
            else lora).
        preset: ``gromov-lora``, ``gromov-qlora``, ``shortened-lora``, ``shortened-cpt``, ``layerchop-cpt``,
            ``minitron-kd`` (default: the method's paper recipe).
        teacher: the unpruned model for distillation (default: ``base_model`` in the checkpoint's depthprune.json);
            a LoadedModel already in memory is used as it is.
        config_file: a YAML file of :class:`HealConfig` settings (between the preset and explicit settings).
        keep_adapter: also save the LoRA adapter alone under ``adapter/``.
        resume: continue from the latest checkpoint in ``checkpoint_dir`` (every setting that shapes the data
            order, the schedule or the budget must be the same; the learning rate may change).
        force: replace an existing ``output``, and start afresh over earlier checkpoints of ours in
            ``checkpoint_dir``.
        checkpoint_dir: where ``--save-every`` checkpoints go (default ``OUTPUT.checkpoints``). Once the model is
            saved, the checkpoints depthprune wrote there are removed, and the folder if nothing else is in it;
            other files in it are never touched.
        cpu: train on the CPU even when a GPU is present.
        mixed_precision: ``no``, ``bf16``, ``fp16`` or ``auto`` (bf16 where the GPU or CPU computes in bf16;
            default: accelerate's configuration). The master weights stay float32.
        plots: draw ``loss_curve.png`` (needs matplotlib; drawn after the model is saved).
        callback: called as ``callback(step, loss)`` after every optimizer step (logging, early stopping).
        teacher_cache: with ``top_k`` > 0, the folder holding cached teacher logits (default
            ``$DEPTHPRUNE_CACHE/teacher-topk``), or ``"off"`` to run the teacher on the fly instead.
        settings: any :class:`HealConfig` field (``rank``, ``lr``, ``max_steps``, ``tokens``, ``top_k``, ...).

    Returns:
        A :class:`HealResult`.
    """
    config, spec = _recipe(data, preset, config_file, method, settings)
    if output is None:
        raise DepthpruneError("no --output given; name the folder for the healed model")
    output = Path(output)
    checkpoint_dir = _check_request(config, output, checkpoint_dir, resume, force, keep_adapter, teacher_cache)
    entry = HEALING_METHODS.get(config.method)
    run_method = entry.run_name(config)        # refuses QLoRA without CUDA unless --qlora-fallback
    # Everything optional this run will import, checked before anything is loaded or trained
    needed_packages = ["accelerate", *HEALING_METHODS.get(run_method).packages] + (["matplotlib"] if plots else [])
    require(*needed_packages, purpose="heal" + ("" if not plots else " (with its loss curve; --no-plots skips it)"))

    accelerator = make_accelerator(config, cpu=cpu, mixed_precision=mixed_precision)
    if run_method == "qlora" and _sharded(accelerator):
        raise DepthpruneError("QLoRA under FSDP/DeepSpeed is not supported; launch it data-parallel "
                              "(examples/accelerate/ddp.yaml) or use --method lora")
    if accelerator.is_main_process and not resume and force:
        remove_own_checkpoints(checkpoint_dir)     # ours only: the folder may hold the user's files
    accelerator.wait_for_everyone()
    loaded = _load_source(model, run_method, dtype, trust_remote_code)
    student, num_layers, trained_layers = _student(loaded, run_method, config, accelerator, trust_remote_code)
    recipe_metadata = provenance(loaded, num_layers)

    needed = config.resolve_steps(accelerator.num_processes) * config.grad_accum * config.batch_size * \
        accelerator.num_processes
    train_blocks, eval_blocks = healing_blocks(spec, loaded.tokenizer, needed, config.eval_samples)
    teacher_model, cache, teacher_record = None, None, {}
    if entry.uses_teacher:
        teacher_model, cache, teacher_record = _teacher(loaded, teacher, config, train_blocks, teacher_cache, dtype,
                                                        trust_remote_code, accelerator, progress)
    # the data spec besides the token blocks themselves, so that a refused --resume can name what changed
    run_identity = {f"data.{key}": value for key, value in spec.describe().items() if key not in ("seq_len", "seed")}
    result = train(student, train_blocks, eval_blocks, config, accelerator=accelerator,
                   checkpoint_dir=checkpoint_dir, resume=resume, teacher=teacher_model, callback=callback,
                   progress=progress, run_identity=run_identity, teacher_cache=cache)
    del student, teacher_model   # QLoRA frees the 4-bit model before it reads the full-precision weights to merge

    healed, extra_files = _finalize(result, run_method, config, loaded, accelerator, keep_adapter, trust_remote_code,
                                    trained_layers)
    healing = _healing_record(config, run_method, result, spec, train_blocks, eval_blocks, accelerator,
                              trained_layers) | teacher_record
    metadata = {**recipe_metadata, HEALING_KEY: healing}
    if accelerator.is_main_process:
        save(healed, loaded.tokenizer, output, metadata=metadata, force=force, extra_files=extra_files)
        remove_own_checkpoints(checkpoint_dir)      # the model is safe on disk; the user's files there stay
        if plots:                                   # optional, so only once the model is saved
            _write_loss_curve(result, output, f"{config.preset or config.method} on {Path(spec.source).name}")
    accelerator.wait_for_everyone()
    return HealResult(model=healed, config=config, train=result, metadata=metadata, output=output)


def _recipe(data, preset, config_file, method, settings: dict) -> tuple[HealConfig, DataSpec]:
    """The run's config and data spec (the spec's seq_len and seed are the recipe's)."""
    spec = data if isinstance(data, DataSpec) else DataSpec(source=str(data), samples=0)
    if spec.source == "self":
        raise DepthpruneError("--data self (text the model generates itself) cannot heal a model: it would learn its "
                              "own damaged output; pass a corpus such as builtin, c4 or a .jsonl file")
    settings.setdefault("seq_len", spec.seq_len if isinstance(data, DataSpec) else None)
    settings.setdefault("seed", spec.seed if isinstance(data, DataSpec) else None)
    config = build_config(preset=preset, config_file=config_file, method=method, **settings)
    return config, DataSpec(**{**spec.__dict__, "seq_len": config.seq_len, "seed": config.seed})


def _check_request(config: HealConfig, output: Path, checkpoint_dir, resume: bool, force: bool, keep_adapter: bool,
                   teacher_cache) -> Path:
    """Refuse what cannot work before anything is loaded; returns the checkpoint folder."""
    check_output_dir(output, force)
    checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else default_checkpoint_dir(output)
    if checkpoint_dir.exists() and not checkpoint_dir.is_dir():
        raise DepthpruneError(f"--checkpoint-dir {checkpoint_dir} is a file; name a folder")
    if not resume and own_checkpoints(checkpoint_dir) and not force:
        raise DepthpruneError(f"{checkpoint_dir} holds checkpoints of an earlier run; pass --resume to continue "
                              "it or --force to start afresh")
    entry = HEALING_METHODS.get(config.method)
    if keep_adapter and not entry.adapter:
        adapters = ", ".join(m.name for m in HEALING_METHODS if m.adapter)
        raise DepthpruneError(f"--keep-adapter needs --method {adapters.replace(', ', ' or ')} (--method "
                              f"{config.method} trains no adapter)")
    if teacher_cache is not None and not (entry.uses_teacher and config.top_k):
        raise DepthpruneError("--teacher-cache would be ignored: only --method distill with --top-k K caches the "
                              "teacher; drop it or add --top-k")
    return checkpoint_dir


def _load_source(model, run_method: str, dtype, trust_remote_code: bool) -> LoadedModel:
    if isinstance(model, LoadedModel):
        loaded = model
    elif run_method == "qlora":     # the weights are read once, in 4 bits; config and tokenizer come without them
        loaded = qlora_source(model, trust_remote_code)
    else:
        loaded = load_model(model, dtype=dtype, trust_remote_code=trust_remote_code)
    if run_method == "qlora" and loaded.checkpoint_dir is None:
        raise DepthpruneError("QLoRA reads the model in 4 bits from a checkpoint folder; save the model first")
    return loaded


def _student(loaded: LoadedModel, run_method: str, config: HealConfig, accelerator, trust_remote_code: bool):
    """The model to train with what the method trains left trainable; its depth; the layers it trains (None: all)."""
    from accelerate.utils import set_seed

    from ..adapter import ModelAdapter

    set_seed(config.seed)   # LoRA's initial A matrices and dropout masks: the same run gives the same model
    if run_method == "qlora":
        base = load_qlora_base(loaded.checkpoint_dir, accelerator.local_process_index, trust_remote_code)
    else:
        base = loaded.model
    num_layers = ModelAdapter(base).num_layers
    layers = None
    if config.train_layers == "touched":
        layers = touched_layers(read_metadata(loaded.checkpoint_dir) or {} if loaded.checkpoint_dir else {})
    method: HealingMethod = HEALING_METHODS.get(run_method)
    return method.make_student(base, config, layers), num_layers, layers


def _teacher(loaded: LoadedModel, teacher, config: HealConfig, train_blocks: torch.Tensor, teacher_cache, dtype,
             trust_remote_code: bool, accelerator, progress: bool):
    """The teacher on the fly (a model) or cached (its top-k logits), and what depthprune.json says about it."""
    source = teacher_source(loaded, teacher)
    student_vocab = _output_vocab(loaded)

    def load():
        return load_teacher(source, student_vocab, dtype=dtype, trust_remote_code=trust_remote_code).model

    record = {"teacher": teacher_name(source)}
    if config.top_k and str(teacher_cache) != "off":
        cache, record["teacher_cache"] = ensure_cache(source, load, train_blocks, config.top_k, teacher_cache,
                                                      blocks_fingerprint(train_blocks), accelerator,
                                                      config.batch_size, progress)
        record["teacher_weight_bytes"] = None          # not in memory while the student trains
        return None, cache, record
    model = load()
    record["teacher_weight_bytes"] = parameter_bytes(model)
    return model, None, record


def _output_vocab(loaded: LoadedModel) -> int:
    if loaded.model is not None:
        return loaded.model.get_output_embeddings().weight.shape[0]
    raise DepthpruneError("distillation needs the student's weights in memory; --method qlora cannot distil")


def _healing_record(config: HealConfig, run_method: str, result: TrainResult, spec: DataSpec, train_blocks,
                    eval_blocks, accelerator, trained_layers) -> dict:
    """The ``healing`` section of depthprune.json."""
    state = result.state
    return {
        "method": config.method, "method_run": run_method, "preset": config.preset, "recipe": config.to_dict(),
        "warmup_steps_used": result.warmup_steps, "data": spec.describe() | {"samples": len(train_blocks),
                                                                              "eval_samples": len(eval_blocks)},
        "steps": state.step, "tokens_seen": state.tokens_seen, "num_processes": state.num_processes,
        "skipped_steps": state.skipped_steps, "mixed_precision": str(accelerator.mixed_precision),
        "trained_layers": trained_layers if trained_layers is not None else "all",
        "tokens_per_second": result.tokens_per_second, "resumed_from_step": result.resumed_from,
        "final_train_loss": state.train_losses[-1] if state.train_losses else None,
        "initial_eval_loss": state.eval_losses[0][1] if state.eval_losses else None,
        "final_eval_loss": state.eval_losses[-1][1] if state.eval_losses else None,
        "train_losses": state.train_losses, "eval_losses": state.eval_losses,
        "teacher": None, "teacher_weight_bytes": None,
    }


def _finalize(result: TrainResult, run_method: str, config: HealConfig, loaded: LoadedModel, accelerator,
              keep_adapter: bool, trust_remote_code: bool, layers: list[int] | None = None
              ) -> tuple[torch.nn.Module, dict]:
    """Merge adapters into the weights (QLoRA: into a full-precision reload) and collect the adapter files."""
    extra_files: dict = {}
    model = result.model
    if _sharded(accelerator):
        model = _gathered_copy(result, run_method, config, loaded, accelerator, trust_remote_code, layers)
        if model is None:          # not the main process: nothing to save here
            return result.model, extra_files
    if not HEALING_METHODS.get(run_method).adapter:
        model.requires_grad_(False)
        return model.eval(), extra_files
    state = adapter_state(model)
    if keep_adapter:
        extra_files.update(_adapter_files(model))
    if run_method == "qlora" and not _sharded(accelerator):
        # Free the 4-bit model first: the merge then holds one full-precision copy (and the adapter) at most
        del model
        result.model = result.prepared_model = None
        accelerator.free_memory()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if not accelerator.is_main_process:      # only the main process saves: one full-precision copy in all
            return None, extra_files
        base = load_model(loaded.checkpoint_dir, dtype="float32", trust_remote_code=trust_remote_code).model
        merged = merge_adapter_into(base, config, state, layers)
    else:
        merged = model.merge_and_unload()
    merged.requires_grad_(False)
    return merged.eval(), extra_files


def _sharded(accelerator) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)


def _gathered_copy(result: TrainResult, run_method: str, config: HealConfig, loaded: LoadedModel, accelerator,
                   trust_remote_code: bool, layers: list[int] | None = None):
    """Under FSDP/DeepSpeed the weights are sharded: gather the full state dict (a collective call on every
    process) and load it, on the main process, into a fresh CPU copy of the same model (LoRA-wrapped for LoRA)."""
    state = accelerator.get_state_dict(result.prepared_model)
    if not accelerator.is_main_process:
        return None
    if loaded.checkpoint_dir is None:
        raise DepthpruneError("sharded healing rebuilds the model from its checkpoint folder; save the model first")
    fresh = load_model(loaded.checkpoint_dir, dtype="float32", trust_remote_code=trust_remote_code).model
    if HEALING_METHODS.get(run_method).adapter:
        fresh = apply_lora(fresh, config, layers)
    outcome = fresh.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    missing = [k for k in outcome.missing_keys if not k.endswith("lm_head.weight")]   # tied heads may be omitted
    if missing or outcome.unexpected_keys:
        raise DepthpruneError(f"the gathered weights do not fit the model (missing {missing[:2]}, unexpected "
                              f"{outcome.unexpected_keys[:2]}); use DDP (examples/accelerate/ddp.yaml)")
    fresh.tie_weights()
    return fresh


def _adapter_files(peft_model) -> dict:
    """The files of peft's own ``save_pretrained`` (adapter config and weights), to be placed under ``adapter/``."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        peft_model.save_pretrained(folder)
        return {f"adapter/{path.name}": path.read_bytes() for path in sorted(Path(folder).iterdir())
                if path.is_file()}
