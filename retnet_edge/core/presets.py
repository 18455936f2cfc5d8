"""Named model sizes for random-weight models: tests, benchmarks, memory checks."""
from __future__ import annotations

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
