"""retnet-edge: take a trained RetNet to laptop CPUs and phones with constant memory per token."""
from __future__ import annotations

__version__ = "0.1.0"

from .checkpoints.native import save_pretrained  # noqa: E402
from .config import RetNetConfig  # noqa: E402
from .errors import (ArtifactError, CheckpointError, ConfigError, ExportError, ParityError,  # noqa: E402
                     RetNetEdgeError)
from .loader import load, load_config  # noqa: E402
from .model import RetNet  # noqa: E402
from .step import RetNetStep, to_recurrent  # noqa: E402

__all__ = ["RetNetConfig", "RetNet", "RetNetStep", "to_recurrent", "load", "load_config", "save_pretrained",
           "__version__", "RetNetEdgeError", "ArtifactError", "CheckpointError", "ConfigError", "ExportError",
           "ParityError"]
