"""Checkpoints: the native format and the ones people hold (torchscale, fairseq, syncdoth, fla), read whole
or one layer at a time.

Owns: `registry` (`FORMATS`), `native`, `formats` + `keymaps` + `configs` (foreign formats as data),
`tensors` (lazy readers, safe pickles, the streaming writer), `loader` (`load(path) -> RetNet`),
`streaming` (`open_weights`: a checkpoint read layer by layer), `convert`, `random_init`. Importing the
package registers every format, native first (detection runs in order). May import: `base`, `core`,
`contract`, `errors`.
"""
from __future__ import annotations

from . import (
    formats,  # noqa: F401,I001  (registers torchscale, fairseq, syncdoth, fla)
    native,  # noqa: F401,I001  (registers "native" before the foreign formats)
)
from .registry import FORMATS, Format

__all__ = ["FORMATS", "Format"]
