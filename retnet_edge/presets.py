"""Named model sizes for random-weight models: tests, benchmarks, memory checks."""
from __future__ import annotations

import math

from .config import RetNetConfig
from .errors import ConfigError

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
}


def preset_config(name: str) -> RetNetConfig:
    """RetNetConfig of a named preset."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; expected one of {', '.join(PRESETS)}")
    return RetNetConfig(**PRESETS[name])


def init_random(preset: str, output, seed: int = 0, std: float = 0.02, dtype: str = "fp32", force: bool = False):
    """Write a random-weight native model of a preset; returns (path, parameter count)."""
    if not (math.isfinite(std) and std > 0):  # inf/NaN/negative std wrote unusable weights (issue 14)
        raise ConfigError(f"--std must be a positive finite number, got {std}")
    preset_config(preset).check_fits_in_memory(f"the {preset} preset")
    import torch  # here, not at the top: the preset table is read by the CLI of a runtime-only install

    from .checkpoints.native import save_pretrained
    from .model import RetNet

    model = RetNet.empty(preset_config(preset))
    model.init_weights(std, generator=torch.Generator().manual_seed(seed))
    return save_pretrained(model, output, dtype=dtype, force=force), model.num_parameters()
