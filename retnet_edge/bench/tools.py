"""The bench's native tools, built from the package's own sources on first use (no source checkout needed).

`stream_read.c` is the read-roof kernel (`roof.py`); `retnet_bench.cpp` is the C++ ExecuTorch harness the
bench runs runner-flavour programs with (`--runtime cpp`), compiled against the headers and shared
libraries of the installed executorch wheel. Both land in one per-user cache folder, named by a hash
of their source and the machine, and are replaced atomically (a concurrent run sees all or nothing).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from ..errors import RetNetEdgeError

HERE = Path(__file__).parent
STREAM_READ_SOURCE, HARNESS_SOURCE = HERE / "stream_read.c", HERE / "retnet_bench.cpp"
# ExecuTorch's registration libraries (kernels, XNNPACK backend) register in static constructors: they stay
# linked although no symbol is referenced (--no-as-needed)
HARNESS_LIBS = ("-lexecutorch", "-lexecutorch_backend_xnnpack", "-lexecutorch_kernels_optimized",
                "-lexecutorch_kernels_quantized", "-lexecutorch_threadpool")


def tool_cache_dir() -> Path:
    """Where built tools live: ~/.cache/retnet-edge."""
    return Path.home() / ".cache" / "retnet-edge"


def compiler(*names: str) -> str | None:
    """The first of `names` on PATH."""
    return next((c for c in map(shutil.which, names) if c), None)


def _tool_file(source: Path, suffix: str) -> Path:
    """Where the tool built from `source` lives: named by its content and the machine."""
    tag = hashlib.sha256(source.read_bytes() + os.uname().machine.encode()).hexdigest()[:12]
    return tool_cache_dir() / f"{source.stem}-{tag}{suffix}"


def _built(source: Path, suffix: str, command) -> Path:
    """The tool built from `source` by command(out_path) -> argv, cached by content and machine."""
    out = _tool_file(source, suffix)
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        part = Path(tmp) / out.name
        res = subprocess.run(command(part), capture_output=True, text=True)
        if res.returncode != 0:
            tail = (res.stderr.strip().splitlines() or ["no output"])[-1]
            raise RetNetEdgeError(f"building {source.name} failed: {tail[:300]}")
        part.replace(out)
    return out


def build_stream_read() -> Path | None:
    """The read-roof kernel as a shared library, or None without a C compiler."""
    cc = compiler("cc", "gcc", "clang")
    if cc is None:
        return None
    try:
        return _built(STREAM_READ_SOURCE, ".so", lambda out: [cc, "-O3", "-march=native", "-shared", "-fPIC",
                                                              str(STREAM_READ_SOURCE), "-o", str(out)])
    except RetNetEdgeError:
        return None


def harness_path() -> Path | None:
    """The C++ harness built from this source if it exists (never builds: `auto` must not compile on the
    user's time; a harness built from an older source prints other fields and is not used)."""
    out = _tool_file(HARNESS_SOURCE, "")
    return out if out.is_file() else None


def build_harness() -> Path:
    """Compile retnet_bench.cpp against the installed executorch wheel (~30 s); one-line error otherwise."""
    try:
        import executorch  # the wheel ships the runtime's headers and shared libraries
    except ModuleNotFoundError as exc:
        raise RetNetEdgeError("building the C++ harness needs executorch",
                              hint="pip install 'retnet-edge[export]'") from exc
    cxx = compiler("c++", "g++", "clang++")
    if cxx is None:
        raise RetNetEdgeError("building the C++ harness needs a C++ compiler (g++ or clang++)")
    et = Path(list(executorch.__path__)[0])
    if not (et / "include").is_dir() or not (et / "lib").is_dir():
        raise RetNetEdgeError(f"the executorch wheel at {et} has no include/ and lib/ to build against")
    return _built(HARNESS_SOURCE, "", lambda out: [
        cxx, "-std=c++17", "-O2", str(HARNESS_SOURCE), "-o", str(out), f"-I{et / 'include'}",
        f"-I{et / 'include/executorch/runtime/core/portable_type/c10'}", "-DC10_USING_CUSTOM_GENERATED_MACROS",
        "-DET_USE_THREADPOOL=1", f"-L{et / 'lib'}", f"-Wl,-rpath,{et / 'lib'}", "-Wl,--no-as-needed",
        *HARNESS_LIBS, "-Wl,--as-needed", "-lpthread", "-w"])
