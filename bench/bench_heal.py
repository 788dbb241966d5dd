"""Healing benchmark: SmolLM2-135M pruned by 8 layers, healed with LoRA, full CPT and distillation at one token
budget on the C4 slice; WikiText-2 perplexity before/after against the dense model, and tokens/s of each method.

    python bench/bench_heal.py --tokens 8192 --eval-windows 32      # what bench/RESULTS.md (Healing) reports
    python bench/bench_heal.py --methods full:all,full:touched,lora:all,lora:touched --tokens 4096 --seq-len 128

A method may carry ``:all`` or ``:touched`` (``--train-layers``: every layer, or only the kept layers next to the
gap) and ``:topK`` for distillation from the cached teacher's top K (e.g. ``distill:top64``).

Perplexity: token-level, non-overlapping windows of --eval-seq-len tokens over WikiText-2 test joined with blank
lines (the raw file already is), first --eval-windows windows. Outputs go to --work (default: a temp folder).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DEPTHPRUNE_SHARED_DATA", REPO.parent / "shared" / "data"))
C4 = SHARED / "c4" / "c4_validation_2k.jsonl"
WIKITEXT = SHARED / "wikitext2" / "wiki.test.raw"

# Per-method learning rates for a budget this small (tens of steps); everything else is the method's preset.
LEARNING_RATES = {"lora": 1e-3, "full": 1e-4, "distill": 1e-4}


@torch.no_grad()
def wikitext_perplexity(model, tokenizer, seq_len: int, windows: int) -> float:
    text = WIKITEXT.read_text(encoding="utf-8")[: seq_len * windows * 8]       # ample characters for the windows
    ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"])
    if len(ids) < seq_len * windows:
        raise SystemExit(f"WikiText-2 slice too short for {windows} windows of {seq_len}")
    blocks = ids[: seq_len * windows].view(windows, seq_len)
    model.eval()
    total, count = 0.0, 0
    for start in range(0, windows, 4):
        batch = blocks[start:start + 4]
        logits = model(input_ids=batch).logits[:, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), batch[:, 1:], reduction="sum")
        total, count = total + nll.item(), count + batch[:, 1:].numel()
    return math.exp(total / count)


def main() -> int:
    import depthprune
    from depthprune.heal import heal

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", default="11-18", help="layers to remove (Gromov's best angular block of 8)")
    parser.add_argument("--methods", default="lora,full,distill")
    parser.add_argument("--tokens", type=int, default=8192, help="training tokens per method")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--eval-seq-len", type=int, default=256)
    parser.add_argument("--eval-windows", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest on a busy box)")
    parser.add_argument("--work", default=None, help="folder for the checkpoints (default: a temp folder)")
    args = parser.parse_args()
    for path in (C4, WIKITEXT):
        if not path.is_file():
            raise SystemExit(f"missing {path}")
    torch.set_num_threads(args.threads)
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-heal-"))
    rows, started = [], time.time()

    loaded = depthprune.load_model("smollm2-135m")
    tokenizer = loaded.tokenizer
    ppl = lambda model: wikitext_perplexity(model, tokenizer, args.eval_seq_len, args.eval_windows)  # noqa: E731
    rows.append({"model": "dense (30 layers)", "ppl": ppl(loaded.model)})
    print(json.dumps(rows[-1]), flush=True)
    pruned_dir = work / "pruned"
    depthprune.prune(loaded, layers=args.layers, output=pruned_dir, force=True)
    rows.append({"model": f"pruned {args.layers} (22 layers), no healing", "ppl": ppl(loaded.model)})
    print(json.dumps(rows[-1]), flush=True)
    del loaded
    for variant in args.methods.split(","):
        method, *options = variant.split(":")
        extra = {}
        for option in options:
            if option in ("all", "touched"):
                extra["train_layers"] = option
            elif option.startswith("top"):
                extra["top_k"] = int(option[3:])
        began = time.time()
        result = heal(str(pruned_dir), data=str(C4), output=work / f"healed-{variant.replace(':', '-')}",
                      method=method, tokens=args.tokens, seq_len=args.seq_len, batch_size=args.batch_size,
                      lr=LEARNING_RATES[method], eval_samples=4, eval_every=10_000, save_every=10_000, force=True,
                      progress=False, **extra)
        healing = result.metadata["healing"]
        layers = healing["trained_layers"]
        trained = "all layers" if layers == "all" else f"layers {layers} only"
        rows.append({"model": f"healed: {variant} ({healing['preset']}, lr {LEARNING_RATES[method]:g}, {trained})",
                     "ppl": ppl(result.model), "tokens": healing["tokens_seen"], "steps": healing["steps"],
                     "tokens_per_s": healing["tokens_per_second"], "wall_s": time.time() - began,
                     "c4_heldout_loss": [healing["initial_eval_loss"], healing["final_eval_loss"]]})
        print(json.dumps(rows[-1]), flush=True)
    summary = {"machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
                          f"{args.threads} thread(s), CPU", "command": " ".join(sys.argv), "settings": vars(args),
               "rows": rows, "total_s": time.time() - started}
    (work / "bench_heal.json").write_text(json.dumps(summary, indent=2))
    print(f"\nWikiText-2 ppl@{args.eval_seq_len}, first {args.eval_windows} windows; {args.tokens} C4 tokens per "
          f"method (seq {args.seq_len}, batch {args.batch_size}); results in {work}/bench_heal.json\n")
    print("| model | WikiText-2 ppl | train tokens | steps | train tokens/s | wall s |")
    print("|---|---:|---:|---:|---:|---:|")
    for row in rows:
        trained = "tokens" in row
        speed, wall = (f"{row['tokens_per_s']:.0f}", f"{row['wall_s']:.0f}") if trained else ("", "")
        print(f"| {row['model']} | {row['ppl']:.1f} | {row.get('tokens', '')} | {row.get('steps', '')} | {speed} | "
              f"{wall} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
