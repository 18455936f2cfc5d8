"""Signals while writing: SIGTERM as a normal exit (cleanup runs), and Ctrl-C / SIGTERM during native work
deferred to the next safe point, never swallowed or fatal.

A KeyboardInterrupt raised by Python's signal handler while torch.export, XNNPACK lowering or flatbuffer
serialisation is inside C++ can be caught there (the export then finished and exited 0 with a traceback
on stderr) or thrown through a noexcept frame (`terminate called … python_error`, exit 134) — both seen
in issue 14. Inside `deferred_interrupts()` the signals only set a flag; `check()` raises at the stage
boundaries the caller chooses, and leaving the block raises if a signal came in the last stage.
"""
from __future__ import annotations

import contextlib
import signal
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
