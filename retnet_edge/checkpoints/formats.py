"""The foreign checkpoint formats (torchscale, fairseq, syncdoth, fla) as `FORMATS` entries.

Each format is data (a key map, ignore patterns, a config translator, a detector) plus a few lines to
find its files; `map_tensors` turns its tensors into canonical names after checking every name and
shape, and loading a model and streaming a conversion both start from that.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..base.io_utils import read_json
from ..core.config import RetNetConfig
from ..core.ops import log_decay, rotary_freqs
from ..errors import CheckpointError, ConfigError
from . import keymaps
from .configs import from_fla, from_torchscale
from .native import check_state_dict
from .registry import Format, register_format
from .tensors import (
    LazyTensor,
    checkpoint_file,
    load_pickle,
    safetensors_entries,
    sharded_entries,
    tensors_of,
)

WEIGHT_FILES = ("model.safetensors.index.json", "model.safetensors", "pytorch_model.bin")


def find_weights(directory: Path) -> dict[str, LazyTensor]:
    """Tensors of an HF-style directory: sharded or single safetensors, else pytorch_model.bin (safe pickle).

    Every file is confined to the checkpoint (`tensors.checkpoint_file`) and must be a regular file: a
    FIFO or a symlink out of the directory is refused by name, not skipped."""
    for name in WEIGHT_FILES:
        if os.path.lexists(directory / name):
            f = checkpoint_file(directory, name, "weights file")
            if name.endswith("index.json"):
                return sharded_entries(f)
            if name.endswith(".safetensors"):
                return safetensors_entries(f)
            sd = load_pickle(f)
            return tensors_of(sd.get("state_dict", sd) if isinstance(sd, dict) else {})
    pts = sorted(directory.glob("*.pt")) + sorted(directory.glob("*.safetensors"))
    if len(pts) == 1:
        return file_tensors(checkpoint_file(directory, pts[0].name, "weights file"))
    raise CheckpointError(f"{directory}: no weights found (looked for {', '.join(WEIGHT_FILES)} or one *.pt)")


def file_tensors(path: Path) -> dict[str, LazyTensor]:
    if path.suffix == ".safetensors":
        return safetensors_entries(path)
    sd = load_pickle(path)
    if not isinstance(sd, dict):
        raise CheckpointError(f"{path} does not hold a state dict")
    return tensors_of(sd.get("model", sd.get("state_dict", sd)))


@dataclass(frozen=True)
class ForeignFormat:
    """A foreign format: its key map, ignore patterns, fused-tensor splits, config translator and files."""

    name: str
    keymap: dict
    ignore: tuple[str, ...]
    config: Callable[[Path], RetNetConfig]
    tensors: Callable[[Path], dict[str, LazyTensor]]
    detect: Callable[[Path], bool]
    splits: dict | None = None


def map_tensors(fmt: ForeignFormat, cfg: RetNetConfig, src: dict[str, LazyTensor]) -> dict[str, LazyTensor]:
    """Apply the key map (and fused splits); unknown keys and config/buffer mismatches raise."""
    table = keymaps.expand(fmt.keymap, cfg.n_layers)
    splits = keymaps.expand(fmt.splits or {}, cfg.n_layers)
    out: dict[str, LazyTensor] = {}
    unknown = []
    for name, t in src.items():
        if name in splits and t.shape[0] == 2 * cfg.ffn_dim and (name.replace("gate_proj", "up_proj") not in src):
            for half, dst in enumerate(splits[name]):  # fused [2I, H] -> two [I, H]
                out[dst] = LazyTensor(t.dtype, (cfg.ffn_dim, *t.shape[1:]),
                                      lambda t=t, h=half: t.read()[h * cfg.ffn_dim : (h + 1) * cfg.ffn_dim])
        elif name in table:
            if table[name] in out:
                raise CheckpointError(f"{fmt.name}: two checkpoint keys map to {table[name]}")
            out[table[name]] = t
        elif keymaps.ignored(name, fmt.ignore):
            _check_buffer(name, t, cfg)
        else:
            unknown.append(name)
    if unknown:
        raise CheckpointError(f"{fmt.name} checkpoint has unexpected keys: {', '.join(sorted(unknown)[:12])}"
                              + (f" (+{len(unknown) - 12} more)" if len(unknown) > 12 else ""))
    not_float = sorted(k for k, t in out.items() if not t.dtype.is_floating_point)
    if not_float:
        raise CheckpointError(f"{fmt.name} checkpoint has non-float weights: {', '.join(not_float)}")
    if cfg.tie_embeddings:
        out.pop("lm_head.weight", None)
    check_state_dict(cfg, {k: v.shape for k, v in out.items()}, f"{fmt.name} checkpoint")
    return out


def _check_buffer(name: str, t: LazyTensor, cfg: RetNetConfig) -> None:
    """torchscale's persisted rotary/decay buffers must equal what the config implies (else: other math)."""
    if name.endswith("retnet_rel_pos.decay"):
        want = log_decay(cfg)
    elif name.endswith("retnet_rel_pos.angle"):
        want = rotary_freqs(cfg).repeat_interleave(2)
    else:
        return
    got = t.read().float()
    if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-4, atol=1e-6):
        raise ConfigError(f"checkpoint buffer {name} does not match the config's {cfg.decay} decay / rotary "
                          "(a variant the canonical model cannot express, e.g. xPos or trained decays)")


def _hf_config(directory: Path) -> dict:
    return read_json(checkpoint_file(directory, "config.json", "config"))


def _fairseq_config(path: Path) -> RetNetConfig:
    obj = _fairseq_obj(path)
    args = obj.get("args")
    cfg = obj.get("cfg")
    if isinstance(cfg, dict) and isinstance(cfg.get("model"), (dict, argparse.Namespace)):
        model_cfg = cfg["model"]
    elif args is not None:
        model_cfg = args
    else:
        raise CheckpointError(f"{path}: fairseq checkpoint without args or cfg.model")
    d = vars(model_cfg) if isinstance(model_cfg, argparse.Namespace) else dict(model_cfg)
    return from_torchscale(d, "fairseq")


def _fairseq_obj(path: Path) -> dict:
    obj = load_pickle(path, allow=[argparse.Namespace])
    if not isinstance(obj, dict) or "model" not in obj:
        raise CheckpointError(f"{path} is not a fairseq checkpoint (no 'model' entry)")
    return obj


def _torchscale_config(path: Path) -> RetNetConfig:
    cfg_file = checkpoint_file(path, "config.json", "config") if path.is_dir() else path.with_name("config.json")
    if not cfg_file.is_file():
        raise CheckpointError(f"a torchscale state dict carries no config: put a torchscale-style config.json "
                              f"(decoder_embed_dim, ...) beside {path.name}")
    return from_torchscale(read_json(cfg_file), "torchscale")


def _config_json(path: Path) -> dict | None:
    f = path / "config.json"
    if not path.is_dir() or not f.is_file():
        return None
    try:
        return read_json(f)
    except CheckpointError:
        return None


def _torchscale_keys(path: Path) -> bool:
    try:
        return any(k.startswith("model.") for k in find_weights(path))
    except CheckpointError:
        return False


def _weight_files(path: Path) -> list[Path]:
    return [path] if path.is_file() else [p for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".pt")]


FOREIGN: tuple[ForeignFormat, ...] = (
    ForeignFormat("torchscale", keymaps.TORCHSCALE, keymaps.TORCHSCALE_IGNORE, _torchscale_config,
                  lambda p: find_weights(p) if p.is_dir() else file_tensors(p),
                  detect=lambda p: (c := _config_json(p)) is not None and "decoder_embed_dim" in c
                  and not _torchscale_keys(p)),
    ForeignFormat("fairseq", keymaps.FAIRSEQ, keymaps.FAIRSEQ_IGNORE, _fairseq_config,
                  lambda p: tensors_of(_fairseq_obj(p)["model"]),
                  detect=lambda p: p.is_file() and p.suffix == ".pt"),
    ForeignFormat("syncdoth", keymaps.SYNCDOTH, keymaps.SYNCDOTH_IGNORE,
                  lambda p: from_torchscale(_hf_config(p), "syncdoth"), find_weights,
                  detect=lambda p: (c := _config_json(p)) is not None and "decoder_embed_dim" in c
                  and _torchscale_keys(p)),
    ForeignFormat("fla", keymaps.FLA, keymaps.FLA_IGNORE, lambda p: from_fla(_hf_config(p)), find_weights,
                  detect=lambda p: (c := _config_json(p)) is not None and "hidden_size" in c
                  and c.get("model_type") == "retnet",
                  splits=keymaps.FLA_FUSED),
)

for _fmt in FOREIGN:
    register_format(Format(_fmt.name, _fmt.detect, _fmt.config,
                           lambda path, cfg, fmt=_fmt: map_tensors(fmt, cfg, fmt.tensors(path)), _weight_files))
