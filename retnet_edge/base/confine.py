"""Where an input file may be and what it may be: the confinement and input-file rules, each stated once.

Every reader of a file this tool did not write goes through these (checkpoints and their shards, Hub
snapshots and refs, tokenizers, JSON documents), so a hostile checkpoint or cache cannot make a command
read outside its place, hang on a special file, or read without bound (issue 29). One function per rule:

- `plain_name`: a file name that a file lists (a shard in a weight_map) is a relative path of plain parts:
  not absolute, no `.`/`..` part, no empty part, no control character.
- `inside`: a path, after every symlink, lies inside its root (after the root's own symlinks).
- `checkpoint_root`: the folder a checkpoint's files must stay in: its directory, or for a Hub snapshot
  that repo's cache folder (a snapshot is symlinks into the repo's blobs/).
- `regular_file`: an input is a regular file (not a FIFO, device, socket or directory) of at most
  `max_bytes`, checked with stat before anything opens it.
- `open_regular`: the same rule on the open descriptor (opened non-blocking, so a file swapped for a FIFO
  after the stat still cannot hang the reader); `read_bounded` reads such a file whole.
- `distinct_files`: no file is listed twice under two names.
- `commit_hash`: a Hub ref names a 40-hex commit.
- `hub_snapshot`: a Hub snapshot is `<repo folder>/snapshots/<commit>`, and everything in it resolves
  inside the repo folder, whatever its symlinks say.
"""
from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import BinaryIO, Iterable

from ..errors import CheckpointError, RetNetEdgeError

# Bounds on what a reader loads whole (weights are read by range and have no bound of their own).
JSON_MAX_BYTES = 64 * 2**20  # config.json, *.index.json, manifest.json: the largest public index is ~10 MB
TOKENIZER_MAX_BYTES = 256 * 2**20  # the largest public tokenizer.json files are ~35 MB
REF_MAX_BYTES = 4096  # a Hub ref file holds one 40-character commit hash

COMMIT = re.compile(r"[0-9a-f]{40}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))

Error = type[RetNetEdgeError]


def plain_name(name: object, what: str, error: Error = CheckpointError) -> str:
    """A name listed inside a file: relative, made of plain parts (no `..`, no absolute path, no control chars)."""
    if not isinstance(name, str) or not name:
        raise error(f"{what} must be a file name, got {type(name).__name__} {str(name)[:60]!r}")
    parts = name.split("/")
    if (name.startswith(("/", "\\")) or _CONTROL.search(name) or "\\" in name
            or any(p in ("", ".", "..") for p in parts)):
        raise error(f"{what} {name[:120]!r} is not a plain relative file name (no absolute paths or '..')")
    return name


def inside(root: str | os.PathLike, path: str | os.PathLike, what: str, error: Error = CheckpointError) -> Path:
    """`path` after all symlinks lies inside `root` (after its symlinks); returns path unchanged."""
    real_root, real = Path(os.path.realpath(root)), Path(os.path.realpath(path))
    if real != real_root and real_root not in real.parents:
        raise error(f"{what} {Path(path).name!r} resolves outside {root} (through a symlink or '..')",
                    hint="a model's files must stay inside its directory")
    return Path(path)


def checkpoint_root(directory: str | os.PathLike) -> Path:
    """The folder a checkpoint directory's files must resolve into: itself, or a Hub snapshot's repo folder."""
    d = Path(os.path.abspath(directory))
    if d.parent.name == "snapshots" and COMMIT.fullmatch(d.name) and d.parent.parent.name.startswith("models--"):
        return d.parent.parent  # huggingface_hub: snapshots/<commit>/<file> -> ../../blobs/<hash>
    return d


def _kind(mode: int) -> str | None:
    return next((name for test, name in _KINDS if test(mode)), None if stat.S_ISREG(mode) else "not a regular file")


def _check_stat(st: os.stat_result, path: Path, what: str, max_bytes: int | None, error: Error) -> None:
    kind = _kind(st.st_mode)
    if kind is not None:
        raise error(f"{what} {path} is {kind}, not a regular file")
    if max_bytes is not None and st.st_size > max_bytes:
        raise error(f"{what} {path} is {st.st_size:,} bytes; at most {max_bytes:,} are read")


def regular_file(path: str | os.PathLike, what: str = "input", max_bytes: int | None = None,
                 error: Error = CheckpointError) -> Path:
    """An existing regular file of at most max_bytes, checked before it is opened (a FIFO would block)."""
    p = Path(path)
    try:
        st = os.stat(p)
    except FileNotFoundError as exc:
        raise error(f"{what} {p} not found") from exc
    except OSError as exc:
        raise error(f"{what} {p} cannot be read ({exc.strerror})") from exc
    _check_stat(st, p, what, max_bytes, error)
    return p


def open_regular(path: str | os.PathLike, what: str = "input", max_bytes: int | None = None,
                 error: Error = CheckpointError) -> BinaryIO:
    """`regular_file` on the descriptor: opened with O_NONBLOCK (a FIFO cannot block the open) and fstat'ed."""
    p = regular_file(path, what, max_bytes, error)
    try:
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise error(f"{what} {p} cannot be read ({exc.strerror})") from exc
    try:
        _check_stat(os.fstat(fd), p, what, max_bytes, error)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")


def read_bounded(path: str | os.PathLike, what: str = "input", max_bytes: int = JSON_MAX_BYTES,
                 error: Error = CheckpointError) -> bytes:
    """The whole of a regular file of at most max_bytes (read past the bound never happens, even if it grew)."""
    with open_regular(path, what, max_bytes, error) as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise error(f"{what} {path} is over {max_bytes:,} bytes")
    return data


def distinct_files(paths: Iterable[Path], what: str, error: Error = CheckpointError) -> None:
    """No file is reached under two names (`a.safetensors` and `./x/../a.safetensors`, or a symlink to it)."""
    seen: dict[tuple[int, int], Path] = {}
    for p in paths:
        st = os.stat(p)
        key = (st.st_dev, st.st_ino)
        if key in seen:
            raise error(f"{what} lists one file twice: {seen[key].name!r} and {p.name!r}")
        seen[key] = p


def commit_hash(text: str, what: str, error: Error = CheckpointError) -> str:
    """A 40-hex commit hash, else a one-line error."""
    if not COMMIT.fullmatch(text):
        raise error(f"{what} does not hold a commit hash (40 hex digits)")
    return text


def hub_snapshot(path: str | os.PathLike, repo_folder: Path, what: str, error: Error = CheckpointError) -> Path:
    """`repo_folder/snapshots/<commit>`, and every entry below it resolving inside repo_folder."""
    p = Path(os.path.abspath(path))
    if p.parent != Path(os.path.abspath(repo_folder / "snapshots")) or not COMMIT.fullmatch(p.name):
        raise error(f"{what} does not resolve to a snapshot of its own repository in the Hugging Face cache")
    inside(repo_folder, p, f"{what}'s snapshot", error)
    for top, dirs, files in os.walk(p):  # symlinked directories are checked, not followed
        for name in (*dirs, *files):
            inside(repo_folder, Path(top) / name, f"{what}'s file", error)
    return p
