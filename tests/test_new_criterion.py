"""A new criterion is one module: one registered here — with an option of its own and a plot — works through every
verb (score, prune --method, sweep --methods, a recipe step, the report) and the command line's choices and help,
with no other edit; unregistered, it is gone from all of them."""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass

import pytest

from depthprune import api
from depthprune.cli import main
from depthprune.recipe import load_recipe, run_recipe
from depthprune.scoring import CRITERIA, Criterion, CriterionOption, ScorerConfig, register
from depthprune.scoring.base import Scorer
from tiny_models import tiny_model

NAME = "middle-first"
NUM_LAYERS = 6


# ------------------------------------------------------------------------------ the throw-away criterion module
@dataclass
class MiddleFirstConfig(ScorerConfig):
    """Attributes:
        middle_at: where the middle lies, as a fraction of the depth (0 = first layer, 1 = final layer).
    """

    middle_at: float = 0.5


class MiddleFirstScorer(Scorer):
    """Scores each layer by its distance from the middle: the middle layers go first."""

    streaming = False

    def compute(self, context) -> None:
        centre = self.config.middle_at * (self.num_layers - 1)
        self.values = [abs(layer - centre) for layer in range(self.num_layers)]

    def finalize(self) -> dict:
        return {NAME: self.values}


def middle_first_plot(plt, scores, folder, removed_layers=None) -> list[str]:
    fig, ax = plt.subplots()
    ax.bar(range(len(scores[NAME])), scores[NAME])
    fig.savefig(folder / "middle-first.png")
    plt.close(fig)
    return ["middle-first.png"]


@pytest.fixture
def middle_first():
    entry = register(Criterion(
        name=NAME, selection="lowest", config_class=MiddleFirstConfig, scorer_class=MiddleFirstScorer,
        needs_data=False, description="distance from the middle layer (a throw-away test criterion)",
        options=(CriterionOption("middle_at", "middle_at", type=float,
                                 help="where the middle lies, as a fraction of the depth"),),
        plot=middle_first_plot))
    try:
        yield entry
    finally:
        CRITERIA.unregister(NAME)


def expected_removal(n: int, middle_at: float) -> list[int]:
    """By hand: the n layers nearest the middle, never the first or the final layer, ties to the lower index."""
    centre = middle_at * (NUM_LAYERS - 1)
    return sorted(sorted(range(1, NUM_LAYERS - 1), key=lambda layer: (abs(layer - centre), layer))[:n])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_tokenizer):
    folder = tmp_path_factory.mktemp("ckpt") / "tiny-llama"
    tiny_model("llama", num_layers=NUM_LAYERS).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


def _read(path):
    return json.loads(path.read_text())


def _error(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("depthprune: error:")]
    assert len(lines) == 1, lines
    return lines[0]


# ---------------------------------------------------------------------------------------------------- the verbs
def test_score_and_prune_take_the_new_criterion_and_its_option(middle_first, checkpoint, tmp_path, capsys):
    out = tmp_path / "scores"
    assert main(["score", str(checkpoint), "--metrics", f"magnitude,{NAME}", "--middle-at", "0.2",
                 "--output", str(out)]) == 0
    assert f"{NAME} (rank)" in capsys.readouterr().out
    scores = _read(out / "scores.json")
    assert scores["metrics"] == ["magnitude", NAME] and scores["data"] is None     # it needs no data
    assert scores[NAME] == pytest.approx([abs(layer - 1.0) for layer in range(NUM_LAYERS)])
    assert scores["settings"][NAME]["middle_at"] == 0.2
    assert (out / "middle-first.png").read_bytes()[:4] == b"\x89PNG"                 # its own plot
    assert (out / "rankings.png").is_file()
    # the Python API takes its option by the same name
    assert api.score(str(checkpoint), metrics=NAME, middle_at=0.2, show_progress=False)[NAME] == scores[NAME]

    # chosen by its scores, reused from scores.json and computed on the fly alike
    pruned = tmp_path / "pruned"
    assert main(["prune", str(checkpoint), "--method", NAME, "--n", "2", "--scores", str(out / "scores.json"),
                 "--output", str(pruned)]) == 0
    metadata = _read(pruned / "depthprune.json")
    assert metadata["removed_layers"] == expected_removal(2, 0.2) == [1, 2] and metadata["method"] == NAME
    capsys.readouterr()
    assert main(["prune", str(checkpoint), "--method", NAME, "--n", "3", "--dry-run"]) == 0
    plan = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert plan["removed_layers"] == expected_removal(3, 0.5) == [1, 2, 3]
    assert plan["scores"][NAME] == pytest.approx([2.5, 1.5, 0.5, 0.5, 1.5, 2.5])

    # its needs are read from its entry: no data, and its option only goes with it
    assert main(["prune", str(checkpoint), "--method", NAME, "--n", "2", "--data", "builtin", "--dry-run"]) == 2
    assert f"with --method {NAME} (it reads no data)" in _error(capsys)
    assert main(["score", str(checkpoint), "--metrics", "magnitude", "--middle-at", "0.3",
                 "--output", str(tmp_path / "x")]) == 2
    assert f"--middle-at would be ignored without the {NAME} metric" in _error(capsys)
    assert main(["prune", str(checkpoint), "--method", "angular", "--n", "1", "--middle-at", "0.3", "--data",
                 "builtin", "--dry-run"]) == 2
    assert f"--middle-at would be ignored with --method angular (it is {NAME}'s option)" in _error(capsys)


def test_choices_and_help_come_from_the_registry(middle_first, capsys):
    for verb in ("score", "prune", "sweep"):
        with pytest.raises(SystemExit):
            main([verb, "--help"])
        text = capsys.readouterr().out
        assert re.search(rf"^  {NAME}\s+distance from the middle layer", text, re.MULTILINE), verb
        assert ("--middle-at" in text) == (verb != "sweep"), verb
    CRITERIA.unregister(NAME)
    with pytest.raises(SystemExit):
        main(["score", "--help"])
    text = capsys.readouterr().out
    assert NAME not in text and "--middle-at" not in text
    with pytest.raises(SystemExit):
        main(["prune", "model", "--method", NAME, "--n", "1", "--dry-run"])
    assert "invalid choice" in capsys.readouterr().err


def test_sweep_draws_a_curve_for_the_new_criterion(middle_first, checkpoint, tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(["sweep", str(checkpoint), "--methods", f"{NAME},last", "--n", "0:2", "--eval", "builtin",
                 "--eval-seq-len", "16", "--max-windows", "2", "--samples", "2", "--seq-len", "16", "--no-plots",
                 "--output", str(out)]) == 0
    points = {(p["method"], p["n"]): p for p in _read(out / "sweep.json")["points"]}
    for n in (1, 2):
        assert points[(NAME, n)]["removed_layers"] == expected_removal(n, 0.5)
        assert points[("last", n)]["removed_layers"] == list(range(NUM_LAYERS - n - 1, NUM_LAYERS - 1))
    # the same removal set is the same model: the same measurement
    assert points[(NAME, 0)]["builtin_ppl"] == points[("last", 0)]["builtin_ppl"]
    assert _read(out / "scores.json")[NAME] == pytest.approx([2.5, 1.5, 0.5, 0.5, 1.5, 2.5])


def test_a_recipe_and_the_report_pick_up_the_new_criterion(middle_first, checkpoint, tmp_path):
    run = tmp_path / "run"
    run_recipe(load_recipe({"model": str(checkpoint), "output": str(run), "steps": [
        {"score": {"metrics": f"bi,{NAME}", "middle_at": 0.8, "data": "builtin", "samples": 2, "seq_len": 16}},
        {"prune": {"method": NAME, "n": 2}},      # reuses the score step's scores.json
        {"report": {}},
    ]}))
    assert _read(run / "02-prune" / "depthprune.json")["removed_layers"] == expected_removal(2, 0.8) == [3, 4]
    page = (run / "03-report" / "report.html").read_text()
    scores = _read(run / "01-score" / "scores.json")
    row = re.search(rf"<tr><td>{re.escape(html.escape(NAME))}</td>(.*?)</tr>", page)
    assert row, "no row for the new criterion in the report"
    listed = re.findall(r"<td>(.*?)</td>", row.group(1))
    by_hand = sorted(range(NUM_LAYERS), key=lambda layer: (scores[NAME][layer], layer))
    assert listed == [str(layer) for layer in by_hand]
    assert "01-score/middle-first.png" in page
