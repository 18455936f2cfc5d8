"""retnet-edge: take a trained RetNet to laptop CPUs and phones with constant memory per token.

The package shows its stages (ARCHITECTURE.md draws them): `core` (config, the model, its three forms and
the step rewrite) → `checkpoints` (formats, loading, streaming, conversion) → `exporters` (targets, the
streamed export and its gate) → `runtimes` (running artifacts) → `bench` → `app` (what the CLI drives:
bundle, report, inspection, sessions). `base` (registry, outputs, paths, tokenizer) and `contract` (artifact
names, the manifest, quantization and export requests) are leaves every stage may import.

The model, loader and exporters (torch) are imported on first use of their names, so that running an
ONNX artifact (`retnet_edge.runtimes`) works on the base install, which has no torch.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

__version__ = "0.1.0"

from .core.config import RetNetConfig  # noqa: E402
from .errors import (  # noqa: E402
    ArtifactError,
    CheckpointError,
    ConfigError,
    ExportError,
    ParityError,
    RetNetEdgeError,
)

# public name -> the module that defines it (imported when the name is first read)
_LAZY = {"save_pretrained": ".checkpoints.native", "load": ".checkpoints.loader",
         "load_config": ".checkpoints.loader", "RetNet": ".core.model", "RetNetStep": ".core.step",
         "to_recurrent": ".core.step", "QuantConfig": ".contract.quant", "Manifest": ".contract.manifest",
         "ExportRequest": ".contract.request", "load_runner": ".runtimes", "export_model": ".exporters"}

# Deprecation shim for one release: module paths before the regrouping (issue 25) -> where they live now.
MOVED_MODULES = {
    "registry": "base.registry", "io_utils": "base.io_utils", "interrupts": "base.interrupts",
    "progress": "base.progress", "paths": "base.paths", "hub": "base.hub", "tokenizer": "base.tokenizer",
    "config": "core.config", "ops": "core.ops", "retention": "core.retention", "model": "core.model",
    "step": "core.step", "graph_check": "core.graph_check", "manifest": "contract.manifest",
    "quant": "contract.quant", "loader": "checkpoints.loader", "streaming": "checkpoints.streaming",
    "convert": "checkpoints.convert", "presets": "core.presets", "generate": "runtimes.generate",
    "evaluate": "runtimes.evaluate", "cli_utils": "app.cli_utils", "bundle": "app.bundle",
    "report": "app.report", "inspection": "app.inspection", "card": "app.card", "quality": "app.quality",
    "train": "app.train",
}


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """`import retnet_edge.quant` still works (with a DeprecationWarning) and gives the moved module."""

    def find_spec(self, fullname, path=None, target=None):
        old = fullname.removeprefix(__name__ + ".")
        if fullname.startswith(__name__ + ".") and old in MOVED_MODULES:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        new = f"{__name__}.{MOVED_MODULES[spec.name.removeprefix(__name__ + '.')]}"
        warnings.warn(f"{spec.name} moved to {new}; the old path goes in the next release",
                      DeprecationWarning, stacklevel=2)
        return importlib.import_module(new)

    def exec_module(self, module):
        pass


if not any(isinstance(f, _MovedModuleFinder) for f in sys.meta_path):
    sys.meta_path.append(_MovedModuleFinder())


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["RetNetConfig", "RetNet", "RetNetStep", "to_recurrent", "load", "load_config", "save_pretrained",
           "QuantConfig", "Manifest", "ExportRequest", "load_runner", "export_model",
           "__version__", "RetNetEdgeError", "ArtifactError", "CheckpointError", "ConfigError", "ExportError",
           "ParityError"]
