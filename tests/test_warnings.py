"""The test configuration turns deprecations caused by depthprune's own calls into errors (pyproject.toml).

Python attributes a warning to the module of the frame ``stacklevel`` points at. A library that blames its caller
(``stacklevel=2``) therefore blames depthprune when depthprune makes the deprecated call, and the filter
``error::DeprecationWarning:depthprune.*`` fails the test. transformers' deprecated keyword arguments of a model's
``forward`` are blamed on torch's ``Module.__call__`` (the wrapper's caller), so that module is filtered too.
Deprecations a library raises about its own internal calls stay warnings.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from tiny_models import tiny_model

LIBRARY_SOURCE = """
import warnings

def old_api():
    warnings.warn("old_api is deprecated", CATEGORY, stacklevel=2)      # blames its caller

def internal_use():
    warnings.warn("internal deprecation", CATEGORY, stacklevel=1)       # blames itself
"""


def _module(name: str, source: str, category) -> dict:
    namespace = {"__name__": name, "CATEGORY": category}
    exec(compile(source, f"<{name}>", "exec"), namespace)
    return namespace


@pytest.mark.parametrize("category", [DeprecationWarning, FutureWarning, PendingDeprecationWarning])
def test_a_deprecated_call_made_by_depthprune_code_fails_the_test(category):
    library = _module("somelibrary.api", LIBRARY_SOURCE, category)
    ours = _module("depthprune.some_module", "def caller():\n    old_api()\n", category)
    ours["old_api"] = library["old_api"]
    with pytest.raises(category, match="old_api is deprecated"):
        ours["caller"]()


@pytest.mark.parametrize("category", [DeprecationWarning, FutureWarning])
def test_a_librarys_own_internal_deprecation_stays_a_warning(category):
    library = _module("somelibrary.api", LIBRARY_SOURCE, category)
    ours = _module("depthprune.some_module", "def caller():\n    internal_use()\n", category)
    ours["internal_use"] = library["internal_use"]
    with warnings.catch_warnings(record=True) as caught:     # keeps the configured filters, records the rest
        ours["caller"]()
    assert [str(w.message) for w in caught] == ["internal deprecation"]


def test_a_deprecated_forward_argument_fails_the_test():
    # transformers 5.24 renamed past_key_values to cache; its decorator blames torch's Module.__call__
    model = tiny_model("llama", num_layers=1)
    with pytest.raises(FutureWarning, match="past_key_values"):
        with torch.no_grad():
            model(input_ids=torch.tensor([[1, 2, 3]]), past_key_values=None, use_cache=False)
