"""Signals while writing: SIGTERM as a normal exit (cleanup runs), and Ctrl-C / SIGTERM during native work
deferred to the next safe point, never swallowed or fatal.

A KeyboardInterrupt raised by Python's signal handler while torch.export, XNNPACK lowering or flatbuffer
serialisation is inside C++ can be caught there (the export then finished and exited 0 with a traceback
on stderr) or thrown through a noexcept frame (`terminate called … python_error`, exit 134) — both seen
in issue 14. Inside `deferred_interrupts()` the signals only set a flag; `check()` raises at the stage
boundaries the caller chooses, and leaving the block raises if a signal came in the last stage.

Children die with their parent (`run_tied`): a killed export left its tracing child running ~20 s and a
killed `bench` its measuring child (~930 MB) (issue 29).
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from typing import Callable, Iterator


class Deferred:
    def __init__(self, log: Callable[[str], None]):
        self.log, self.signum = log, None

    def handler(self, signum, frame) -> None:
        if self.signum is None:
            self.log("  interrupt received: stopping after the current stage (nothing will be written)")
        self.signum = signum

    def check(self) -> None:
        if self.signum == signal.SIGINT:
            raise KeyboardInterrupt
        if self.signum is not None:
            raise SystemExit(128 + self.signum)


@contextlib.contextmanager
def _handling(signals: tuple[int, ...], handler) -> Iterator[None]:
    """`handler` for `signals` inside the block, the previous handlers after (main thread only: signals
    reach no other)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, handler) for s in signals}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _exit(signum, frame) -> None:
    raise SystemExit(128 + signum)


def sigterm_as_exit():
    """SIGTERM raises SystemExit(143) inside the block, so `finally`/`except BaseException` cleanup runs."""
    return _handling((signal.SIGTERM,), _exit)


@contextlib.contextmanager
def deferred_interrupts(log: Callable[[str], None] = lambda s: None) -> Iterator[Deferred]:
    d = Deferred(log)
    with _handling((signal.SIGINT, signal.SIGTERM), d.handler):
        yield d
    d.check()


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec hook asking Linux to SIGKILL the child when this process dies (None elsewhere). libc is
    looked up here, before the fork: the hook itself only makes the one system call."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL))
        if os.getppid() != parent:  # the parent died before the request took effect
            os._exit(1)

    return hook


def run_tied(cmd: list[str], timeout: float | None = None) -> subprocess.CompletedProcess:
    """`subprocess.run(cmd, capture_output=True, text=True)` for a child that never outlives this process.

    The child runs in its own process group. On Linux it is SIGKILLed when this process dies, even by
    SIGKILL (PR_SET_PDEATHSIG); any exception while waiting (SIGTERM under `sigterm_as_exit`, Ctrl-C, a
    timeout) kills its whole group before propagating. Call it from the main thread: Linux ties the
    death signal to the thread that started the child."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_die_with_parent(), process_group=0)
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.kill()
        proc.communicate()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)
