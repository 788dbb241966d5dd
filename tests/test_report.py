"""The HTML report and its markdown twin, and (when Debian's chromium is installed) a real headless render."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from depthprune import DepthpruneError
from depthprune.cli import main
from depthprune.report import write_report


def _png(path, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(4, 3))
    axis.plot([0, 1, 2, 3], [3, 1, 2, 0.5])
    axis.set_title(title)
    figure.savefig(path)
    plt.close(figure)


@pytest.fixture()
def run_dir(tmp_path):
    run = tmp_path / "run"
    score, prune, evaluate, dense = (run / "01-score", run / "03-prune", run / "04-eval", run / "02-eval")
    for folder in (score, prune, evaluate, dense):
        folder.mkdir(parents=True)
    (score / "scores.json").write_text(json.dumps({
        "num_layers": 4, "bi": [0.5, 0.1, 0.3, 0.9], "angular": {"1": [0.3, 0.05, 0.2, 0.4], "2": [0.4, 0.2, 0.5]}}))
    _png(score / "angular_heatmap.png", "heatmap")
    (prune / "depthprune.json").write_text(json.dumps({
        "base_model": "tiny", "method": "bi", "num_layers_original": 4, "num_layers": 3,
        "removed_layers": [1], "kept_layers": [0, 2, 3]}))
    (dense / "results.json").write_text(json.dumps({
        "model": "tiny", "perplexity": {"wikitext2": {"ppl": 40.9, "seq_len": 256, "tokens": 1000},
                                        "ptb": {"128": {"ppl": 77.5, "seq_len": 128}, "2048": {"ppl": 55.25,
                                                                                             "seq_len": 2048}}},
        "tasks": {"piqa": {"acc": 0.61, "acc_norm": 0.62, "n": 100}}}))
    (evaluate / "results.json").write_text(json.dumps({
        "model": "run/03-prune", "perplexity": {"wikitext2": {"ppl": 136.0, "seq_len": 256, "tokens": 1000}},
        "tasks": {"piqa": {"acc": 0.55, "acc_norm": 0.57, "n": 100}},
        "speed": {"model": {"num_layers": 3, "parameters": 3000, "batches": {"1": {"prefill_tokens_per_s": 500.0,
                                                                                    "decode_tokens_per_s": 20.0}}},
                  "base": {"num_layers": 4, "parameters": 4000, "batches": {"1": {"prefill_tokens_per_s": 400.0,
                                                                                   "decode_tokens_per_s": 16.0}}},
                  "ratios": {"1": {"prefill": 1.25, "decode": 1.25}}, "ideal": {"layers": 1.3333},
                  "settings": {"prompt_len": 128, "new_tokens": 32, "statistic": "median", "repeats": 5}}}))
    _png(evaluate / "loss_curve.png", "loss")
    (run / "run.json").write_text(json.dumps({"steps": [
        {"step": "03-prune", "argv": ["depthprune", "prune", "tiny", "--method", "bi", "--n", "1"]}]}))
    return run


def test_report_has_every_table_image_and_provenance(run_dir, tmp_path):
    out = write_report([run_dir], tmp_path / "report.html")
    page = out.read_text()
    assert page.count("data:image/png;base64,") == 2
    assert "136" in page and "40.9" in page                       # dense and pruned side by side
    assert "wikitext2 (seq_len 256)" in page
    assert "<tr><td>1</td><td>500.0</td><td>20</td><td>400.0</td><td>16</td><td>1.25</td><td>1.25</td></tr>" in page
    assert "<td>ideal speed-up (layers)</td><td>1.333</td>" in page
    assert "<td>ptb (seq_len 128)</td><td>77.5</td><td>—</td>" in page and "<td>55.25</td>" in page
    assert "01-score/scores.json" in page and "depthprune prune tiny --method bi --n 1" in page
    # least-important ranking by BI: 1 (0.1), 2 (0.3), 0 (0.5), 3 (0.9)
    assert re.search(r"<td>bi</td><td>1</td><td>2</td><td>0</td><td>3</td>", page)
    # best block of 2 layers by angular distance starts at layer 1 (0.2)
    assert "<td>2</td><td>1-2</td><td>0.2</td>" in page
    markdown = (tmp_path / "report.md").read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
    assert len(links) == 2 and all((tmp_path / link).is_file() for link in links)
    assert "| wikitext2 (seq_len 256) | 40.9 | 136.0 |" in markdown


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
def test_report_renders_in_headless_chromium_with_all_images(run_dir, tmp_path):
    out = write_report([run_dir], tmp_path / "report.html")
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000"]
    dom = subprocess.run(flags + ["--dump-dom", out.as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert 'data-images-total="2"' in dom and 'data-images-ok="2"' in dom
    shot = tmp_path / "shot.png"
    subprocess.run(flags + [f"--screenshot={shot}", "--window-size=1200,2000", out.as_uri()],
                   capture_output=True, timeout=120)
    from PIL import Image
    image = Image.open(shot).convert("L")
    colours = image.getcolors(maxcolors=1 << 20)
    assert image.size == (1200, 2000) and colours is not None and len(colours) > 20   # not a blank page
