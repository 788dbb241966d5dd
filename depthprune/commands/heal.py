"""Heal a pruned model: LoRA, QLoRA, continued pretraining (full) or distillation from the unpruned model.

Defaults follow the papers (each method's preset: lora -> gromov-lora, qlora -> gromov-qlora, full ->
shortened-cpt, distill -> minitron-kd); options given here override the preset, and --config YAML sits between.
The result has its adapters merged and is saved as an ordinary checkpoint with the recipe, tokens seen and losses
in depthprune.json. Multi-GPU: ``accelerate launch [--config_file examples/accelerate/ddp.yaml] -m depthprune heal
...`` (see docs/healing.md).
"""

from __future__ import annotations

import argparse

from ..data import DataSpec
from .common import add_data_arguments, add_output_arguments

UNSET = argparse.SUPPRESS   # recipe options left out come from the preset (and print no misleading default)

HELP = "heal a pruned model (LoRA, QLoRA, continued pretraining, distillation) and save it merged"


def add_arguments(parser) -> None:
    from ..heal import HEALING_METHODS, default_presets, presets
    from ..heal.config import TARGET_NAMES, TRAIN_LAYER_CHOICES

    parser.add_argument("model", help="the pruned checkpoint folder (or any model depthprune can load)")
    parser.add_argument("--dtype", default="float32", help="dtype of the master weights (float32 recommended)")
    parser.add_argument("--trust-remote-code", action="store_true", help="run the model repository's own code")
    parser.add_argument("--cpu", action="store_true", help="train on the CPU even when a GPU is present")
    parser.add_argument("--mixed-precision", choices=("no", "bf16", "fp16", "auto"), default=UNSET,
                        help="autocast precision; auto: bf16 on a GPU or CPU with bf16 arithmetic (AVX512-BF16/AMX), "
                             "else none; master weights stay float32 (default: accelerate's configuration)")
    add_data_arguments(parser, samples=0, seq_len=512)
    for action in parser._actions:
        if action.dest == "samples":
            action.help = "distinct training blocks to cut (0: as many as the step budget needs)"
        if action.dest == "seq_len":
            action.default = UNSET
            action.help = "tokens per training block (default: 512)"
        if action.dest == "seed":
            action.default = UNSET
            action.help = "seed of the document order and the block order (default: 0)"
    group = parser.add_argument_group("recipe (unset options come from the preset)")
    group.add_argument("--method", choices=HEALING_METHODS.names(), default=UNSET,
                       help="what to train (default: lora): " + "; ".join(f"{m.name}: {m.help}" for m in HEALING_METHODS))
    group.add_argument("--preset", default=UNSET, metavar="NAME",
                       help=f"named recipe: {', '.join(presets())} (default per method: "
                            f"{', '.join(f'{m}={p}' for m, p in default_presets().items())})")
    group.add_argument("--config", default=UNSET, metavar="YAML", help="YAML file of recipe settings")
    group.add_argument("--teacher", default=UNSET, help="unpruned model for --method distill (default: the base_model "
                                                       "recorded in MODEL's depthprune.json)")
    group.add_argument("--rank", type=int, default=UNSET, help="LoRA rank r")
    group.add_argument("--alpha", type=float, default=UNSET, help="LoRA alpha (default: = rank)")
    group.add_argument("--dropout", type=float, default=UNSET, help="LoRA dropout")
    group.add_argument("--targets", choices=TARGET_NAMES, default=UNSET, help="projections LoRA adapts")
    group.add_argument("--qlora-fallback", action="store_true", default=UNSET,
                       help="with --method qlora and no CUDA GPU, train plain LoRA instead of refusing")
    group.add_argument("--max-steps", type=int, default=UNSET, help="optimizer steps")
    group.add_argument("--tokens", type=int, default=UNSET, help="token budget (instead of --max-steps)")
    group.add_argument("--lr", type=float, default=UNSET, help="peak learning rate")
    group.add_argument("--warmup-steps", type=int, default=UNSET, help="linear warm-up steps (at most a tenth of "
                                                                      "the run is used)")
    group.add_argument("--schedule", choices=("cosine", "constant"), default=UNSET, help="after warm-up")
    group.add_argument("--weight-decay", type=float, default=UNSET, help="AdamW weight decay")
    group.add_argument("--batch-size", type=int, default=UNSET, help="blocks per micro-batch per process")
    group.add_argument("--grad-accum", type=int, default=UNSET, help="micro-batches per optimizer step")
    group.add_argument("--temperature", type=float, default=UNSET, help="distillation temperature tau")
    group.add_argument("--lm-loss-weight", type=float, default=UNSET,
                       help="distillation: weight w of the LM loss in (1-w)*KL + w*LM")
    group.add_argument("--top-k", type=int, default=UNSET, metavar="K",
                       help="distillation over the teacher's top K next tokens (renormalised KL), its logits computed "
                            "once and cached on disk (6*K bytes per token); 0: the whole vocabulary, teacher on the fly "
                            "(default: 0)")
    group.add_argument("--teacher-cache", default=UNSET, metavar="DIR",
                       help="with --top-k: where cached teacher logits live (default: $DEPTHPRUNE_CACHE/teacher-topk; "
                            "reused by every run on the same blocks), or 'off' to run the teacher on the fly")
    group.add_argument("--train-layers", choices=TRAIN_LAYER_CHOICES, default=UNSET,
                       help="all decoder layers, or only the kept layers next to each gap the pruning left "
                            "(touched; read from MODEL's depthprune.json) (default: all)")
    run_group = parser.add_argument_group("run")
    run_group.add_argument("--eval-every", type=int, default=UNSET, help="held-out loss every N steps")
    run_group.add_argument("--eval-samples", type=int, default=UNSET, help="held-out blocks")
    run_group.add_argument("--max-loss-ratio", type=float, default=UNSET,
                           help="stop when a step's loss jumps above this times the running median of the last 32 "
                                "steps, far outside their spread (default: 4)")
    run_group.add_argument("--max-grad-norm", type=float, default=UNSET,
                           help="gradient clipping norm, 0 for none (default: 1)")
    run_group.add_argument("--save-every", type=int, default=UNSET, help="checkpoint every N steps")
    run_group.add_argument("--checkpoint-dir", default=UNSET, help="where checkpoints go (default OUTPUT.checkpoints)")
    run_group.add_argument("--resume", action="store_true",
                           help="continue from the latest checkpoint, with the same options (only --lr may change)")
    run_group.add_argument("--keep-adapter", action="store_true", help="also save the LoRA adapter under adapter/")
    run_group.add_argument("--no-progress", action="store_true", help="no progress bar")
    run_group.add_argument("--no-plots", action="store_true", help="do not draw loss_curve.png (no matplotlib needed)")
    add_output_arguments(parser)


RECIPE_OPTIONS = ("rank", "alpha", "dropout", "targets", "qlora_fallback", "max_steps", "tokens", "lr", "warmup_steps",
                  "schedule", "weight_decay", "batch_size", "grad_accum", "temperature", "lm_loss_weight", "eval_every",
                  "eval_samples", "save_every", "seq_len", "seed", "max_loss_ratio", "max_grad_norm", "top_k",
                  "train_layers")


def run(args) -> int:
    from ..heal import heal

    spec = DataSpec(source=args.data, samples=args.samples, text_field=args.text_field,
                    chat_template=args.chat_template)
    settings = {name: getattr(args, name, None) for name in RECIPE_OPTIONS}
    option = lambda name: getattr(args, name, None)  # noqa: E731  (left-out options are absent)
    result = heal(args.model, data=spec, output=args.output, method=option("method"), preset=option("preset"),
                  teacher=option("teacher"), config_file=option("config"), keep_adapter=args.keep_adapter,
                  resume=args.resume, force=args.force, checkpoint_dir=option("checkpoint_dir"), dtype=args.dtype,
                  cpu=args.cpu, mixed_precision=option("mixed_precision"), trust_remote_code=args.trust_remote_code,
                  progress=not args.no_progress, plots=not args.no_plots,
                  teacher_cache=option("teacher_cache"), **settings)
    from accelerate import PartialState

    if PartialState().is_main_process:
        healing = result.metadata["healing"]
        print(f"healed with {healing['method_run']} ({healing['preset']}): {healing['steps']} steps, "
              f"{healing['tokens_seen']:,} tokens, held-out loss {healing['initial_eval_loss']} -> "
              f"{healing['final_eval_loss']}; saved to {args.output}")
    return 0
