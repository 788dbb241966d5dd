"""Layer-importance criteria: one module per criterion, all fed by one streaming calibration pass.

The registry (:data:`CRITERIA`) is filled by importing each criterion module here, by name (no package walking);
the order here is the order every list of criteria shows.
"""

from . import angular, bi, ppl, taylor, magnitude, sleb, last  # noqa: F401,I001  (each registers itself)
from .base import CRITERIA, Criterion, CriterionOption, ScorerConfig, parse_metrics, register, scored_names  # noqa: E402
from .scores import make_configs, score, score_model  # noqa: E402

__all__ = ["CRITERIA", "Criterion", "CriterionOption", "ScorerConfig", "make_configs", "parse_metrics", "register",
           "score", "score_model", "scored_names"]
