"""Lazy tensor sources over checkpoint files, and a streaming safetensors writer.

Converting a multi-GB checkpoint must not hold two copies of it: names, dtypes and shapes come from
headers, each tensor is read only when it is written, and the output is written tensor by tensor.
"""
from __future__ import annotations

import json
import os
import pickle
import re
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch

from ..base.confine import (
    checkpoint_root,
    distinct_files,
    inside,
    open_regular,
    plain_name,
    regular_file,
)
from ..base.io_utils import read_json
from ..errors import CheckpointError

ST_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
             "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
             "BOOL": torch.bool}
ST_NAMES = {v: k for k, v in ST_DTYPES.items()}


@dataclass
class LazyTensor:
    """A tensor known by dtype and shape, read on demand."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    read: Callable[[], torch.Tensor]


def safetensors_entries(path: Path) -> dict[str, LazyTensor]:
    """Parse a safetensors header (validating offsets against the file size); data is read per tensor."""
    path = Path(path)
    try:
        with open_regular(path, "weights file") as f:
            size = os.fstat(f.fileno()).st_size
            (n,) = struct.unpack("<Q", f.read(8))
            if n > size - 8 or n > 100 * 2**20:
                raise ValueError("header length past the end of the file")
            header = json.loads(f.read(n))
    except FileNotFoundError as exc:
        raise CheckpointError(f"{path} not found") from exc
    except (OSError, ValueError, struct.error, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not a valid safetensors file ({exc})") from exc
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} is not a valid safetensors file (its header is not a JSON object)")
    header.pop("__metadata__", None)
    base = 8 + n
    entries = {}
    for name, meta in header.items():
        try:
            dtype, shape, (start, end) = ST_DTYPES[meta["dtype"]], tuple(meta["shape"]), meta["data_offsets"]
            if not all(isinstance(x, int) and x >= 0 for x in (*shape, start, end)) or start > end:
                raise ValueError("shape and offsets must be non-negative integers")
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: bad header entry for {str(name)[:80]}") from exc
        numel = 1
        for d in shape:
            numel *= d
        if end - start != numel * torch.empty(0, dtype=dtype).element_size() or base + end > size:
            raise CheckpointError(f"{path} is not a valid safetensors file (truncated or corrupt: tensor {name} "
                                  "runs past the data)")
        entries[name] = LazyTensor(dtype, shape, _range_reader(path, base + start, end - start, dtype, shape))
    _check_ranges(path, {name: tuple(meta["data_offsets"]) for name, meta in header.items()})
    return entries


def _check_ranges(path: Path, ranges: dict[str, tuple[int, int]]) -> None:
    """Byte ranges must not overlap (the safetensors format forbids it, and its own library refuses such
    files): two tensors sharing bytes would load one tensor's weights as another's, silently."""
    ordered = sorted((start, end, name) for name, (start, end) in ranges.items() if end > start)
    for (s0, e0, a), (s1, _, b) in zip(ordered, ordered[1:]):
        if s1 < e0:
            raise CheckpointError(f"{path} is not a valid safetensors file (tensors {a} and {b} share bytes "
                                  f"{s1}..{min(e0, _)})")


def _range_reader(path: Path, offset: int, length: int, dtype: torch.dtype, shape) -> Callable[[], torch.Tensor]:
    def read() -> torch.Tensor:
        buf = bytearray(length)
        with open_regular(path, "weights file") as f:
            f.seek(offset)
            if f.readinto(buf) != length:
                raise CheckpointError(f"{path} is truncated")
        return torch.frombuffer(buf, dtype=dtype).reshape(shape) if length else torch.empty(shape, dtype=dtype)

    return read


def checkpoint_file(directory: Path, name: str, what: str) -> Path:
    """A file a checkpoint directory holds or names: a plain name that resolves inside the checkpoint's
    root (`confine.checkpoint_root`) after symlinks. Readers then open it as a regular file only."""
    plain_name(name, what)
    return inside(checkpoint_root(directory), Path(directory) / name, what)


def sharded_entries(index_file: Path) -> dict[str, LazyTensor]:
    """All tensors of a sharded checkpoint via its *.index.json weight_map; every shard it names is a plain
    name inside the checkpoint, a regular file, and listed once."""
    index_file = Path(index_file)
    weight_map = read_json(index_file).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index_file} has no weight_map")
    bad = next(((k, v) for k, v in weight_map.items() if not isinstance(v, str)), None)
    if bad is not None:
        raise CheckpointError(f"{index_file}: weight_map must map tensor names to shard file names; "
                              f"{bad[0][:80]!r} maps to a {type(bad[1]).__name__}")
    what = f"shard named by {index_file.name}"
    shards = {s: checkpoint_file(index_file.parent, s, what) for s in sorted(set(weight_map.values()))}
    distinct_files([regular_file(p, what) for p in shards.values()], str(index_file))
    entries: dict[str, LazyTensor] = {}
    for shard, path in shards.items():
        part = safetensors_entries(path)
        entries.update({k: v for k, v in part.items() if weight_map.get(k) == shard})
    missing = sorted(set(weight_map) - set(entries))
    if missing:
        raise CheckpointError(f"{index_file}: tensors listed but not found in their shards: {', '.join(missing[:8])}")
    return entries


def load_pickle(path: Path, allow: Iterable[type] = ()) -> object:
    """torch.load(weights_only=True, mmap=True): never runs code from the file; `allow` lists extra safe types."""
    regular_file(path, "checkpoint file")  # torch.load of a FIFO blocks forever
    try:
        with torch.serialization.safe_globals(list(allow)), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's protocol-version notices would break the one-line error
            try:
                obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as exc:
                if "mmap can only be used" not in str(exc):
                    raise
                # legacy (pre-zipfile) torch.save format cannot be memory-mapped: read it, still weights_only
                obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise CheckpointError(f"{path} not found") from exc
    except pickle.UnpicklingError as exc:
        # torch's message advises weights_only=False (running the file's code): quote only what it refused
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        what = f"it references {found.group(1)}, which is not a tensor or a plain container" if found else \
            "it holds objects other than tensors and plain containers"
        raise CheckpointError(f"{path} was refused by the safe loader: {what}",
                              hint="only plain tensors and containers are loaded; code in a pickle is never run") from exc
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({type(exc).__name__}: {exc})") from exc
    return obj


def tensors_of(state_dict: dict) -> dict[str, LazyTensor]:
    """LazyTensors over an already-loaded (mmap'ed) state dict; non-tensors raise."""
    out = {}
    for k, v in state_dict.items():
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(f"checkpoint entry {k} is a {type(v).__name__}, not a tensor")
        out[k] = LazyTensor(v.dtype, tuple(v.shape), (lambda t=v: t))
    return out


def write_safetensors_streaming(path: Path, items: list[tuple[str, LazyTensor]], dtype: torch.dtype | None,
                                metadata: dict[str, str] | None = None,
                                progress: Callable[[int, int], None] | None = None) -> None:
    """Write a safetensors file one tensor at a time (header first): peak memory is one tensor."""
    out_dtype = {name: (dtype if dtype is not None and t.dtype.is_floating_point else t.dtype) for name, t in items}
    header: dict = {"__metadata__": metadata or {}}
    offset = 0
    for name, t in items:
        numel = 1
        for d in t.shape:
            numel *= d
        nbytes = numel * torch.empty(0, dtype=out_dtype[name]).element_size()
        header[name] = {"dtype": ST_NAMES[out_dtype[name]], "shape": list(t.shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for i, (name, t) in enumerate(items):
            x = t.read().to(out_dtype[name]).contiguous()
            if x.numel():
                f.write(x.reshape(-1).view(torch.uint8).numpy().data)
            if progress:
                progress(i + 1, len(items))
