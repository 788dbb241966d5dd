"""A pruning plan: which layers go and which stay, with the evidence that chose them (mergekit's plan-then-run)."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

from .errors import DepthpruneError


@dataclass
class PrunePlan:
    """Layers to remove, in the numbering of the model being pruned (0-based)."""

    num_layers: int
    removed_layers: list[int]
    method: str = "manual"
    scores: dict = field(default_factory=dict)      # the numbers that decided, per criterion
    settings: dict = field(default_factory=dict)    # options that produced the plan

    @property
    def kept_layers(self) -> list[int]:
        removed = set(self.removed_layers)
        return [i for i in range(self.num_layers) if i not in removed]

    def to_dict(self) -> dict:
        data = asdict(self)
        data["kept_layers"] = self.kept_layers
        return data

    def summary(self) -> str:
        removed = format_layer_list(self.removed_layers)
        return (f"plan ({self.method}): {self.num_layers} -> {len(self.kept_layers)} layers; "
                f"remove [{removed}]; keep [{format_layer_list(self.kept_layers)}]")


_ITEM = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")


def parse_layer_list(text: str) -> list[int]:
    """Parse ``"20-27,3"`` into ``[20, ..., 27, 3]`` (0-based, ranges inclusive, order kept)."""
    layers: list[int] = []
    for item in str(text).split(","):
        match = _ITEM.match(item)
        if not match:
            raise DepthpruneError(f"cannot read layer list {text!r} at {item.strip()!r}; "
                                  "write 0-based numbers and inclusive ranges, e.g. 20-27,3")
        start = int(match.group(1))
        end = int(match.group(2)) if match.group(2) is not None else start
        if end < start:
            raise DepthpruneError(f"layer range {item.strip()!r} runs backwards; write it as {end}-{start}")
        layers.extend(range(start, end + 1))
    return layers


def format_layer_list(layers) -> str:
    """``[3, 20, 21, 22]`` -> ``"3,20-22"``."""
    layers = sorted(layers)
    parts, i = [], 0
    while i < len(layers):
        j = i
        while j + 1 < len(layers) and layers[j + 1] == layers[j] + 1:
            j += 1
        parts.append(str(layers[i]) if i == j else f"{layers[i]}-{layers[j]}")
        i = j + 1
    return ",".join(parts)
