"""Hugging Face Hub ids as model paths: `org/name` or `org/name@revision` -> a local snapshot directory.

Only what a model needs is fetched (config, safetensors shards and their index, tokenizer files), never
code (`modeling_*.py`) and never pickles (`*.bin`, `*.pt`): pickled checkpoints are loaded from local
files only, where the user chose them. huggingface_hub's own cache and settings apply (its `constants`,
which read `HF_HOME` / `HF_HUB_CACHE` / `HF_HUB_OFFLINE`); this module reads no environment itself.

The cache is input like any other (issue 29): a ref file's content and a snapshot's symlinks are the
cache's word, not ours, so a ref must hold a commit hash and the snapshot it names must be that repo's,
with every file resolving inside the repo's cache folder (`confine.hub_snapshot`).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import CheckpointError
from .confine import (
    COMMIT,
    REF_MAX_BYTES,
    commit_hash,
    hub_snapshot,
    inside,
    read_bounded,
)

# huggingface_hub's repo-id rules (utils.validate_repo_id), in ASCII: each part 1-96 characters of
# [A-Za-z0-9_.-], not starting or ending with '-' or '.', no '--' or '..', not ending in '.git'.
_PART = r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?"
HUB_ID = re.compile(rf"(?P<repo>{_PART}/{_PART})(?:@(?P<rev>[A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.-]+)*))?")
ALLOW_PATTERNS = ["config.json", "generation_config.json", "*.safetensors", "*.safetensors.index.json",
                  "tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"]


def parse_hub_id(text: str) -> tuple[str, str | None] | None:
    """(repo, revision or None) of a well-formed `org/name[@rev]`, else None (the whole text must match)."""
    m = HUB_ID.fullmatch(text)
    if not m:
        return None
    repo, rev = m["repo"], m["rev"]
    if "--" in repo or ".." in repo or repo.endswith(".git"):
        return None
    if rev is not None and (len(rev) > 200 or any(part in (".", "..") for part in rev.split("/"))):
        return None
    return repo, rev


def looks_like_hub_id(text: str) -> bool:
    """`something/something[@...]` that is not written as a path (./x, /x, ~/x): worth naming Hub id rules."""
    repo = text.split("@")[0]
    return repo.count("/") == 1 and not text.startswith((".", "/", "~")) and all(repo.split("/"))


def is_hub_id(text: str) -> bool:
    """`org/name[@rev]` that is not an existing local path (a local directory always wins)."""
    return parse_hub_id(text) is not None and not Path(text.split("@")[0]).exists() and not text.startswith(".")


def offline() -> bool:
    """huggingface_hub's own reading of HF_HUB_OFFLINE (made when it was imported)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def repo_cache_folder(repo: str) -> Path:
    """Where huggingface_hub keeps a model repo: `<HF_HUB_CACHE>/models--org--name`."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    return Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo, repo_type="model")


def check_cached_ref(repo_folder: Path, rev: str, text: str) -> None:
    """A cached branch or tag (refs/<rev>) must hold a commit hash: huggingface_hub joins its content to
    the snapshots folder as a path, so `../../x` or an absolute path there named any directory on disk."""
    ref = repo_folder / "refs" / rev
    if not os.path.lexists(ref):
        return
    what = f"{text}: the Hugging Face cache's ref {rev!r}"
    inside(repo_folder / "refs", ref, f"{text}: the Hugging Face cache's ref")
    raw = read_bounded(ref, f"{text}: the Hugging Face cache's ref file", REF_MAX_BYTES)
    try:
        commit_hash(raw.decode("ascii").strip(), what)
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"{what} does not hold a commit hash (it is not text)") from exc


def resolve_hub_id(text: str) -> Path:
    """Download (or find in the cache) the snapshot of a hub id; one-line errors for every failure."""
    parsed = parse_hub_id(text)
    if parsed is None:
        raise CheckpointError(f"{text!r} is not a Hugging Face Hub id (org/name or org/name@revision)")
    repo, rev = parsed
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (
            GatedRepoError,
            HFValidationError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError as exc:  # pragma: no cover - a base dependency
        raise CheckpointError("hub ids need huggingface_hub", hint="pip install huggingface_hub") from exc
    folder = repo_cache_folder(repo)
    if not COMMIT.fullmatch(rev or ""):
        check_cached_ref(folder, rev or "main", text)
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
    except HFValidationError as exc:
        raise CheckpointError(f"{text!r} is not a valid Hugging Face Hub id") from exc
    except (OSError, UnicodeDecodeError) as exc:  # connection errors and the like
        raise CheckpointError(f"could not fetch {text} from the Hugging Face Hub: {type(exc).__name__}: {exc}") from exc
    hub_snapshot(path, folder, text)
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{text} (snapshot {path}) has no config.json: not a model repository we can load")
    return path
