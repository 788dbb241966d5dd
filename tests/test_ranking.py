"""Rankings read from a scores dict through each criterion's selection kind, against hand-worked orders."""

from __future__ import annotations

import math

from depthprune.scoring import CRITERIA
from depthprune.scoring.ranking import least_important_first, ranking_table, ranks, removal_ranks

# 4 layers: angular d(l, 1) for l = 0..3, BI per layer, and a SLEB order of two rounds
SCORES = {"num_layers": 4, "angular": {"1": [0.4, 0.1, 0.3, 0.2], "2": [0.5, 0.2, 0.6], "3": [0.7, 0.8]},
          "bi": [0.9, 0.2, 0.2, 0.05], "sleb": [2, 1], "sleb_ppl": [11.0, 13.0], "ppl": [50.0, 9.0, 8.0, 99.0],
          "dense_ppl": 7.25}


def test_ranks_are_one_for_the_lowest_and_break_ties_by_index():
    assert ranks([0.3, 0.1, 0.2]) == [3, 1, 2]
    assert ranks([0.2, 0.2, 0.1]) == [2, 3, 1]


def test_each_selection_kind_ranks_the_layers_its_own_way():
    by_label = removal_ranks(SCORES)
    assert list(by_label) == ["angular(n=1)", "bi", "ppl", "sleb order"]       # registration order
    assert by_label["angular(n=1)"] == [4, 1, 3, 2]                            # single-layer blocks d(l, 1)
    assert by_label["bi"] == [4, 2, 3, 1]                                      # 0.2 twice: the lower layer first
    sleb = by_label["sleb order"]
    assert sleb[1:3] == [2, 1] and math.isnan(sleb[0]) and math.isnan(sleb[3])     # never reached: NaN
    assert least_important_first(CRITERIA.get("bi"), SCORES) == [3, 1, 2, 0]
    assert least_important_first(CRITERIA.get("sleb"), SCORES) == [2, 1]        # an order is kept as it is


def test_ranking_table_lists_every_criterion_and_the_companion_numbers():
    lines = ranking_table(SCORES).splitlines()
    assert lines[0].split() == ["layer", "angular(n=1)", "(rank)", "bi", "(rank)", "ppl", "(rank)", "sleb", "order"]
    assert lines[1 + 3].split() == ["3", "0.2", "(2)", "0.05", "(1)", "99", "(4)", "-"]
    assert lines[1 + 2].split()[-1] == "1"                                     # layer 2 went first in SLEB
    assert "dense_ppl 7.25" in lines[-1] and "angular(n=1) = blocks of one layer" in lines[-1]
