"""`init_random`: a random-weight native model of a named size (tests, benchmarks, export-memory runs)."""
from __future__ import annotations

import math

import torch

from ..base.io_utils import atomic_output_dir
from ..core.model import RetNet
from ..core.presets import preset_config
from ..errors import ConfigError
from .native import DTYPES, FORMAT_NAME, WEIGHTS_FILE, write_native_config
from .tensors import LazyTensor, write_safetensors_streaming


def init_random(preset: str, output, seed: int = 0, std: float = 0.02, dtype: str = "fp32", force: bool = False):
    """Write a random-weight native model of a preset; returns (path, parameter count).

    Streamed: each tensor is drawn (in `RetNet.init_weights`' order, from one generator, so the values are
    the ones a materialised model would get), cast and written before the next, so a 7B preset needs no
    more memory than its largest tensor."""
    if not (math.isfinite(std) and std > 0):  # inf/NaN/negative std wrote unusable weights (issue 14)
        raise ConfigError(f"--std must be a positive finite number, got {std}")
    cfg = preset_config(preset)
    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
    with torch.device("meta"):
        shapes = [(n, tuple(p.shape)) for n, p in RetNet(cfg).named_parameters()]  # tied head listed once
    gen = torch.Generator().manual_seed(seed)

    def draw(shape: tuple[int, ...]) -> torch.Tensor:
        t = torch.empty(shape)
        return t.normal_(0.0, std, generator=gen) if len(shape) == 2 else t.fill_(1.0)

    items = [(n, LazyTensor(torch.float32, s, lambda s=s: draw(s))) for n, s in shapes]
    with atomic_output_dir(output, force=force) as tmp:
        write_native_config(tmp, cfg)
        write_safetensors_streaming(tmp / WEIGHTS_FILE, items, DTYPES[dtype],
                                    metadata={"format": FORMAT_NAME, "dtype": dtype})
    return output, cfg.parameter_count()
