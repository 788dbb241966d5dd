"""The shared registry: registration order, loud lookups with the closest name, no double registration."""

from dataclasses import dataclass

import pytest

from depthprune.errors import DepthpruneError
from depthprune.registry import Registry


@dataclass
class _Entry:
    name: str


def test_lookup_order_and_loud_failure():
    registry = Registry("compensation method", "--compensate")
    for name in ("linear", "cosine", "scale"):
        registry.register(_Entry(name))
    assert registry.names() == ("linear", "cosine", "scale")
    assert registry.get("cosine").name == "cosine"
    assert "scale" in registry and "none" not in registry
    with pytest.raises(DepthpruneError, match=r"unknown compensation method 'lineer' for --compensate; "
                                              r"valid: linear, cosine, scale; did you mean 'linear'\?"):
        registry.get("lineer")
    with pytest.raises(RuntimeError, match="registered twice"):
        registry.register(_Entry("linear"))
    registry.unregister("linear")
    assert registry.names() == ("cosine", "scale")
