"""Checkpoint formats as registry entries: how to recognise a format, read its config, and list its tensors.

A format is data plus three small functions. Everything else — loading a model, header-only checks,
streaming conversion — is generic over `Format.tensors`, which gives the canonical names (the native
keys) as lazy tensors already checked against the config.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..base.registry import Registry
from ..core.config import RetNetConfig
from ..errors import CheckpointError
from .tensors import LazyTensor


@dataclass(frozen=True)
class Format:
    """A checkpoint format: recognise it, read its config alone, and map its tensors to canonical names."""

    name: str
    detect: Callable[[Path], bool]
    read_config: Callable[[Path], RetNetConfig]
    tensors: Callable[[Path, RetNetConfig], dict[str, LazyTensor]]  # canonical name -> lazy tensor, checked
    weight_files: Callable[[Path], list[Path]]  # the files holding the weights (sizes for `inspect`)


FORMATS: Registry[Format] = Registry("checkpoint format", CheckpointError)


def register_format(fmt: Format) -> Format:
    return FORMATS.register(fmt.name)(fmt)
