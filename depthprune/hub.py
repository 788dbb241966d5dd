"""One quick look at the Hugging Face hub before anything downloads from it.

Offline, transformers and datasets retry for 30-50 s and print dozens of lines before failing. One request with a
short timeout tells the same in a second, so a hub id or an online data source gets one clear line instead.
"""

from __future__ import annotations

import functools
import os

from .errors import DepthpruneError

PROBE_TIMEOUT_S = 5.0


def hub_offline_by_setting() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


@functools.lru_cache(maxsize=1)
def hub_reachable() -> bool:
    """Whether one request to the hub answers within :data:`PROBE_TIMEOUT_S` (asked once per process)."""
    if hub_offline_by_setting():
        return False
    import urllib.error
    import urllib.request

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    try:
        urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=PROBE_TIMEOUT_S)
    except urllib.error.HTTPError:
        return True         # the hub answered, even if not with 200
    except Exception:       # DNS, refused, timeout, TLS: all mean "cannot download from the hub now"
        return False
    return True


def require_hub(what: str, fix: str) -> None:
    """Raise one line when the hub cannot be reached: ``what`` needs it, ``fix`` says what to give instead."""
    if not hub_reachable():
        reason = "HF_HUB_OFFLINE is set" if hub_offline_by_setting() else "the Hugging Face hub cannot be reached"
        raise DepthpruneError(f"{what} needs a download but {reason}; {fix}")


def cached_on_disk(repo_id: str) -> bool:
    """Whether the hub cache already holds this model's config (then it loads offline)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, "config.json")
    except Exception:
        return False
    return isinstance(found, str)
