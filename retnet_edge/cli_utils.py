"""CLI plumbing: one place maps errors to exit codes, JSON vs table output, stderr chatter."""
from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from typing import Any

import click

from .errors import RetNetEdgeError, missing_extra


def quiet_libraries() -> None:
    """Keep import-time chatter of torchao/torch (optional CUDA kernels, deprecations) off the user's stderr."""
    for name in ("torchao", "torch.utils._pytree", "torch.onnx", "onnx_ir", "onnxscript"):
        logging.getLogger(name).setLevel(logging.ERROR)


class ErrorHandlingGroup(click.Group):
    """Known errors -> `Error: …` on stderr and their exit code (1, parity 3); tracebacks only when debugging."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except (RetNetEdgeError, ModuleNotFoundError) as exc:
            _debug_traceback()
            if isinstance(exc, ModuleNotFoundError):
                exc = missing_extra(exc) or RetNetEdgeError(f"ModuleNotFoundError: {exc}")
            msg = f"Error: {exc}"
            if exc.hint:
                msg += f" (hint: {exc.hint})"
            click.echo(msg, err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("Error: interrupted", err=True)
            ctx.exit(130)
        except Exception as exc:  # a bug or an unforeseen input: still one line (traceback with the env var)
            _debug_traceback()
            click.echo(f"Error: {type(exc).__name__}: {exc} (set RETNET_EDGE_DEBUG=1 for a traceback)", err=True)
            ctx.exit(1)


def _debug_traceback() -> None:
    if os.environ.get("RETNET_EDGE_DEBUG"):
        traceback.print_exc()


def emit(result: Any, as_json: bool, text: str | None = None) -> None:
    """Results go to stdout: JSON with --json, else the human text."""
    if as_json:
        click.echo(json.dumps(result, indent=2, sort_keys=True, default=str))
    else:
        click.echo(text if text is not None else str(result))


def info(message: str) -> None:
    """Progress and chatter: stderr, so stdout stays parseable."""
    click.echo(message, err=True)


class RegistryChoice(click.Choice):
    """A click.Choice whose choices come from a registry, read when first needed (not at import).

    `names` is called lazily so that importing the CLI does not import the exporters (and their engines).
    """

    def __init__(self, names, extra: tuple[str, ...] = ()):
        self._names, self._extra = names, extra
        super().__init__([], case_sensitive=True)

    @property
    def choices(self):  # type: ignore[override]
        return (*self._extra, *self._names())

    @choices.setter
    def choices(self, value) -> None:  # click.Choice.__init__ assigns; the registry is the source
        pass


def show_progress(as_json: bool = False) -> bool:
    return sys.stderr.isatty() and not as_json
