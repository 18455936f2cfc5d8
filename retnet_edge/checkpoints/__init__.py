"""Loaders for the RetNet checkpoints people hold: torchscale, fairseq, syncdoth (HF), fla (HF)."""
from __future__ import annotations

from pathlib import Path

from ..loader import Format, register_format
from ..native import build_model
from .formats import DETECT, FOREIGN, canonical_tensors


def _loader(name: str):
    def load(path: Path):
        cfg, tensors = canonical_tensors(path, name)
        return build_model(cfg, {k: t.read() for k, t in tensors.items()})

    return load


def _check(name: str):
    def check(path: Path, cfg) -> dict:
        _, tensors = canonical_tensors(path, name)
        files = [path] if path.is_file() else [p for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".pt")]
        return {"file_bytes": sum(p.stat().st_size for p in files),
                "dtypes": sorted({str(t.dtype).replace("torch.", "") for t in tensors.values()})}

    return check


for _name in FOREIGN:
    register_format(Format(_name, DETECT[_name], FOREIGN[_name].config, _loader(_name), _check(_name)))
