"""Every example recipe validates against the schema (the CLI verbs' own options)."""

from __future__ import annotations

from pathlib import Path

import pytest

from depthprune.recipe import load_recipe

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.yaml"))


def test_there_is_one_recipe_per_paper_and_a_demo():
    names = {p.stem for p in EXAMPLES}
    for expected in ("gromov", "shortened", "laco", "layerchop", "shortgpt", "sleb", "smollm2-demo"):
        assert any(expected in name for name in names), expected


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_recipe_validates(path):
    recipe = load_recipe(path)
    assert recipe.steps and recipe.model
