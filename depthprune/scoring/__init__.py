"""Layer-importance criteria: one module per criterion, all fed by one streaming calibration pass.

The registry is filled by importing each criterion module here, by name (no package walking).
"""

from . import angular, bi, magnitude, ppl, sleb, taylor  # noqa: F401  (each registers itself)
from .api import make_configs, score, score_model  # noqa: E402
from .base import SCORERS, ScorerConfig, get_entry, parse_metrics  # noqa: E402

__all__ = ["SCORERS", "ScorerConfig", "get_entry", "make_configs", "parse_metrics", "score", "score_model"]
