"""The healing methods' registry: what each method trains, its presets, its settings and the packages it needs.

A healing method is one module (``lora.py``, ``qlora.py``, ``full.py``, ``distill.py``) that defines its
:class:`HealingMethod` entry and registers it at import time; ``heal``, the CLI's ``--method`` choices and help,
``--preset`` and the checks of ignored settings all read the registry, so a new method needs no other edit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from ..registry import Registry

if TYPE_CHECKING:
    from torch import nn

    from .config import HealConfig


@dataclass(frozen=True)
class Preset:
    """A named recipe: the paper it comes from and the settings it fixes (a partial :class:`HealConfig`)."""

    name: str
    paper: str
    settings: dict = field(default_factory=dict)
    note: str = ""


@dataclass(frozen=True)
class HealingMethod:
    """One registry entry.

    Args:
        name: what ``--method`` calls it.
        help: one line for ``--help`` (what trains).
        presets: the paper recipes of this method; the first is its default when no ``--preset`` is named.
        settings: the :class:`HealConfig` fields only this method (and the others that list them) reads; giving
            one to another method is refused instead of ignored.
        packages: optional packages it imports, checked before anything is loaded.
        make_student: ``(model, config, trainable_layers) -> model`` with exactly what this method trains left
            trainable (``trainable_layers``: decoder layer indices, None for all).
        adapter: it trains adapters that are merged into the weights at the end (``--keep-adapter`` saves them).
        uses_teacher: it needs the unpruned model (``--teacher``).
        resolve: ``config -> name`` of the method actually run (QLoRA without CUDA may run plain LoRA).
    """

    name: str
    help: str
    presets: tuple[Preset, ...]
    make_student: Callable[["nn.Module", "HealConfig", "list[int] | None"], "nn.Module"]
    settings: tuple[str, ...] = ()
    packages: tuple[str, ...] = ()
    adapter: bool = False
    uses_teacher: bool = False
    resolve: Callable[["HealConfig"], str] | None = None

    @property
    def default_preset(self) -> str:
        return self.presets[0].name

    def run_name(self, config: "HealConfig") -> str:
        return self.resolve(config) if self.resolve is not None else self.name


HEALING_METHODS: Registry[HealingMethod] = Registry("healing method", "--method")


def register(method: HealingMethod) -> HealingMethod:
    return HEALING_METHODS.register(method)


def all_presets() -> dict[str, Preset]:
    """Every registered method's presets by name."""
    return {preset.name: preset for method in HEALING_METHODS for preset in method.presets}


def preset_method(preset_name: str) -> HealingMethod:
    """The method a preset belongs to."""
    for method in HEALING_METHODS:
        if any(preset.name == preset_name for preset in method.presets):
            return method
    raise KeyError(preset_name)
