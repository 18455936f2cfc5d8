"""Named model sizes for random-weight models: tests, benchmarks, memory checks."""
from __future__ import annotations

import math

from ..core.config import RetNetConfig
from ..errors import ConfigError

PRESETS: dict[str, dict] = {
    # a test-sized model: every code path, milliseconds per step
    "tiny": dict(vocab_size=512, d_model=64, n_layers=2, n_heads=2, ffn_dim=128),
    # the bundled demo model's shape (~17M parameters; vocab set by the trained tokenizer)
    "mini": dict(vocab_size=4096, d_model=384, n_layers=6, n_heads=6, ffn_dim=1024),
    # the benchmark size: the same shape as the 220M Llama llama.cpp was measured with
    "small": dict(vocab_size=32000, d_model=1024, n_layers=12, n_heads=4, ffn_dim=2816),
    # fla-hub/retnet-1.3B-100B's shape (fla rotary, shared group-norm weight, no embedding scale)
    "1.3b": dict(vocab_size=32000, d_model=2048, n_layers=24, n_heads=8, value_dim=4096, ffn_dim=2816,
                 rotary="fla", group_norm_affine="shared"),
    # issue 12's 7B shape (8.6B parameters as specified: 17.3 GB in bf16): the large-model export check
    "7b": dict(vocab_size=32000, d_model=4096, n_layers=32, n_heads=16, value_dim=8192, ffn_dim=11008,
               rotary="fla", group_norm_affine="shared"),
}


def preset_config(name: str) -> RetNetConfig:
    """RetNetConfig of a named preset."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; expected one of {', '.join(PRESETS)}")
    return RetNetConfig(**PRESETS[name])


def init_random(preset: str, output, seed: int = 0, std: float = 0.02, dtype: str = "fp32", force: bool = False):
    """Write a random-weight native model of a preset; returns (path, parameter count).

    Streamed: each tensor is drawn (in `RetNet.init_weights`' order, from one generator, so the values are
    the ones a materialised model would get), cast and written before the next, so a 7B preset needs no
    more memory than its largest tensor."""
    if not (math.isfinite(std) and std > 0):  # inf/NaN/negative std wrote unusable weights (issue 14)
        raise ConfigError(f"--std must be a positive finite number, got {std}")
    cfg = preset_config(preset)
    import torch  # here, not at the top: the preset table is read by the CLI of a runtime-only install

    from ..base.io_utils import atomic_output_dir
    from ..core.model import RetNet
    from .native import DTYPES, FORMAT_NAME, WEIGHTS_FILE, write_native_config
    from .tensors import LazyTensor, write_safetensors_streaming

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
