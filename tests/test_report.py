"""The HTML report and its markdown twin, on a run folder made by REAL score, eval, prune, collapse, heal, eval
--compare and sweep steps on a tiny model (a recipe), and (when Debian's chromium is installed) a real headless
render."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess

import pytest

from depthprune import DepthpruneError
from depthprune.cli import main
from depthprune.evaluate import speed as speed_module
from depthprune.recipe import load_recipe, run_recipe
from depthprune.report import write_report
from tiny_models import tiny_model

PPL = {"ppl": "builtin", "seq_len": 32, "ppl_max_windows": 4}
HEAL = {"method": "lora", "data": "builtin", "max_steps": 4, "seq_len": 32, "batch_size": 2, "eval_every": 2,
        "eval_samples": 2}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_tokenizer):
    folder = tmp_path_factory.mktemp("ckpt") / "tiny"
    tiny_model("llama", num_layers=6).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def run_dir(checkpoint, tmp_path_factory):
    """score, dense eval, prune by BI, LaCo collapse, LoRA heal, eval against the dense model, sweep: all real."""
    import torch

    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("report") / "run"
    run_recipe(load_recipe({"model": str(checkpoint), "output": str(run), "steps": [
        {"score": {"data": "builtin", "samples": 4, "seq_len": 32, "metrics": "angular,bi"}},
        {"eval": PPL},
        {"prune": {"method": "bi", "n": 1}},
        {"collapse": {"data": "builtin", "samples": 2, "seq_len": 32, "combine": 2, "threshold": 0.3}},
        {"heal": HEAL},
        {"eval": {**PPL, "compare": str(checkpoint), "speed_batch_sizes": "1", "speed_repeats": 2,
                  "speed_prompt_len": 8, "speed_new_tokens": 2}},
        {"sweep": {"model": str(checkpoint), "methods": "bi,last", "n": "0:1", "eval": "builtin",
                   "eval_seq_len": 32, "max_windows": 2, "data": "builtin", "samples": 4, "seq_len": 32}},
    ]}))
    return run


@pytest.fixture(scope="module")
def page(run_dir, tmp_path_factory):
    out = write_report([run_dir], tmp_path_factory.mktemp("out") / "report.html")
    return out, out.read_text()


def _read(path):
    return json.loads(path.read_text())


def _cells(page_text: str, first_cell: str) -> list[str]:
    """The cells of the first table row whose first cell is ``first_cell``."""
    match = re.search(r"<tr><td>" + re.escape(html.escape(first_cell)) + r"</td>(.*?)</tr>", page_text)
    assert match, f"no row {first_cell!r}"
    return [html.unescape(c) for c in re.findall(r"<td>(.*?)</td>", match.group(1))]


def _numbers(cell: str) -> list[float]:
    return [float(n.replace(",", "")) for n in re.findall(r"-?\d[\d,]*\.?\d*(?:e[-+]?\d+)?", cell)]


def _close(cell: str, *expected: float) -> bool:
    """The numbers a cell shows match ``expected`` to the 4 significant digits the report prints."""
    found = _numbers(cell)
    return len(found) >= len(expected) and all(f == pytest.approx(e, rel=2e-3) for f, e in zip(found, expected))


def test_report_opens_with_a_summary_of_cut_quality_and_speed(run_dir, page):
    from transformers import AutoConfig

    _, text = page
    body = text[text.index("<body>"):]
    assert body.index("<h3>Summary</h3>") < body.index("<h3>", body.index("<h3>Summary</h3>") + 1)
    assert body.index("<h3>Summary</h3>") < body.index("Evaluation against the dense model")
    # what was cut: the final model as transformers itself reads it
    final_layers = AutoConfig.from_pretrained(run_dir / "05-heal").num_hidden_layers
    removed = 6 - final_layers
    assert _cells(text, "cut")[0].startswith(f"{removed} of 6 layers") and f"{final_layers} left" in text
    assert "by bi then laco" in _cells(text, "cut")[0]
    assert _cells(text, "cut")[1] == f"ideal {6 / final_layers:.4g}× (layers)"
    # results.json names what it evaluated: the dense checkpoint, then the healed cut model
    assert _read(run_dir / "02-eval" / "results.json")["evaluated"]["dense"] is True
    evaluated = _read(run_dir / "06-eval" / "results.json")["evaluated"]
    assert evaluated["dense"] is False and evaluated["num_layers"] == final_layers
    assert evaluated["removed_layers"] == _read(run_dir / "05-heal" / "depthprune.json")["removed_layers"]
    assert "<th>02-eval (dense)</th>" in text and f"<th>06-eval ({final_layers} layers)</th>" in text
    # quality against the dense model, from the two evaluations' own files
    dense = _read(run_dir / "02-eval" / "results.json")["perplexity"]["builtin"]["ppl"]
    final = _read(run_dir / "06-eval" / "results.json")["perplexity"]["builtin"]["ppl"]
    # every perplexity names its windows and predicted tokens, as the evaluation's own file counts them
    entry = _read(run_dir / "02-eval" / "results.json")["perplexity"]["builtin"]
    label = f"builtin ({entry['windows']} windows of 32 tokens, {entry['tokens']:,} predicted)"
    measured, against = _cells(text, label)
    assert _close(measured, dense, final) and _close(against, final / dense) and "dense" in measured
    # the evaluation table gives the cut model's ratio to the dense model in a column of its own
    assert f"<th>06-eval ({final_layers} layers) vs dense</th>" in text
    assert re.search(rf"<td>{re.escape(label)}</td><td>[^<]*</td>(<td>[^<]*</td>)*<td>{final / dense:.4g}×</td>",
                     text)
    # speed against the dense model next to the ideal, flagged exactly when the measurement is implausible
    speed = _read(run_dir / "06-eval" / "results.json")["speed"]
    for kind in ("decode", "prefill"):
        measured, against = _cells(text, f"{kind} speed, batch 1")
        ratio = speed["ratios"]["1"]
        assert _close(measured, ratio[kind], ratio[f"{kind}_min"], ratio[f"{kind}_max"])
        verdict = speed["plausibility"]["1"][kind]
        assert against.startswith("ideal") and _close(against, verdict["ideal"])
        assert ("measurement noise" in against) == (not verdict["plausible"])


def test_report_shows_every_laco_merge_and_the_healing(run_dir, page):
    _, text = page
    collapse = _read(run_dir / "04-collapse" / "depthprune.json")["collapse"]
    assert collapse["merges"], "the fixture's threshold should accept at least one merge"
    for merge, verdict in [(m, "accepted") for m in collapse["merges"]] + [(m, "rejected") for m in
                                                                             collapse["rejected"]]:
        rows = re.findall(rf"<tr><td>{merge['into']}</td><td>{','.join(map(str, merge['from']))}</td>"
                          rf"<td>([^<]*)</td><td>{verdict}</td></tr>", text)
        assert len(rows) == 1 and _close(rows[0], merge["similarity"])
    healing = _read(run_dir / "05-heal" / "depthprune.json")["healing"]
    # tokens seen, worked by hand: 4 optimizer steps x batch 2 x 32 tokens
    assert _cells(text, "tokens seen") == [f"{4 * 2 * 32:,}"]
    assert _cells(text, "preset") == [healing["preset"]] and _cells(text, "optimizer steps") == ["4"]
    assert _close(_cells(text, "held-out loss before -> after")[0], healing["eval_losses"][0][1],
                  healing["eval_losses"][-1][1])
    assert [int(step) for step, _ in healing["eval_losses"]] == [0, 2, 4]   # the curve, step by step
    curve = text[text.index("<h3>Healing loss curve"):]
    curve = curve[:curve.index("</table>")]
    for step, loss in healing["eval_losses"]:
        assert _close(_cells(curve, str(step))[0], loss)
    assert "Healing — lora" in text and "05-heal/loss_curve.png" in text


def test_each_table_is_shown_once(run_dir, page):
    _, text = page
    # score, prune and sweep folders all hold the same scores.json; heal carries collapse's plan and merges
    assert _read(run_dir / "03-prune" / "scores.json") == _read(run_dir / "01-score" / "scores.json")
    assert text.count("<h3>Least important layers by each criterion") == 1
    assert text.count("<h3>Best contiguous block per size n") == 1
    assert text.count("<h3>LaCo merges") == 1 and text.count("<h3>Model and plan") == 2
    assert "Least important layers by each criterion: the same as in 01-score/scores.json" in text
    assert "(07-sweep/scores.json)" in text and "(05-heal/depthprune.json)" in text
    assert text.count("<h3>Perplexity (token-level") == 1 and text.count("<h3>Sweep: quality") == 1
    # BI ranking, computed here from the scores the slow obvious way
    bi = _read(run_dir / "01-score" / "scores.json")["bi"]
    assert _cells(text, "bi") == [str(i) for i in sorted(range(6), key=lambda i: bi[i])]


def test_every_image_and_command_is_in_the_report(run_dir, page):
    out, text = page
    pngs = sorted(run_dir.rglob("*.png"))
    assert text.count("data:image/png;base64,") == len(pngs) >= 4
    commands = {s["step"]: " ".join(s["argv"]) for s in _read(run_dir / "run.json")["steps"]}
    for command in commands.values():
        assert html.escape(command) in text
    markdown = out.with_suffix(".md").read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
    assert len(links) == len(pngs) and all((out.parent / link).is_file() for link in links)
    assert "### Summary" in markdown


def _eval_with_timings(checkpoint, pruned_dir, out, monkeypatch, pruned_seconds: float):
    """A real ``depthprune eval --compare`` whose clock says the pruned model takes ``pruned_seconds`` per run and
    the dense one 1 s."""
    pruned_model = {}

    def timing(model, *args):
        if not pruned_model:
            pruned_model["first"] = model      # compare_speed times the evaluated model first
        return (pruned_seconds, pruned_seconds) if model is pruned_model["first"] else (1.0, 1.0)

    monkeypatch.setattr(speed_module, "_prefill_and_decode", timing)
    return main(["eval", str(pruned_dir), "--compare", str(checkpoint), "--speed-batch-sizes", "1",
                 "--speed-repeats", "2", "--output", str(out)])


def test_impossible_speed_ups_are_flagged_in_cli_and_report(checkpoint, tmp_path, monkeypatch, capsys):
    pruned = tmp_path / "pruned"
    assert main(["prune", str(checkpoint), "--layers", "1", "--output", str(pruned)]) == 0
    # 6 -> 5 layers: at most 1.2x; a 5x "speed-up" is noise
    assert _eval_with_timings(checkpoint, pruned, tmp_path / "noisy", monkeypatch, 0.2) == 0
    printed = capsys.readouterr().out
    assert "WARNING: batch 1 prefill: 5.00x is above the ideal 1.20x" in printed and "idle machine" in printed
    text = write_report([tmp_path / "noisy"], tmp_path / "noisy.html").read_text()
    assert "<p class='warn'>noisy, batch 1 prefill: 5.00x is above the ideal 1.20x" in text
    assert "⚠ noise" in text and "⚠ measurement noise, re-run on an idle machine" in text

    # 1.1x on both is possible for decode and prefill alike: no flag anywhere
    assert _eval_with_timings(checkpoint, pruned, tmp_path / "quiet", monkeypatch, 1 / 1.1) == 0
    assert "WARNING" not in capsys.readouterr().out
    text = write_report([tmp_path / "quiet"], tmp_path / "quiet.html").read_text()
    assert "noise" not in text and "class='warn'" not in text


def test_report_refuses_overwrite_and_empty_folders(run_dir, tmp_path, capsys):
    write_report([run_dir], tmp_path / "r.html")
    with pytest.raises(DepthpruneError, match="already exists"):
        write_report([run_dir], tmp_path / "r.html")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["report", str(empty), "--output", str(tmp_path / "x.html")]) == 2
    assert "holds no depthprune outputs" in capsys.readouterr().err


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="SKIPPED LOUDLY: Debian's chromium is not installed "
                                             "(apt-get install chromium); the HTML render check did not run")
def test_report_renders_in_headless_chromium_with_all_images(run_dir, page, tmp_path):
    out, _ = page
    images = len(sorted(run_dir.rglob("*.png")))
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000"]
    dom = subprocess.run(flags + ["--dump-dom", out.as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert f'data-images-total="{images}"' in dom and f'data-images-ok="{images}"' in dom
    shot = tmp_path / "shot.png"
    subprocess.run(flags + [f"--screenshot={shot}", "--window-size=1200,2000", out.as_uri()],
                   capture_output=True, timeout=120)
    from PIL import Image
    image = Image.open(shot).convert("L")
    colours = image.getcolors(maxcolors=1 << 20)
    assert image.size == (1200, 2000) and colours is not None and len(colours) > 20   # not a blank page


def test_sweep_table_names_its_windows_and_gives_each_point_against_dense(run_dir, page):
    _, text = page
    sweep = _read(run_dir / "07-sweep" / "sweep.json")
    assert "<th>CPython docs (builtin) perplexity (windows of 32 tokens, first 2 windows)</th><th>vs dense</th>" in text
    dense = next(p for p in sweep["points"] if p["n"] == 0)["builtin_ppl"]
    for point in sweep["points"]:
        cells = re.search(rf"<tr><td>{point['method']}</td><td>{point['n']}</td><td>[^<]*</td><td>([^<]*)</td>"
                          rf"<td>([^<]*)</td></tr>", text)
        assert cells, f"no sweep row for {point['method']} n={point['n']}"
        assert _close(cells.group(1), point["builtin_ppl"]) and _close(cells.group(2), point["builtin_ppl"] / dense)
