"""Checkpoint formats: the native one and the ones people hold (torchscale, fairseq, syncdoth, fla).

Importing the package registers every format in `FORMATS`, native first (detection runs in order).
"""
from __future__ import annotations

from . import (
    formats,  # noqa: F401,I001  (registers torchscale, fairseq, syncdoth, fla)
    native,  # noqa: F401,I001  (registers "native" before the foreign formats)
)
from .registry import FORMATS, Format

__all__ = ["FORMATS", "Format"]
