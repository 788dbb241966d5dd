"""Heal a pruned model: LoRA, QLoRA, continued pretraining (full) or distillation from the unpruned model.

Defaults follow the papers (each method's preset: lora -> gromov-lora, qlora -> gromov-qlora, full ->
shortened-cpt, distill -> minitron-kd); options given here override the preset, and --config YAML sits between.
The result has its adapters merged and is saved as an ordinary checkpoint with the recipe, tokens seen and losses
in depthprune.json. Multi-GPU: ``accelerate launch [--config_file examples/accelerate/ddp.yaml] -m depthprune heal
...`` (see docs/healing.md).
"""

from __future__ import annotations

from ..data import DataSpec
from ..heal.config import SCHEDULES, TARGET_NAMES, TOP_K_NORMS, TRAIN_LAYER_CHOICES
from .common import COMMON_OPTIONS, data_options, output_options
from .schema import Option, Renamed

HELP = "heal a pruned model (LoRA, QLoRA, continued pretraining, distillation) and save it merged"

RECIPE = "recipe (unset options come from the preset)"
RUN = "run"


def options() -> list:
    """The verb's schema, read from the healing-method registry each time (so a plug-in method appears)."""
    from ..heal import HEALING_METHODS, default_presets, presets

    return [
        *COMMON_OPTIONS,
        Option("model", positional=True, help="the pruned checkpoint folder (or any model depthprune can load)"),
        Option("dtype", default="float32", help="dtype of the master weights (float32 recommended)"),
        Option("trust_remote_code", bool, False, help="run the model repository's own code"),
        Option("cpu", bool, False, help="train on the CPU even when a GPU is present"),
        Option("mixed_precision", choices=("no", "bf16", "fp16", "auto"),
               help="autocast precision; auto: bf16 on a GPU or a CPU with bf16 arithmetic (AVX512-BF16/AMX), else "
                    "none; the master weights stay float32 (default: accelerate's configuration)"),
        # seq_len and seed are recipe settings: None takes the preset's
        *data_options(samples=0, seq_len=None, seed=None, helps={
            "samples": "distinct training blocks to cut (0: as many as the step budget needs)",
            "seq_len": "tokens per training block (default: the preset's, 512)",
            "seed": "seed of the document order and the block order (default: the preset's, 0)"}),
        Option("method", choices=HEALING_METHODS.names(), group=RECIPE,
               help="what to train (default: lora): " + "; ".join(f"{m.name}: {m.help}" for m in HEALING_METHODS)),
        Option("preset", metavar="NAME", group=RECIPE,
               help=f"named recipe: {', '.join(presets())} (default per method: "
                    f"{', '.join(f'{m}={p}' for m, p in default_presets().items())})"),
        Option("config_file", flag="--config", metavar="YAML", group=RECIPE, help="YAML file of recipe settings"),
        Option("teacher", group=RECIPE,
               help="unpruned model for --method distill (default: the base_model recorded in MODEL's depthprune.json)"),
        Option("rank", int, group=RECIPE, help="LoRA rank r"),
        Option("alpha", float, group=RECIPE, help="LoRA alpha (default: = rank)"),
        Option("dropout", float, group=RECIPE, help="LoRA dropout"),
        Option("targets", choices=TARGET_NAMES, group=RECIPE, help="projections LoRA adapts"),
        Option("qlora_fallback", bool, None, group=RECIPE,
               help="with --method qlora and no CUDA GPU, train plain LoRA instead of refusing (default: the preset's)"),
        Option("max_steps", int, group=RECIPE, help="optimizer steps"),
        Option("train_tokens", int, group=RECIPE, help="training token budget (instead of --max-steps)"),
        Renamed("tokens", "--train-tokens N (the training token budget)"),
        Option("lr", float, group=RECIPE, help="peak learning rate"),
        Option("warmup_steps", int, group=RECIPE, help="linear warm-up steps (at most a tenth of the run is used)"),
        Option("schedule", choices=SCHEDULES, group=RECIPE, help="after warm-up (transformers' schedules)"),
        Option("weight_decay", float, group=RECIPE, help="AdamW weight decay"),
        Option("batch_size", int, group=RECIPE, help="blocks per micro-batch per process"),
        Option("grad_accum", int, group=RECIPE, help="micro-batches per optimizer step"),
        Option("temperature", float, group=RECIPE, help="distillation temperature tau"),
        Option("lm_loss_weight", float, group=RECIPE, help="distillation: weight w of the LM loss in (1-w)*KL + w*LM"),
        Option("top_k", int, group=RECIPE, metavar="K",
               help="distillation over the teacher's top K next tokens (renormalised KL), its logits computed once and "
                    "cached on disk (6*K bytes per token); 0: the whole vocabulary, teacher on the fly (default: 0)"),
        Option("top_k_norm", choices=TOP_K_NORMS, group=RECIPE,
               help="with --top-k: renormalise the student over the K tokens too (top-k, LinearPatch/Minitron) or "
                    "take its full-vocabulary probabilities there, so that mass outside them counts (vocab) "
                    "(default: top-k)"),
        Option("teacher_cache", group=RECIPE, metavar="DIR",
               help="with --top-k: where cached teacher logits live (default: $DEPTHPRUNE_CACHE/teacher-topk; reused "
                    "by every run on the same blocks), or 'off' to run the teacher on the fly"),
        Option("train_layers", choices=TRAIN_LAYER_CHOICES, group=RECIPE,
               help="all decoder layers, or only the kept layers next to each gap the pruning left (touched; read "
                    "from MODEL's depthprune.json) (default: all)"),
        Option("eval_every", int, group=RUN, help="held-out loss every N steps"),
        Option("eval_samples", int, group=RUN, help="held-out blocks"),
        Option("max_loss_ratio", float, group=RUN,
               help="stop when a step's loss jumps above this times the running median of the last 32 steps, far "
                    "outside their spread (default: 4)"),
        Option("max_grad_norm", float, group=RUN, help="gradient clipping norm, 0 for none (default: 1)"),
        Option("save_every", int, group=RUN, help="checkpoint every N steps"),
        Option("checkpoint_dir", group=RUN, help="where checkpoints go (default OUTPUT.checkpoints)"),
        Option("resume", bool, False, group=RUN,
               help="continue from the latest checkpoint, with the same options (only --lr may change)"),
        Option("keep_adapter", bool, False, group=RUN, help="also save the LoRA adapter under adapter/"),
        Option("progress", bool, True, group=RUN, help="no progress bar"),
        Option("plots", bool, True, group=RUN, help="do not draw loss_curve.png (no matplotlib needed)"),
        Option("callback", object, None, cli=False),   # Python only: callback(step, loss) after every optimizer step
        *output_options(),
    ]


# Options that are HealConfig fields (None: the preset's), by option name -> field name.
RECIPE_OPTIONS = {name: name for name in (
    "rank", "alpha", "dropout", "targets", "qlora_fallback", "max_steps", "lr", "warmup_steps", "schedule",
    "weight_decay", "batch_size", "grad_accum", "temperature", "lm_loss_weight", "eval_every", "eval_samples",
    "save_every", "seq_len", "seed", "max_loss_ratio", "max_grad_norm", "top_k", "top_k_norm", "train_layers")} | \
    {"train_tokens": "tokens"}


def call(args):
    """The :class:`~depthprune.heal.HealResult` (the healed model is saved to ``output``)."""
    from ..heal import heal

    settings = {field: getattr(args, name) for name, field in RECIPE_OPTIONS.items()}
    if isinstance(args.data, DataSpec):     # the Python API: the spec's block length and seed unless given
        spec = args.data
        settings["seq_len"] = settings["seq_len"] if settings["seq_len"] is not None else spec.seq_len
        settings["seed"] = settings["seed"] if settings["seed"] is not None else spec.seed
    else:
        spec = DataSpec(source=args.data, samples=args.samples, text_field=args.text_field,
                        chat_template=args.chat_template)
    return heal(args.model, data=spec, output=args.output, method=args.method, preset=args.preset,
                teacher=args.teacher, config_file=args.config_file, keep_adapter=args.keep_adapter,
                resume=args.resume, force=args.force, checkpoint_dir=args.checkpoint_dir, dtype=args.dtype,
                cpu=args.cpu, mixed_precision=args.mixed_precision, trust_remote_code=args.trust_remote_code,
                progress=args.progress, plots=args.plots, callback=args.callback, teacher_cache=args.teacher_cache,
                **settings)


def run(args) -> int:
    result = call(args)
    from accelerate import PartialState

    if PartialState().is_main_process:
        healing = result.metadata["healing"]
        print(f"healed with {healing['method_run']} ({healing['preset']}): {healing['steps']} steps, "
              f"{healing['tokens_seen']:,} tokens, held-out loss {healing['initial_eval_loss']} -> "
              f"{healing['final_eval_loss']}; saved to {args.output}")
    return 0
