"""Figures read at a glance, and --help shows each default once."""

from __future__ import annotations

import re

import pytest

from depthprune.cli import COMMANDS, build_parser, main
from depthprune.scoring.plots import outlier_cap
from depthprune.sweep import _compact_number, metric_title, sweep_figure


def test_outlier_cap_worked_by_hand():
    # median of [0.99, 0.02, 0.03, 0.05] is 0.04; 0.99 > 3 x 0.04 is the outlier; cap = 1.3 x 0.05
    assert outlier_cap([0.99, 0.02, 0.03, 0.05]) == pytest.approx(0.065)
    assert outlier_cap([0.02, 0.03, 0.05, 0.04]) is None      # nothing dwarfs the others: a plain axis


def test_compact_numbers():
    assert _compact_number(19000) == "1.9e4"
    assert _compact_number(1e9) == "1e9"
    assert _compact_number(250.4) == "250"
    assert _compact_number(37.14) == "37.1"


def test_metric_titles_are_human_and_state_windows():
    result = {"eval_seq_len": 256, "max_windows": 16, "limit": 400}
    assert metric_title("wikitext2_ppl", result) == "WikiText-2 perplexity (windows of 256 tokens, first 16 windows)"
    assert metric_title("builtin_ppl@128", {"max_windows": None}) == \
        "CPython docs (builtin) perplexity (windows of 128 tokens, all windows)"
    assert metric_title("piqa_acc_norm", result) == "piqa acc_norm, first 400 items"
    assert metric_title("arc_easy_acc", {}) == "arc_easy acc"


def _sweep_result():
    points = []
    for method, values in {"bi": [40.0, 55.0, 80.0], "last": [40.0, 1.9e4, 1e9]}.items():
        for n, value in zip((0, 2, 4), values):
            points.append({"method": method, "n": n, "fraction": n / 30, "removed_layers": [], "wikitext2_ppl": value})
    return {"model": "m", "model_source": "tiny", "num_layers": 30, "methods": ["bi", "last"], "points": points,
            "eval_seq_len": 256, "max_windows": 16}


def test_sweep_figure_labels_off_scale_points_with_true_values_and_draws_dense():
    import matplotlib.pyplot as plt

    figure = sweep_figure(_sweep_result())
    axis = figure.axes[0]
    texts = [t.get_text() for t in axis.texts]
    assert "1.9e4" in texts and "1e9" in texts            # capped at 100 x 40, labelled with the real values
    assert axis.get_title().startswith("WikiText-2 perplexity")
    assert any(line.get_label() == "dense (40)" for line in axis.get_lines())
    figure.canvas.draw()
    ticks = [t.get_text() for t in axis.get_yticklabels() if t.get_text()]
    assert len(ticks) >= 4 and "100" in ticks and "50" in ticks     # 1-2-5 ticks between 10 and 1000
    plt.close(figure)


def test_capped_labels_of_one_x_do_not_overlap_and_the_legend_covers_no_data():
    import matplotlib.pyplot as plt

    result = _sweep_result()
    result["methods"].append("last+linear")      # a second off-scale point at n = 4, as last and last + linear were
    result["points"] += [{"method": "last+linear", "n": n, "fraction": n / 30, "removed_layers": [],
                          "wikitext2_ppl": value} for n, value in ((0, 40.0), (2, 300.0), (4, 1.4e4))]
    figure = sweep_figure(result)
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    axis = figure.axes[0]
    labels = [t for t in axis.texts if t.get_text() in ("1e9", "1.4e4")]
    assert len(labels) == 2
    first, second = (t.get_window_extent(renderer) for t in labels)
    assert not first.overlaps(second)
    legend = axis.get_legend().get_window_extent(renderer)
    assert not legend.overlaps(axis.get_window_extent(renderer))      # beside the panel, not over the curves
    assert legend.x1 <= figure.bbox.x1 + 1                            # and still inside the figure
    plt.close(figure)


@pytest.mark.parametrize("verb", sorted(COMMANDS))
def test_help_states_each_default_once(verb, capsys):
    with pytest.raises(SystemExit):
        main([verb, "--help"])
    text = capsys.readouterr().out
    assert "(default: None)" not in text and "(default: False)" not in text
    for entry in re.split(r"\n  (?=-)", text):          # one option's help
        assert entry.lower().count("default") <= 1, entry


def test_parser_errors_use_the_one_error_prefix(capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["prune", "model-x", "--layers", "2", "--no-such-option"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("depthprune: error: ") and "--no-such-option" in err[0]
