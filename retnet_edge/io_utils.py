"""Safe file helpers: atomic directory writes, JSON reads, safetensors writes (reads: checkpoints/tensors.py)."""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from .errors import CheckpointError, RetNetEdgeError
from .interrupts import sigterm_as_exit

if TYPE_CHECKING:
    import torch


TMP_MARK, OLD_MARK = "retnet-edge-tmp", "retnet-edge-old"  # in the names of our hidden siblings only


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def clean_stale_siblings(out: Path) -> list[Path]:
    """Remove hidden temp/old siblings of `out` left by a killed run of ours (its pid is gone).

    Only names we create (`.NAME.retnet-edge-tmp.PID.xxxx`, `.NAME.retnet-edge-old.PID.xxxx`) are touched;
    an unrelated `.NAME.old` is left alone."""
    removed = []
    if not out.parent.is_dir():
        return removed
    for p in out.parent.glob(f".{out.name}.retnet-edge-*"):
        parts = p.name[len(out.name) + 2:].split(".")
        if len(parts) >= 2 and parts[0] in (TMP_MARK, OLD_MARK) and parts[1].isdigit() \
                and not _pid_alive(int(parts[1])):
            if parts[0] == OLD_MARK and not (out.exists() or out.is_symlink()):
                p.rename(out)  # killed between its two renames: the previous output comes back
                continue
            _remove(p)
            removed.append(p)
    return removed


# Run by a detached child that outlives a SIGKILLed writer: stdin reaches EOF when the writer exits;
# without its "done" the writer died, so the temp dir goes and a moved-aside previous output comes back.
_GUARD = """
import os, shutil, sys
tmp, out, old = sys.argv[1:4]
if sys.stdin.buffer.read() == b"done":
    sys.exit(0)
shutil.rmtree(tmp, ignore_errors=True)
if os.path.lexists(old):
    if os.path.lexists(out):
        shutil.rmtree(old, ignore_errors=True) if os.path.isdir(old) else os.unlink(old)
    else:
        os.rename(old, out)
"""


def _start_guard(tmp: Path, out: Path, old: Path) -> subprocess.Popen | None:
    """A detached guardian (own session: a terminal's Ctrl-C does not reach it) for a SIGKILLed writer."""
    try:
        return subprocess.Popen([sys.executable, "-I", "-S", "-c", _GUARD, str(tmp), str(out), str(old)],
                                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True, close_fds=True)
    except OSError:  # no guardian: the next run at this path cleans up (clean_stale_siblings)
        return None


def _stop_guard(guard: subprocess.Popen | None) -> None:
    if guard is not None:
        try:
            guard.stdin.write(b"done")
            guard.stdin.close()
            guard.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            pass


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o777 & ~mask


@contextlib.contextmanager
def atomic_output_dir(path: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Yield a temp dir beside `path`; on success it replaces `path` in one rename, on error it vanishes.

    The temp dir is `.NAME.retnet-edge-tmp.PID.xxxx` (mode from the umask, not mkdtemp's 0700). SIGTERM and
    Ctrl-C clean up in-process; for SIGKILL a detached guardian process removes the temp dir when this
    process dies (and, failing that, the next run at the same path does). With force, an existing output
    (directory or file) moves aside to a unique `.NAME.retnet-edge-old.PID.xxxx` until the new one is in
    place, so a killed run never loses the previous artifact: the guardian puts it back.
    """
    out = usable_output(path)
    if out.exists() and not force:
        raise RetNetEdgeError(f"{out} already exists", hint="pass --force to overwrite it")
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_siblings(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.{TMP_MARK}.{os.getpid()}.", dir=out.parent))
    os.chmod(tmp, _umask_mode())
    old = out.parent / f".{out.name}.{OLD_MARK}.{os.getpid()}.{secrets.token_hex(4)}"  # taken only at the swap
    guard = _start_guard(tmp, out, old)
    try:
        with sigterm_as_exit():
            yield tmp
            if out.exists() or out.is_symlink():
                out.rename(old)
                tmp.rename(out)
                _remove(old)
            else:
                tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        _stop_guard(guard)


def usable_output(path: str | os.PathLike) -> Path:
    """An output path that names something: "", "." and ".." do not (`-o ""` meant the current directory)."""
    if not str(path).strip() or Path(path).name in ("", ".", ".."):
        raise RetNetEdgeError(f"{str(path)!r} is not a usable output path")
    return Path(path)


def check_distinct(source: Path, output: str | os.PathLike) -> None:
    """Refuse an output that is the source, inside it, or holds it (`export SRC -o SRC --force` replaced
    the source model with its artifact)."""
    src, out = Path(source).resolve(), usable_output(output).resolve()
    if out == src or src in out.parents or out in src.parents:
        raise RetNetEdgeError(f"the output {output} would overwrite or nest in the source {source}",
                              hint="write the artifact somewhere else")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a file through a temp file beside it and one rename: readers never see half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """`atomic_write_bytes` of the UTF-8 text."""
    atomic_write_bytes(path, text.encode())


def read_json(path: Path) -> dict:
    """Parse a JSON object file or raise CheckpointError naming the file and the problem."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise CheckpointError(f"{path} not found") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    return data


def write_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write contiguous, unshared tensors (tied weights are written once by the caller)."""
    from safetensors.torch import save_file  # here: the runtime-only install has no torch

    save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)


def release_freed_memory() -> None:
    """Hand memory freed by a dropped session back to the OS (glibc keeps freed heap pages otherwise)."""
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    libc = ctypes.util.find_library("c")
    trim = getattr(ctypes.CDLL(libc), "malloc_trim", None) if libc else None
    if trim is not None:  # glibc only; a no-op elsewhere
        trim(0)
