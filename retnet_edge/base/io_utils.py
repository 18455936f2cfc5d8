"""Safe file helpers: atomic directory writes, JSON reads, safetensors writes (reads: checkpoints/tensors.py)."""
from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from ..errors import CheckpointError, RetNetEdgeError
from .confine import JSON_MAX_BYTES, read_bounded
from .interrupts import sigterm_as_exit

if TYPE_CHECKING:
    import torch


TMP_MARK, OLD_MARK = "retnet-edge-tmp", "retnet-edge-old"  # in the names of our hidden siblings only
# A sibling's name adds ~60 bytes to the output's (`.NAME.retnet-edge-tmp.PID-START.xxxxxxxx`); past this
# many bytes the name is cut and a hash of it added, so a 255-byte output name still has room (NAME_MAX).
STEM_MAX_BYTES = 160


def sibling_stem(out: Path) -> str:
    """The output's name as our hidden siblings carry it: whole, or cut with a hash when it is long."""
    raw = out.name.encode()
    if len(raw) <= STEM_MAX_BYTES:
        return out.name
    return raw[:STEM_MAX_BYTES - 13].decode(errors="ignore") + "~" + hashlib.sha256(raw).hexdigest()[:12]


def process_start(pid: int) -> str | None:
    """When process `pid` started (clock ticks since boot, /proc), or None where that cannot be read: with
    the pid it names one process, so a pid reused by an unrelated process is not taken for our writer."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return fields[19].decode()  # field 22 of proc(5); fields[0] is field 3
    except (OSError, IndexError, UnicodeDecodeError):
        return None


def owner_tag(pid: int | None = None) -> str:
    """`PID-START` (or `PID` where the start time is unknown): the writer a hidden sibling belongs to."""
    pid = os.getpid() if pid is None else pid
    start = process_start(pid)
    return f"{pid}-{start}" if start else str(pid)


def owner_alive(tag: str) -> bool:
    """Whether the writer named by an `owner_tag` still runs (a reused pid with another start time does not)."""
    pid, _, start = tag.partition("-")
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        pass
    except (ValueError, OverflowError):
        return False
    return not start or process_start(int(pid)) in (start, None)


def clean_stale_siblings(out: Path) -> list[Path]:
    """Remove hidden temp/old siblings of `out` left by a killed run of ours (its process is gone, or its
    pid now belongs to a process that started later).

    Only names we create (`.NAME.retnet-edge-tmp.PID-START.xxxx`, `.NAME.retnet-edge-old.PID-START.xxxx`)
    are touched; an unrelated `.NAME.old` is left alone. A moved-aside previous output comes back when
    the output itself is missing."""
    removed = []
    if not out.parent.is_dir():
        return removed
    stem = sibling_stem(out)
    for p in out.parent.glob(f".{glob.escape(stem)}.retnet-edge-*"):
        parts = p.name[len(stem) + 2:].split(".")
        if len(parts) >= 2 and parts[0] in (TMP_MARK, OLD_MARK) and parts[1].replace("-", "").isdigit() \
                and not owner_alive(parts[1]):
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


def umask() -> int:
    """The process umask (read from /proc where it can be: setting it to read it races other threads)."""
    try:
        with open("/proc/self/status") as f:
            return int(next(line.split()[1] for line in f if line.startswith("Umask:")), 8)
    except (OSError, StopIteration, ValueError, IndexError):
        mask = os.umask(0)
        os.umask(mask)
        return mask


def _umask_mode(directory: bool = True) -> int:
    """The mode a plain open()/mkdir() would give: every output follows the umask (mkstemp's 0600 does not)."""
    return (0o777 if directory else 0o666) & ~umask()


def check_output_parent(out: Path) -> None:
    """Refuse, before any work, an output whose nearest existing ancestor is not a directory (`-o FILE/x`)."""
    for parent in Path(os.path.abspath(out)).parents:
        if os.path.lexists(parent):
            if not parent.is_dir():
                raise RetNetEdgeError(f"cannot write {out}: {parent} is not a directory")
            return


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
    check_output_parent(out)
    existed = out.exists() or out.is_symlink()
    clean_stale_siblings(out)  # may bring back a previous output that a killed run had moved aside
    if (out.exists() or out.is_symlink()) and not force:  # checked after it: a restored backup is kept
        raise RetNetEdgeError(f"{out} already exists" + ("" if existed else " (restored from an interrupted run)"),
                              hint="pass --force to overwrite it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tag = owner_tag()
    tmp = Path(tempfile.mkdtemp(prefix=f".{sibling_stem(out)}.{TMP_MARK}.{tag}.", dir=out.parent))
    os.chmod(tmp, _umask_mode())
    old = out.parent / f".{sibling_stem(out)}.{OLD_MARK}.{tag}.{secrets.token_hex(4)}"  # taken only at the swap
    guard = _start_guard(tmp, out, old)
    try:
        with sigterm_as_exit():
            yield tmp
            if out.exists() or out.is_symlink():
                if not force:  # it appeared while we wrote: never replaced without --force
                    raise RetNetEdgeError(f"{out} appeared while this run was writing it",
                                          hint="pass --force to overwrite it")
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


def check_output_path(path: str | os.PathLike, directory: bool = False) -> Path:
    """Refuse up front, before any work, an output that cannot be written: a name that names nothing, a
    path under a regular file, a file where a directory is wanted (or the reverse), an unwritable parent
    (`bench -o` and `--plot` were refused only after all the measuring)."""
    out = usable_output(path)
    check_output_parent(out)
    if out.is_dir() and not directory:
        raise RetNetEdgeError(f"cannot write {out}: it is a directory")
    if os.path.lexists(out) and directory and not out.is_dir():
        raise RetNetEdgeError(f"cannot write into {out}: it is a file, not a directory")
    parent = next(p for p in [out, *Path(os.path.abspath(out)).parents] if os.path.lexists(p))
    if parent != out and not os.access(parent, os.W_OK | os.X_OK):
        raise RetNetEdgeError(f"cannot write {out}: {parent} is not writable")
    return out


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
    path = usable_output(path)
    check_output_parent(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{sibling_stem(path)}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, _umask_mode(directory=False))  # mkstemp makes it 0600; other outputs follow the umask
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """`atomic_write_bytes` of the UTF-8 text."""
    atomic_write_bytes(path, text.encode())


def read_json(path: Path, what: str = "JSON file") -> dict:
    """Parse a JSON object file (a regular file of at most `confine.JSON_MAX_BYTES`) or raise
    CheckpointError naming the file and the problem."""
    try:
        data = json.loads(read_bounded(path, what, JSON_MAX_BYTES))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    return data


def write_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write contiguous, unshared tensors (tied weights are written once by the caller)."""
    from safetensors.torch import (
        save_file,  # here: the runtime-only install has no torch
    )

    save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    os.chmod(path, _umask_mode(directory=False))  # safetensors writes 0600; other outputs follow the umask


def available_memory_bytes() -> int | None:
    """Memory the OS can give this process without swapping (Linux MemAvailable; elsewhere free pages), less
    where a container's memory limit leaves less (cgroup v2 memory.max, v1 limit_in_bytes), or None where
    none of these is known."""
    host = None
    try:
        with open("/proc/meminfo") as f:
            host = next((int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:")), None)
    except (OSError, ValueError):
        pass
    if host is None:
        try:
            host = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            pass
    room = [x for x in (host, _cgroup_room()) if x is not None]
    return min(room) if room else None


def _cgroup_room() -> int | None:
    """The memory this process's cgroup may still use (limit - usage), or None without a limit."""
    for limit, usage in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                         ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            with open(limit) as f:
                cap = f.read().strip()
            with open(usage) as f:
                used = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if cap.isdigit() and int(cap) < 1 << 60:  # "max" (v2) or a huge number (v1): no limit
            return max(0, int(cap) - used)
    return None


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


def jsonl_objects(text: str, what: str, error: type[RetNetEdgeError]) -> Iterator[tuple[int, object]]:
    """(line number, parsed value) for each non-blank line of JSONL `text`; a line that is not JSON raises
    `error` naming `what` and the line (one line, exit 1)."""
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield n, json.loads(line)
        except json.JSONDecodeError as exc:
            raise error(f"{what} line {n} is not JSON ({exc.msg})") from exc
