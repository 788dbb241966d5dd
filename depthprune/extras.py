"""Optional dependencies, checked before any expensive work starts.

A verb that will need matplotlib (plots), peft (LoRA), gguf, lm-eval, ... calls :func:`require` first, so that a
missing package is one line naming the ``pip install`` that fixes it, never a traceback after an hour of work.
"""

from __future__ import annotations

import importlib.util

from .errors import DepthpruneError

# import name -> (pip distribution, depthprune extra that brings it)
PACKAGES = {
    "matplotlib": ("matplotlib", "report"),
    "peft": ("peft", "heal"),
    "accelerate": ("accelerate", "heal"),
    "datasets": ("datasets", "data"),
    "gguf": ("gguf", "gguf"),
    "lm_eval": ("lm-eval", "eval"),
    "bitsandbytes": ("bitsandbytes", "qlora"),
    "llama_cpp": ("llama-cpp-python", "llamacpp"),
}


def is_available(module: str) -> bool:
    """Whether ``module`` can be imported (found without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require(*modules: str, purpose: str) -> None:
    """Raise one :class:`DepthpruneError` naming the ``pip install`` for every missing module.

    Args:
        modules: import names, keys of :data:`PACKAGES`.
        purpose: what needs them, e.g. ``"score's plots"``; the message reads "<purpose> needs ...".
    """
    missing = [module for module in modules if not is_available(module)]
    if not missing:
        return
    extras = sorted({PACKAGES[module][1] for module in missing})
    names = ", ".join(PACKAGES[module][0] for module in missing)
    raise DepthpruneError(f"{purpose} needs {names}: pip install 'depthprune[{','.join(extras)}]'")
