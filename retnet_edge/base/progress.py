"""Progress on stderr: one bar per long stage (elapsed time and ETA), log lines printed above it.

A bar shows only on a terminal and never with --json; elsewhere (CI logs, pipes) the log lines alone say
what is happening, so a log file is not filled with carriage returns.
"""
from __future__ import annotations

import contextlib
import sys
from typing import Callable, Iterator

from tqdm import tqdm


def bar_enabled(as_json: bool = False) -> bool:
    return sys.stderr.isatty() and not as_json


class Stages:
    """A bar over a known number of stages; `stage(name)` names the one running, `done()` advances it."""

    def __init__(self, total: int, desc: str, enabled: bool, log: Callable[[str], None]):
        self._bar = tqdm(total=total, desc=desc, file=sys.stderr, disable=not enabled, leave=False,
                         bar_format="{desc}: {n_fmt}/{total_fmt} |{bar}| {elapsed} elapsed, ETA {remaining}{postfix}")
        self._log = log
        self.enabled = enabled

    def log(self, message: str) -> None:
        if self.enabled:
            self._bar.write(message, file=sys.stderr)
        else:
            self._log(message)

    def stage(self, name: str) -> None:
        self._bar.set_postfix_str(name, refresh=True)

    def done(self, n: int = 1) -> None:
        self._bar.update(n)

    def close(self) -> None:
        self._bar.close()


@contextlib.contextmanager
def stages(total: int, desc: str, enabled: bool, log: Callable[[str], None]) -> Iterator[Stages]:
    s = Stages(total, desc, enabled, log)
    try:
        yield s
    finally:
        s.close()
