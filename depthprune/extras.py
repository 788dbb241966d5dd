"""Optional dependencies, checked before any expensive work starts.

A verb that will need matplotlib (plots), peft (LoRA), gguf, lm-eval, ... calls :func:`require` first, so that a
missing package is one line naming the ``pip install`` that fixes it, never a traceback after an hour of work.
"""

from __future__ import annotations

import importlib.util
from typing import Iterable

from .errors import DepthpruneError

# import name -> (pip distribution, depthprune extra that brings it)
PACKAGES = {
    "matplotlib": ("matplotlib", "report"),
    "peft": ("peft", "heal"),
    "accelerate": ("accelerate", "heal"),
    "datasets": ("datasets", "data"),
    "pyarrow": ("pyarrow", "data"),
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
    require_all((module, purpose) for module in modules)


def require_all(needs: Iterable[tuple[str, str]]) -> None:
    """Like :func:`require` for ``(module, purpose)`` pairs: one error listing every missing one and one pip install.

    A verb (or a recipe, for all its steps) collects what it will need and checks it once, before the slow part.
    """
    by_purpose: dict[str, list[str]] = {}
    for module, purpose in needs:
        if not is_available(module) and module not in by_purpose.setdefault(purpose, []):
            by_purpose[purpose].append(module)
    missing = {purpose: modules for purpose, modules in by_purpose.items() if modules}
    if not missing:
        return
    extras = sorted({PACKAGES[module][1] for modules in missing.values() for module in modules})
    reasons = "; ".join(f"{purpose} needs {', '.join(PACKAGES[m][0] for m in modules)}"
                        for purpose, modules in missing.items())
    raise DepthpruneError(f"{reasons}: pip install 'depthprune[{','.join(extras)}]'")


def model_needs(source) -> list[tuple[str, str]]:
    """What reading the model ``source`` needs: gguf for a ``.gguf`` file or an alias that names one."""
    from .loading import MODEL_ALIASES, LoadedModel

    if source is None or isinstance(source, LoadedModel):
        return []
    text = str(source)
    gguf_file = MODEL_ALIASES[text][1] if text in MODEL_ALIASES else text
    return [("gguf", f"reading {text}")] if gguf_file.lower().endswith(".gguf") else []


def data_needs(source, option: str = "--data") -> list[tuple[str, str]]:
    """What reading the data ``source`` (a spec string or DataSpec) needs: datasets for Hugging Face sources,
    pyarrow for parquet files."""
    from .data import HF_DATASETS

    text = getattr(source, "source", source)
    if text is None:
        return []
    text = str(text)
    if text in HF_DATASETS or text.startswith("hf:"):
        return [("datasets", f"{option} {text}")]
    name = text.lower().removesuffix(".gz")
    return [("pyarrow", f"{option} {text}")] if name.endswith(".parquet") else []
