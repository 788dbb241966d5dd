"""Selection from scores: hand-made score tables with known answers, and the errors for impossible requests."""

from __future__ import annotations

import pytest

from depthprune import DepthpruneError
from depthprune.scoring import CRITERIA
from depthprune.selection import best_block, last_n, least_important, resolve_count, select_layers

# 6 layers; d(l, n) rows for n = 1..5 (row n has 6 - n + 1 entries)
TABLE = {
    "1": [0.9, 0.2, 0.3, 0.1, 0.4, 0.05],
    "2": [0.8, 0.3, 0.25, 0.35, 0.01],
    "3": [0.7, 0.5, 0.4, 0.02],
    "4": [0.6, 0.6, 0.03],
    "5": [0.5, 0.04],
}


def test_best_block_is_the_argmin_that_avoids_the_final_layer():
    # d(4, 2) = 0.01 is smallest but block 4..5 holds the final layer: refused by default
    assert best_block(TABLE, 2, 6) == (2, 0.25)
    assert best_block(TABLE, 2, 6, allow_final_layer=True) == (4, 0.01)
    assert best_block(TABLE, 1, 6) == (3, 0.1)
    assert best_block(TABLE, 1, 6, protected=[3]) == (1, 0.2)
    with pytest.raises(DepthpruneError, match="no block of 5 layers"):
        best_block(TABLE, 5, 6)                                   # 0..4 holds the first layer: refused by default
    assert best_block(TABLE, 5, 6, allow_first_layer=True) == (0, 0.5)
    with pytest.raises(DepthpruneError, match="no block of 5 layers"):
        best_block(TABLE, 5, 6, protected=[2], allow_first_layer=True)


def test_criteria_never_pick_the_first_layer_unless_allowed():
    values = [0.01, 0.5, 0.2, 0.3, 0.9, 0.4]          # layer 0 has the lowest score
    assert least_important(values, 1) == [2]
    assert least_important(values, 1, allow_first_layer=True) == [0]
    scores = {"num_layers": 6, "bi": values}
    assert select_layers("bi", scores, 2)[0] == [2, 3]
    assert select_layers("bi", scores, 2, allow_first_layer=True)[0] == [0, 2]
    with pytest.raises(DepthpruneError, match="only 4 of 6 are candidates"):
        select_layers("bi", scores, 5)                    # `--n 29` of 30 today left a 1-layer model


def test_least_important_takes_the_lowest_candidates_and_breaks_ties_by_index():
    values = [0.5, 0.1, 0.3, 0.1, 0.9, 0.0]
    assert least_important(values, 2) == [1, 3]                  # the final layer (0.0) is never a candidate
    assert least_important(values, 2, allow_final_layer=True) == [1, 5]
    assert least_important(values, 2, protected=[1]) == [2, 3]
    with pytest.raises(DepthpruneError, match="only 2 of 6 are candidates"):
        least_important(values, 3, protected=[0, 1, 2])
    with pytest.raises(DepthpruneError, match="NaN"):
        least_important([0.1, float("nan"), 0.2], 1)


def test_last_n_keeps_the_final_layer():
    assert last_n(10, 3) == [6, 7, 8]
    with pytest.raises(DepthpruneError, match="at most 8"):
        last_n(10, 9)


def test_resolve_count_from_n_or_ratio():
    assert resolve_count(30, n=8) == 8
    assert resolve_count(30, ratio=0.25) == 8
    with pytest.raises(DepthpruneError, match="exactly one of --n"):
        resolve_count(30, n=2, ratio=0.1)
    with pytest.raises(DepthpruneError, match="--n must be below 30"):
        resolve_count(30, n=30)
    with pytest.raises(DepthpruneError, match="between 0 and 1"):
        resolve_count(30, ratio=1.5)


def test_select_layers_from_a_scores_dict():
    scores = {"num_layers": 6, "angular": TABLE, "bi": [0.5, 0.1, 0.3, 0.2, 0.9, 0.0], "sleb": [3, 1, 2],
              "magnitude": [1, 2, 3, 4, 5, 6], "protected": {"magnitude": [0, 1, 4, 5]}}
    assert select_layers("angular", scores, 2)[0] == [2, 3]
    assert select_layers("bi", scores, 2)[0] == [1, 3]
    assert select_layers("sleb", scores, 2)[0] == [1, 3]
    assert select_layers("magnitude", scores, 2)[0] == [2, 3]       # protected layers respected
    assert select_layers("last", scores, 2)[0] == [3, 4]
    removed, evidence = select_layers("angular", scores, 1)
    assert evidence["angular_block_start"] == 3 and evidence["angular_block_score"] == 0.1
    with pytest.raises(DepthpruneError, match="re-score with --sleb-n 4"):
        select_layers("sleb", scores, 4)
    with pytest.raises(DepthpruneError, match="no 'ppl' criterion.*--metrics ppl"):
        select_layers("ppl", scores, 2)
    with pytest.raises(DepthpruneError, match="did you mean 'angular'"):
        select_layers("angualr", scores, 2)


NAN = float("nan")


def _scores_with_nan():
    """Every criterion's scores for 6 layers, each with one NaN (layer 2; the angular table's block (n=1, l=2))."""
    table = {n: list(row) for n, row in TABLE.items()}
    table["1"][2] = NAN
    return {"num_layers": 6, "angular": table, "bi": [0.5, 0.1, NAN, 0.2, 0.9, 0.0],
            "ppl": [9.0, 3.0, NAN, 4.0, 8.0, 7.0], "taylor": [1.0, 2.0, NAN, 4.0, 5.0, 6.0],
            "magnitude": [1.0, 2.0, NAN, 4.0, 5.0, 6.0], "sleb": [3, 1, 2], "sleb_ppl": [5.0, NAN, 9.0],
            "protected": {}}


@pytest.mark.parametrize("method", [entry.name for entry in CRITERIA if entry.scored])
def test_nan_in_the_scores_is_an_error_naming_the_layers(method):
    # A NaN compares False with everything, so min()/sort() would silently pick whatever comes first.
    with pytest.raises(DepthpruneError) as caught:
        select_layers(method, _scores_with_nan(), 1)
    message = str(caught.value)
    assert "NaN" in message and "float32" in message and "\n" not in message
    where = {"angular": "n=1, l=2", "sleb": "round 2"}.get(method, "layer 2")
    assert where in message


def test_last_n_uses_no_scores_so_nan_elsewhere_does_not_matter():
    assert select_layers("last", _scores_with_nan(), 2)[0] == [3, 4]


def test_none_in_the_scores_is_an_error_too():
    # scores.json written by another tool may hold null where a value could not be computed
    with pytest.raises(DepthpruneError, match="layer 2"):
        select_layers("bi", {"num_layers": 4, "bi": [0.1, 0.2, None, 0.3]}, 1)
