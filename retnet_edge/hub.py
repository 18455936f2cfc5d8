"""Hugging Face Hub ids as model paths: `org/name` or `org/name@revision` -> a local snapshot directory.

Only what a model needs is fetched (config, safetensors shards and their index, tokenizer files), never
code (`modeling_*.py`) and never pickles (`*.bin`, `*.pt`): pickled checkpoints are loaded from local
files only, where the user chose them. huggingface_hub's own cache and environment apply: `HF_HOME` /
`HF_HUB_CACHE` say where, `HF_HUB_OFFLINE=1` reads the cache only.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import CheckpointError

HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95})(?:@(?P<rev>[\w./-]{1,200}))?$")
ALLOW_PATTERNS = ["config.json", "generation_config.json", "*.safetensors", "*.safetensors.index.json",
                  "tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"]


def is_hub_id(text: str) -> bool:
    """`org/name[@rev]` that is not an existing local path (a local directory always wins)."""
    m = HUB_ID.match(text)
    return (bool(m) and ".." not in (m["rev"] or "") and not Path(m["repo"]).exists()
            and not text.startswith("."))


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def resolve_hub_id(text: str) -> Path:
    """Download (or find in the cache) the snapshot of a hub id; one-line errors for every failure."""
    m = HUB_ID.match(text)
    if not m or ".." in (m["rev"] or ""):
        raise CheckpointError(f"{text!r} is not a Hugging Face Hub id (org/name or org/name@revision)")
    repo, rev = m["repo"], m["rev"]
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                            RevisionNotFoundError)
    except ImportError as exc:  # pragma: no cover - a base dependency
        raise CheckpointError("hub ids need huggingface_hub", hint="pip install huggingface_hub") from exc
    try:
        path = Path(snapshot_download(repo, revision=rev, allow_patterns=ALLOW_PATTERNS))
    except (LocalEntryNotFoundError, FileNotFoundError) as exc:
        where = "HF_HUB_OFFLINE is set" if offline() else "the Hub could not be reached"
        raise CheckpointError(f"{text} is not a local path, and it is not in the Hugging Face cache while {where}",
                              hint="download it once online, or pass a local directory") from exc
    except RevisionNotFoundError as exc:
        raise CheckpointError(f"{repo} has no revision {rev!r}") from exc
    except GatedRepoError as exc:
        raise CheckpointError(f"{repo} is gated: accept its terms on the Hub and log in (hf auth login)") from exc
    except RepositoryNotFoundError as exc:
        raise CheckpointError(f"{text} is not a local path, and no Hub repository {repo} was found") from exc
    except OSError as exc:  # connection errors and the like
        raise CheckpointError(f"could not fetch {text} from the Hugging Face Hub: {type(exc).__name__}: {exc}") from exc
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{text} (snapshot {path}) has no config.json: not a model repository we can load")
    return path
