"""The project's error types: one base, a few typed subclasses.

The CLI maps `RetNetEdgeError` to a one-line message and exit 1, and `ParityError` to exit 3.
"""
from __future__ import annotations


class RetNetEdgeError(Exception):
    """Base of every error the tool reports to users as one line (exit 1)."""

    exit_code = 1
    hint: str | None = None

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        if hint is not None:
            self.hint = hint


class ConfigError(RetNetEdgeError):
    """A configuration that is inconsistent or that the canonical model cannot express."""


class CheckpointError(RetNetEdgeError):
    """A checkpoint that is missing, malformed, of unknown format or with wrong keys/shapes."""


class ArtifactError(RetNetEdgeError):
    """An exported artifact that is missing, modified, corrupt or unreadable by its runtime."""


class ExportError(RetNetEdgeError):
    """An export that could not be produced (tracing, lowering, quantization, writing)."""


class ParityError(RetNetEdgeError):
    """An artifact that disagrees with eager PyTorch past its tolerance (exit 3)."""

    exit_code = 3


# top-level module -> the pip extra that installs it (the base install runs ONNX artifacts only)
EXTRA_OF = {"torch": "export", "onnxscript": "export", "executorch": "export", "torchao": "export",
            "matplotlib": "bench", "psutil": "bench", "lm_eval": "eval", "starlette": "serve", "uvicorn": "serve",
            "jinja2": "serve", "llama_cpp": "llamacpp", "gguf": "llamacpp"}


class MissingExtraError(RetNetEdgeError):
    """A command that needs a dependency of an optional extra on an install without it."""


def missing_extra(exc: ModuleNotFoundError) -> MissingExtraError | None:
    """The one-line error for a missing optional dependency, or None when it is not one of ours."""
    top = (exc.name or "").split(".")[0]
    if top not in EXTRA_OF:
        return None
    extra = EXTRA_OF[top]
    return MissingExtraError(f"this needs {top}, which the base install leaves out",
                             hint=f"pip install 'retnet-edge[{extra}]'")
