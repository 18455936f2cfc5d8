"""retnet-edge: take a trained RetNet to laptop CPUs and phones with constant memory per token.

The model, loader and exporters (torch) are imported on first use of their names, so that running an
ONNX artifact (`retnet_edge.runtimes`) works on the base install, which has no torch.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

from .config import RetNetConfig  # noqa: E402
from .errors import (ArtifactError, CheckpointError, ConfigError, ExportError, ParityError,  # noqa: E402
                     RetNetEdgeError)

# public name -> the module that defines it (imported when the name is first read)
_LAZY = {"save_pretrained": ".checkpoints.native", "load": ".loader", "load_config": ".loader",
         "RetNet": ".model", "RetNetStep": ".step", "to_recurrent": ".step"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["RetNetConfig", "RetNet", "RetNetStep", "to_recurrent", "load", "load_config", "save_pretrained",
           "__version__", "RetNetEdgeError", "ArtifactError", "CheckpointError", "ConfigError", "ExportError",
           "ParityError"]
