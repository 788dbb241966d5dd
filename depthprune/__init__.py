"""depthprune: make large language models shallower, and prove what it cost.

The Python API mirrors the CLI: ``depthprune.api.VERB(...)`` is ``depthprune VERB ...`` (see ``depthprune.api``);
the most used pieces are also here: ``depthprune.prune(...)``, ``depthprune.load_model(...)``, ...
"""

__version__ = "0.1.0"

from .adapter import ModelAdapter, remove_layers, supported_architectures  # noqa: E402
from .data import DataSpec, calibration_blocks, load_texts  # noqa: E402
from .errors import DepthpruneError  # noqa: E402
from .info import info  # noqa: E402
from .loading import LoadedModel, load_model  # noqa: E402
from .plan import PrunePlan, parse_layer_list  # noqa: E402
from .prune import prune  # noqa: E402
from .saving import save  # noqa: E402

__all__ = [
    "__version__", "DataSpec", "DepthpruneError", "LoadedModel", "ModelAdapter", "PrunePlan", "calibration_blocks",
    "info", "load_model", "load_texts", "parse_layer_list", "prune", "remove_layers", "save",
    "supported_architectures",
]
