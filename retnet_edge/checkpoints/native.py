"""The native format: a directory with config.json (RetNetConfig + format tag) and model.safetensors.

Also where canonical weights become a `RetNet` (`build_model`) and where a model is saved (`save_pretrained`).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from ..base.io_utils import atomic_output_dir, read_json, write_safetensors
from ..core.config import RetNetConfig
from ..core.model import RetNet
from ..errors import CheckpointError
from .registry import Format, register_format
from .tensors import LazyTensor, checkpoint_file, safetensors_entries

FORMAT_NAME = "retnet-edge"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def is_native(path: Path) -> bool:
    """True when path is a directory whose config.json carries our format tag."""
    cfg = Path(path) / CONFIG_FILE
    if not cfg.is_file():
        return False
    try:
        return read_json(cfg).get("format") == FORMAT_NAME
    except CheckpointError:
        return False


def read_native_config(path: Path) -> RetNetConfig:
    """RetNetConfig from a native directory's config.json."""
    data = read_json(checkpoint_file(Path(path), CONFIG_FILE, "config"))
    if data.pop("format", None) != FORMAT_NAME:
        raise CheckpointError(f"{path}/{CONFIG_FILE} is not a retnet-edge config (no \"format\": \"{FORMAT_NAME}\")")
    version = data.pop("format_version", None)
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path}/{CONFIG_FILE} has format_version {version!r}; this tool reads {FORMAT_VERSION}")
    return RetNetConfig.from_dict(data)


def expected_shapes(cfg: RetNetConfig) -> dict[str, tuple[int, ...]]:
    """Every native key and its shape for a config (the tied head is not stored)."""
    with torch.device("meta"):
        model = RetNet(cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if not _is_tied_alias(cfg, k)}


def _is_tied_alias(cfg: RetNetConfig, key: str) -> bool:
    return cfg.tie_embeddings and key == "lm_head.weight"


def first_few(names: list[str], n: int = 6) -> str:
    """A bounded list for one-line errors: the first n names, then how many more (10,000 layers of
    missing keys made a 3.3 MB message)."""
    return ", ".join(names[:n]) + (f" and {len(names) - n:,} more" if len(names) > n else "")


def check_state_dict(cfg: RetNetConfig, shapes: dict[str, tuple[int, ...]], source: str) -> None:
    """Raise CheckpointError listing missing, unexpected and mis-shaped keys against the config."""
    want = expected_shapes(cfg)
    missing = sorted(set(want) - set(shapes))
    extra = sorted(set(shapes) - set(want))
    wrong = sorted(f"{k} {tuple(shapes[k])} (expected {want[k]})" for k in set(want) & set(shapes)
                   if tuple(shapes[k]) != want[k])
    problems = [f"missing keys: {first_few(missing)}" if missing else "",
                f"unexpected keys: {first_few(extra)}" if extra else "",
                f"wrong shapes: {first_few(wrong)}" if wrong else ""]
    problems = [p for p in problems if p]
    if problems:
        raise CheckpointError(f"{source}: " + "; ".join(problems))


def native_tensors(path: Path, cfg: RetNetConfig) -> dict[str, LazyTensor]:
    """model.safetensors as lazy tensors, validated against the config from its header alone."""
    weights = checkpoint_file(Path(path), WEIGHTS_FILE, "weights file")
    entries = safetensors_entries(weights)
    bad_dtype = sorted(k for k, t in entries.items() if not t.dtype.is_floating_point)
    if bad_dtype:
        raise CheckpointError(f"{weights}: non-float tensors {', '.join(bad_dtype)}")
    check_state_dict(cfg, {k: t.shape for k, t in entries.items()}, str(weights))
    return entries


def build_model(cfg: RetNetConfig, state_dict: dict[str, torch.Tensor]) -> RetNet:
    """Materialise a fp32 RetNet from canonical weights without a random init pass."""
    check_state_dict(cfg, {k: tuple(v.shape) for k, v in state_dict.items()}, "checkpoint")
    model = RetNet.empty(cfg)
    model.load_state_dict({k: v.float() for k, v in state_dict.items()}, strict=False, assign=True)
    if cfg.tie_embeddings:  # assign=True replaced embed.weight: re-tie
        model.lm_head.weight = model.embed.weight
    return model.eval()


def write_native_config(directory: Path, cfg: RetNetConfig) -> None:
    """config.json of the native format: the RetNetConfig fields plus the format tag and version."""
    (Path(directory) / CONFIG_FILE).write_text(json.dumps(
        {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **cfg.to_dict()}, indent=2, sort_keys=True))


def save_pretrained(model: RetNet, path: str | os.PathLike, dtype: str = "fp32", force: bool = False,
                    extra_files: dict[str, Path] | None = None) -> Path:
    """Write model to `path` atomically in the native format; extra_files are copied in (tokenizer, card)."""
    if dtype not in DTYPES:
        raise CheckpointError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
    cfg = model.cfg
    tensors = {k: v.to(DTYPES[dtype]) for k, v in model.state_dict().items() if not _is_tied_alias(cfg, k)}
    with atomic_output_dir(path, force=force) as tmp:
        write_native_config(tmp, cfg)
        write_safetensors(tensors, tmp / WEIGHTS_FILE, metadata={"format": FORMAT_NAME, "dtype": dtype})
        for name, src in (extra_files or {}).items():
            shutil.copyfile(src, tmp / name)
    return Path(path)


register_format(Format("native", is_native, read_native_config, native_tensors,
                       lambda p: [Path(p) / WEIGHTS_FILE]))
