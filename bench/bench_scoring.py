"""Benchmark layer scoring on SmolLM2-135M with WikiText-2 (issue 3). Results go to bench/RESULTS.md (Scoring).

Sections (run one at a time; each prints JSON and appends it to ``--out``/results.jsonl):

- ``speed``: the one-pass criteria (angular + bi, capture included) vs a plain forward over the same tokens.
- ``ppl``: the perplexity criterion (cached states, later layers only) vs naive re-running of the whole model
  without each layer (timed on every 5th layer and scaled to L; the values are checked to agree).
- ``memory``: peak RSS of ``--sequential`` vs in-memory scoring (each in a fresh subprocess).
- ``quality``: WikiText-2 token perplexity after removing n = 4 and 8 layers by every criterion, vs dense.
- ``st-export`` / ``st-compare``: write the calibration blocks for short-transformers (run in its own venv by
  bench/st_angular.py) and compare its angular table and time with ours.

Usage: ``python bench/bench_scoring.py SECTION [--samples K --seq-len S]``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
WIKITEXT = REPO.parent / "shared" / "data" / "wikitext2" / "wiki.test.raw"


def _blocks(tokenizer, samples, seq_len, seed=0):
    from depthprune import DataSpec, calibration_blocks

    return calibration_blocks(DataSpec(source=str(WIKITEXT), samples=samples, seq_len=seq_len, seed=seed),
                              tokenizer)


def _emit(out: Path, record: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    record = {**record, "torch_threads": torch.get_num_threads()}
    print(json.dumps(record, indent=2))
    with open(out / "results.jsonl", "a") as handle:
        handle.write(json.dumps(record) + "\n")


@torch.no_grad()
def _plain_forward(model, ids, batch_size, decoder_only=False):
    from depthprune.adapter import ModelAdapter

    module = ModelAdapter(model).decoder if decoder_only else model
    start = time.perf_counter()
    for batch in ids.split(batch_size):
        module(input_ids=batch, use_cache=False)
    return time.perf_counter() - start


def section_speed(args, loaded):
    from depthprune.scoring import make_configs, score_model

    ids = _blocks(loaded.tokenizer, args.samples, args.seq_len)
    timings = {"forward": [], "decoder_forward": [], "angular_bi_pass": []}
    for _ in range(args.repeats):
        timings["forward"].append(_plain_forward(loaded.model, ids, args.batch_size))
        timings["decoder_forward"].append(_plain_forward(loaded.model, ids, args.batch_size, decoder_only=True))
        start = time.perf_counter()
        score_model(loaded.model, make_configs("angular,bi"), input_ids=ids, batch_size=args.batch_size,
                    show_progress=False)
        timings["angular_bi_pass"].append(time.perf_counter() - start)
    best = {k: min(v) for k, v in timings.items()}
    return {"section": "speed", "samples": args.samples, "seq_len": args.seq_len, "tokens": ids.numel(),
            "timings_s": timings, "best_s": best,
            "pass_over_forward": best["angular_bi_pass"] / best["forward"],
            "pass_over_decoder_forward": best["angular_bi_pass"] / best["decoder_forward"]}


def section_ppl(args, loaded):
    from depthprune import remove_layers
    from depthprune.scoring import make_configs, score_model

    ids = _blocks(loaded.tokenizer, args.samples, args.seq_len)
    start = time.perf_counter()
    scores = score_model(loaded.model, make_configs("ppl"), input_ids=ids, batch_size=args.batch_size)
    ours = time.perf_counter() - start
    num_layers = scores["num_layers"]
    sampled = list(range(0, num_layers, 5))
    naive_times, naive_ppl = [], {}
    for layer in sampled:
        pruned = copy.deepcopy(loaded.model)
        remove_layers(pruned, [layer], allow_final_layer=True)
        start = time.perf_counter()
        with torch.no_grad():
            total, count = 0.0, 0
            for batch in ids.split(args.batch_size):
                loss = pruned(input_ids=batch, labels=batch, use_cache=False).loss
                n = batch.shape[0] * (batch.shape[1] - 1)
                total, count = total + float(loss) * n, count + n
        naive_times.append(time.perf_counter() - start)
        naive_ppl[layer] = math.exp(total / count)
        del pruned
    naive_total = sum(naive_times) / len(naive_times) * num_layers
    agreement = max(abs(naive_ppl[l] - scores["ppl"][l]) / naive_ppl[l] for l in sampled)
    return {"section": "ppl", "samples": args.samples, "seq_len": args.seq_len, "tokens": ids.numel(),
            "ours_s": ours, "naive_sampled_layers": sampled, "naive_times_s": naive_times,
            "naive_estimated_total_s": naive_total, "ours_over_naive": ours / naive_total,
            "max_relative_difference": agreement, "ppl": scores["ppl"], "dense_ppl": scores["dense_ppl"]}


def section_memory_child(args):
    from depthprune.scoring import score

    loaded_tokenizer = None
    if not args.sequential:
        from depthprune import load_model

        model = load_model("smollm2-135m")
        loaded_tokenizer = model.tokenizer
    else:
        model = "smollm2-135m"
    from depthprune import DataSpec

    spec = DataSpec(source=str(WIKITEXT), samples=args.samples, seq_len=args.seq_len)
    start = time.perf_counter()
    scores = score(model, metrics="angular,bi,magnitude", data=spec, sequential=bool(args.sequential),
                   batch_size=args.batch_size, show_progress=False)
    elapsed = time.perf_counter() - start
    del loaded_tokenizer
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"sequential": bool(args.sequential), "peak_rss_mb": peak_mb, "seconds": elapsed,
                      "bi": scores["bi"], "angular_8": scores["angular"]["8"]}))


def section_memory(args):
    runs = {}
    for sequential in (0, 1):
        command = [sys.executable, __file__, "memory-child", "--sequential", str(sequential),
                   "--samples", str(args.samples), "--seq-len", str(args.seq_len)]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        runs[sequential] = json.loads(output.strip().splitlines()[-1])
    difference = max(abs(a - b) for a, b in zip(runs[0]["bi"], runs[1]["bi"]))
    difference = max([difference] + [abs(a - b) for a, b in zip(runs[0]["angular_8"], runs[1]["angular_8"])])
    return {"section": "memory", "samples": args.samples, "seq_len": args.seq_len,
            "in_memory_peak_rss_mb": runs[0]["peak_rss_mb"], "sequential_peak_rss_mb": runs[1]["peak_rss_mb"],
            "in_memory_s": runs[0]["seconds"], "sequential_s": runs[1]["seconds"],
            "max_score_difference": difference}


def section_quality(args, loaded):
    from depthprune import remove_layers
    from depthprune.evaluate import load_ppl_text
    from depthprune.evaluate.perplexity import tokenize_windows, window_nll
    from depthprune.scoring import make_configs, score_model
    from depthprune.selection import select_layers

    ids = _blocks(loaded.tokenizer, args.samples, args.seq_len)
    text = load_ppl_text("wikitext2", data_dir=WIKITEXT.parent.parent)
    token_ids = torch.tensor(loaded.tokenizer(text)["input_ids"], dtype=torch.long)
    windows = tokenize_windows(token_ids, args.eval_seq_len, args.eval_windows)

    def evaluate(model):
        total, count = window_nll(model, windows, batch_size=args.batch_size)
        return math.exp(total / count)

    record = {"section": "quality", "calibration": {"samples": args.samples, "seq_len": args.seq_len,
                                                    "sleb_samples": args.sleb_samples},
              "eval": {"seq_len": args.eval_seq_len, "windows": args.eval_windows,
                       "dense_ppl": evaluate(loaded.model)}, "scoring_s": {}, "rows": []}
    start = time.perf_counter()
    scores = score_model(loaded.model, make_configs("angular,bi,ppl,taylor,magnitude"), input_ids=ids,
                         batch_size=args.batch_size)
    record["scoring_s"]["angular,bi,ppl,taylor,magnitude"] = time.perf_counter() - start

    def evaluate_methods(methods, counts):
        for n in counts:
            for method in methods:
                removed, _ = select_layers(method, scores, n)
                pruned = copy.deepcopy(loaded.model)
                remove_layers(pruned, removed)
                record["rows"].append({"n": n, "method": method, "removed": removed, "ppl": evaluate(pruned)})
                print(record["rows"][-1], flush=True)
                del pruned

    evaluate_methods(("angular", "bi", "ppl", "taylor", "magnitude", "last"), args.n)
    record["scores"] = dict(scores)
    _emit(Path(args.out), {**record, "partial": "without sleb"})
    start = time.perf_counter()
    sleb = score_model(loaded.model, make_configs("sleb", sleb_n=args.sleb_n), input_ids=ids[:args.sleb_samples],
                       batch_size=args.batch_size)
    record["scoring_s"]["sleb"] = time.perf_counter() - start
    scores.update(sleb=sleb["sleb"], sleb_ppl=sleb["sleb_ppl"])
    scores["protected"]["sleb"] = sleb["protected"]["sleb"]
    evaluate_methods(("sleb",), [n for n in args.n if n <= args.sleb_n])
    record["scores"] = scores
    return record


def section_st_export(args, loaded):
    ids = _blocks(loaded.tokenizer, args.samples, args.seq_len)
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(ids, folder / "st_blocks.pt")
    # a transformers-4.x-readable copy of the weights: same safetensors, rope_theta spelled the old way
    source = loaded.checkpoint_dir
    target = folder / "smollm2-v4"
    target.mkdir(exist_ok=True)
    config = json.loads((source / "config.json").read_text())
    rope = config.get("rope_parameters") or {}
    config["rope_theta"] = rope.get("rope_theta", config.get("rope_theta"))
    config.pop("rope_parameters", None)
    config.pop("dtype", None)
    config["torch_dtype"] = "float32"
    (target / "config.json").write_text(json.dumps(config, indent=2))
    for file in source.glob("*.safetensors"):
        if not (target / file.name).exists():
            (target / file.name).symlink_to(file)
    return {"section": "st-export", "blocks": str(folder / "st_blocks.pt"), "model": str(target),
            "rope_theta": config["rope_theta"]}


def section_st_compare(args, loaded):
    from depthprune.scoring import make_configs, score_model

    folder = Path(args.out)
    ids = torch.load(folder / "st_blocks.pt")
    theirs = json.loads((folder / "st_result.json").read_text())
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        ours = score_model(loaded.model, make_configs("angular"), input_ids=ids, batch_size=args.batch_size,
                           show_progress=False)
        times.append(time.perf_counter() - start)
    # short-transformers' result[k, l] is the distance between the input of layer l and the output of layer
    # l + k, i.e. a block of k + 1 layers starting at l: our d(l, k + 1)
    table = theirs["result"]
    num_layers = ours["num_layers"]
    worst = 0.0
    for n in range(1, num_layers):
        for start, value in enumerate(ours["angular"][str(n)]):
            if start + n <= num_layers - 1:        # theirs reads the last layer AFTER the final norm? see notes
                worst = max(worst, abs(table[n - 1][start] - value))
    last_layer = [abs(table[n - 1][num_layers - n] - ours["angular"][str(n)][num_layers - n])
                  for n in range(1, num_layers)]
    return {"section": "st-compare", "tokens": ids.numel(), "ours_s": min(times), "ours_all_s": times,
            "theirs_s": theirs["seconds"], "theirs_over_ours": theirs["seconds"] / min(times),
            "max_abs_difference_blocks_not_touching_last_layer": worst,
            "max_abs_difference_blocks_ending_at_last_layer": max(last_layer),
            "transformers_theirs": theirs["transformers"]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("section", choices=["speed", "ppl", "memory", "memory-child", "quality", "st-export",
                                            "st-compare"])
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--sequential", type=int, default=0)
    parser.add_argument("--sleb-samples", type=int, default=1)
    parser.add_argument("--n", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--sleb-n", type=int, default=8)
    parser.add_argument("--eval-seq-len", type=int, default=256)
    parser.add_argument("--eval-windows", type=int, default=8)
    parser.add_argument("--out", default="/tmp/bench-scoring")
    args = parser.parse_args(argv)
    if args.section == "memory-child":
        return section_memory_child(args)
    if args.section == "memory":
        return _emit(Path(args.out), section_memory(args))
    from depthprune import load_model

    loaded = load_model("smollm2-135m")
    function = {"speed": section_speed, "ppl": section_ppl, "quality": section_quality,
                "st-export": section_st_export, "st-compare": section_st_compare}[args.section]
    _emit(Path(args.out), function(args, loaded))


if __name__ == "__main__":
    main()
