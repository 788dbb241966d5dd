"""Quality against the fraction of layers removed, one curve per criterion (the papers' central figure).

Scores once, then for each method and n removes layers from a copy, optionally heals briefly, and evaluates.
Writes OUTPUT/sweep.json and OUTPUT/sweep.png. Every finished point is saved at once (OUTPUT/sweep.progress.json);
the same command run again after an interruption continues from the finished points.
"""

from __future__ import annotations

from .common import (COMMON_OPTIONS, data_options, model_options, non_negative_int, output_options, positive_int)
from .schema import Option

HELP = "evaluate quality against layers removed, one curve per criterion"

def options() -> list:
    """The verb's schema, read from the criterion registry each time (so a plug-in appears in --methods' help)."""
    from .criteria import names_help

    return [
        *COMMON_OPTIONS,
        *model_options(),
        Option("methods", default="angular,bi,last,ppl", help=f"comma-separated: {names_help()}"),
        Option("n", default="0:8", help="layers removed: START:END[:STEP] inclusive, or 2,4,8"),
        Option("eval", default="wikitext2", help="perplexity sources and/or tasks, e.g. wikitext2,piqa"),
        Option("eval_seq_len", int, 256, help="perplexity window length"),
        Option("data_dir", help="offline evaluation data, e.g. ../shared/data"),
        Option("max_windows", positive_int, None, help="only the first N perplexity windows"),
        Option("limit", positive_int, None, help="only the first N items of each task"),
        Option("heal_steps", non_negative_int, 0, help="heal each pruned point for this many steps"),
        Option("heal_method", default="lora", help="lora, full or distill"),
        Option("heal_data", help="healing data SPEC (default: --data)"),
        Option("scores", metavar="FILE", help="reuse a scores.json from depthprune score"),
        Option("compensate", default="none", metavar="METHOD",
               help="also evaluate each point with this compensation folded in (linear, cosine, scale), calibrated "
                    "on --data: a second curve per criterion"),
        *data_options(samples=16, seq_len=256),
        Option("plots", bool, True, help="write sweep.json only, no sweep.png"),
        *output_options(force_help="start over, replacing an existing (finished or unfinished) sweep in the output "
                                   "folder"),
    ]


def epilog() -> str:
    """``--help``'s closing list of the registered criteria."""
    from .criteria import criteria_epilog

    return criteria_epilog()


def needs(args) -> list[tuple[str, str]]:
    """Optional packages this command will need (checked before any work, also for every step of a recipe)."""
    from ..sweep import sweep_needs

    return sweep_needs(args.model, args.methods, args.eval, args.data, args.data_dir, args.heal_steps,
                       args.heal_method, args.heal_data, args.scores, args.output, plots=args.plots,
                       compensate=args.compensate)


def call(args) -> dict:
    """The sweep's result (what sweep.json holds)."""
    from ..sweep import sweep
    from .common import check_data_options, data_spec_from_args, refuse_ignored

    if not args.heal_steps:
        refuse_ignored(args, ("heal_method", "heal_data"), "without --heal-steps", fix="add --heal-steps K or drop")
    from ..selection import check_method

    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if isinstance(args.methods, str) \
        else list(args.methods)
    # With --scores the data options still describe the calibration the scores came from (a recipe passes the
    # score step's scores and the sweep step repeats its data), so only a sweep that never scores refuses them.
    scored = any(check_method(m, option="--methods").scored for m in methods)
    check_data_options(args, scored or args.compensate != "none" or bool(args.heal_steps and args.heal_data is None),
                       f"with --methods {args.methods} (nothing is scored), no --compensate and healing off or "
                       "reading --heal-data")
    spec = data_spec_from_args(args)
    return sweep(args.model, methods=args.methods, n=args.n, eval=args.eval, data=spec.source,
                 samples=spec.samples, seq_len=spec.seq_len, seed=spec.seed, text_field=spec.text_field,
                 chat_template=spec.chat_template, eval_seq_len=args.eval_seq_len, data_dir=args.data_dir,
                 max_windows=args.max_windows, limit=args.limit, heal_steps=args.heal_steps,
                 heal_method=args.heal_method, heal_data=args.heal_data, scores=args.scores, output=args.output,
                 force=args.force, plots=args.plots, dtype=args.dtype, device=args.device,
                 trust_remote_code=args.trust_remote_code, compensate=args.compensate)


def run(args) -> int:
    from ..plan import format_layer_list

    result = call(args)
    metrics = [k for k in result["points"][0] if k not in ("method", "n", "fraction", "removed_layers", "seconds")]
    print(f"{'method':<10} {'n':>3}  {'removed':<24} " + " ".join(f"{m:>16}" for m in metrics))
    for point in result["points"]:
        values = " ".join(f"{point[m]:>16.4g}" if isinstance(point.get(m), float) else f"{'-':>16}"
                          for m in metrics)
        print(f"{point['method']:<10} {point['n']:>3}  {format_layer_list(point['removed_layers']):<24} {values}")
    print(f"written to {args.output}")
    return 0
