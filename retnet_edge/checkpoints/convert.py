"""`convert(src, output)`: any supported checkpoint -> the native format, streamed tensor by tensor.

No model is built and no tensor is upcast: peak memory is about one tensor plus the interpreter, so a
2.7B checkpoint converts on a laptop.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Callable

import torch

from ..base.confine import TOKENIZER_MAX_BYTES, regular_file
from ..base.io_utils import atomic_output_dir, check_distinct
from ..contract import TOKENIZER_FILES
from ..errors import CheckpointError
from .loader import get_format, resolve_path
from .native import (
    DTYPES,
    FORMAT_NAME,
    WEIGHTS_FILE,
    expected_shapes,
    write_native_config,
)
from .tensors import checkpoint_file, write_safetensors_streaming


def convert(src: str, output: str | Path, format: str = "auto", dtype: str = "auto", force: bool = False,
            progress: Callable[[int, int], None] | None = None) -> dict:
    """Convert a checkpoint to the native format; returns a summary of what was mapped."""
    if dtype != "auto" and dtype not in DTYPES:
        raise CheckpointError(f"unknown dtype {dtype!r}; expected auto, {', '.join(DTYPES)}")
    t0 = time.time()
    path = resolve_path(src)
    check_distinct(path, output)
    fmt = get_format(path, format)
    cfg = fmt.read_config(path)
    tensors = fmt.tensors(path, cfg)
    order = [k for k in expected_shapes(cfg) if k in tensors]  # canonical order: embed, layers..., head
    src_dtypes = sorted({str(tensors[k].dtype).replace("torch.", "") for k in order})
    target = DTYPES[dtype] if dtype != "auto" else None
    # checked before anything is written: confined to the checkpoint, regular, bounded
    tokenizers = {name: regular_file(checkpoint_file(path, name, "tokenizer file"), "tokenizer file",
                                     TOKENIZER_MAX_BYTES)
                  for name in TOKENIZER_FILES if path.is_dir() and os.path.lexists(path / name)}
    with atomic_output_dir(output, force=force) as tmp:
        write_native_config(tmp, cfg)
        write_safetensors_streaming(tmp / WEIGHTS_FILE, [(k, tensors[k]) for k in order], target,
                                    metadata={"format": FORMAT_NAME, "source_format": fmt.name}, progress=progress)
        for name, file in tokenizers.items():
            shutil.copyfile(file, tmp / name)
        size = (tmp / WEIGHTS_FILE).stat().st_size
    return {"source": str(path), "format": fmt.name, "output": str(output), "tensors": len(order),
            "parameters": sum(int(torch.Size(tensors[k].shape).numel()) for k in order),
            "source_dtypes": src_dtypes, "dtype": dtype if dtype != "auto" else "as source",
            "bytes": size, "tokenizer": list(tokenizers), "config": cfg.to_dict(), "seconds": round(time.time() - t0, 2)}
