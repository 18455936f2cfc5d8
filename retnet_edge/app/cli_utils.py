"""CLI plumbing: one place maps errors to exit codes, JSON vs table output, stderr chatter."""
from __future__ import annotations

import errno
import json
import logging
import os
import traceback
from typing import Any

import click

from ..errors import CheckpointError, ConfigError, RetNetEdgeError, missing_extra


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
            click.echo(one_line(msg), err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("Error: interrupted", err=True)
            ctx.exit(130)
        except OSError as exc:
            _debug_traceback()
            known = os_error(exc)
            if known is None:
                click.echo(one_line(f"Error: {type(exc).__name__}: {exc} (set RETNET_EDGE_DEBUG=1 for a traceback)"),
                           err=True)
            else:
                click.echo(one_line(f"Error: {known}"), err=True)
            ctx.exit(1)
        except Exception as exc:  # a bug or an unforeseen input: still one line (traceback with the env var)
            _debug_traceback()
            click.echo(one_line(f"Error: {type(exc).__name__}: {exc} (set RETNET_EDGE_DEBUG=1 for a traceback)"),
                       err=True)
            ctx.exit(1)


# What the system said, in the words a user acts on; the file named, never a traceback.
OS_ERRORS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
             errno.ENAMETOOLONG: "file name too long", errno.EROFS: "read-only file system",
             errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
             errno.ENOTDIR: "a part of the path is a file, not a directory", errno.EISDIR: "is a directory",
             errno.EEXIST: "already exists", errno.ENOENT: "no such file or directory",
             errno.EMFILE: "too many open files", errno.EIO: "input/output error",
             errno.ELOOP: "too many levels of symbolic links"}


def os_error(exc: OSError) -> str | None:
    """One line for a system error on a named file (disk full, name too long, read-only, ...), else None."""
    what = OS_ERRORS.get(exc.errno)
    if what is None:
        return None
    where = exc.filename if exc.filename is not None else None
    return f"{where}: {what}" if where is not None else f"{what} ({exc.strerror or exc})"


def one_line(text: str) -> str:
    """A message stays one line whatever it quotes: newlines and other control characters in a path or an
    id are shown escaped (a path with a newline made a two-line error)."""
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text)


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


def format_names() -> list[str]:
    """Checkpoint format choices (read lazily: the checkpoint readers import torch)."""
    from ..checkpoints import FORMATS

    return FORMATS.names()


def flavor_names() -> list[str]:
    """Every target's flavours (read lazily: the exporters import onnx)."""
    from ..exporters import TARGETS

    return [f for _, t in TARGETS.items() for f in t.options.get("flavor", ())]


def require_file(path, what: str) -> None:
    """Missing inputs are a one-line error (exit 1), not a usage error."""
    from pathlib import Path

    if not Path(path).is_file():
        raise RetNetEdgeError(f"{what} file {path} not found")


def sampling_options(fn):
    """--temperature, --top-k, --top-p, --seed: how the next token is drawn (generate, chat)."""
    for option in reversed([
            click.option("--temperature", default=0.8, show_default=True, help="0 for greedy decoding."),
            click.option("--top-k", default=0, show_default=True, help="Keep the k most likely tokens (0: off)."),
            click.option("--top-p", default=0.95, show_default=True, help="Nucleus sampling mass (1: off)."),
            click.option("--seed", type=int, default=None, help="Sampling seed (reproducible output).")]):
        fn = option(fn)
    return fn


STEP_GRAPHS = ("auto", "fused", "chain")  # runtimes.options.STEP_GRAPH_CHOICES (not imported: --help stays light)
PROMPT_WEIGHTS = ("auto", "stored")  # runtimes.options.PROMPT_WEIGHT_CHOICES


def runtime_options(fn):
    """The runtime's switches as options of a command: --step-graph, --prompt-weights and --spin/--no-spin
    (ONNX artifacts)."""
    fn = click.option("--prompt-weights", type=click.Choice(PROMPT_WEIGHTS), default="auto", show_default=True,
                      help="ONNX int4: auto runs prompts on int8 weights derived from the int4 codes when the prompt "
                           "graph opens (~1.8x the prompt speed on AVX2; the file stays int4; `generate` keeps "
                           "the stored graph for prompts under 1,024 tokens, where deriving costs more than it "
                           "saves); stored runs the graph as exported.")(fn)
    fn = click.option("--spin/--no-spin", default=True, show_default=True,
                      help="ONNX: worker threads spin between ops (lower latency; --no-spin leaves idle cores idle, "
                           "for shared machines and battery).")(fn)
    return click.option("--step-graph", type=click.Choice(STEP_GRAPHS), default="auto", show_default=True,
                        help="ONNX: the step graph that decodes: fused (LinearAttention, the state in place; auto "
                             "where the artifact has it) or chain (MatMul/Mul/Add).")(fn)


def runner_and_tokenizer(model: str, tokenizer: str | None, threads: int | None, step_graph: str = "auto",
                         spin: bool = True, prompt_weights: str = "auto"):
    """The runner of MODEL and its tokenizer (or --tokenizer), checked to fit the model's vocabulary."""
    from ..base.tokenizer import load_tokenizer
    from ..runtimes import load_runner  # here: the runtimes are not needed for --help

    runner = load_runner(model, threads=threads, step_graph=step_graph, spin=spin, prompt_weights=prompt_weights)
    source = tokenizer or runner.tokenizer_dir
    if source is None:
        raise CheckpointError(f"{model} has no tokenizer", hint="pass --tokenizer FILE")
    tok = load_tokenizer(source)
    if tok.vocab_size > runner.cfg.vocab_size:  # its ids past the model's vocabulary would crash the engine
        raise CheckpointError(f"the tokenizer ({tok.vocab_size} tokens) is larger than the model's vocabulary "
                              f"({runner.cfg.vocab_size}): it is not this model's tokenizer",
                              hint="pass the model's own tokenizer with --tokenizer")
    return runner, tok


def int_list(value: str, name: str) -> list[int]:
    """A comma-separated option of integers (a usage error otherwise)."""
    try:
        return [int(x) for x in value.split(",") if x.strip()]
    except ValueError as exc:
        raise ConfigError(f"{name} must be a comma-separated list of integers, got {value!r}") from exc


class CommaChoice(click.ParamType):
    """A comma-separated list of choices (`onnx,executorch`): a typo is click's usage error (exit 2) listing
    the choices, not an error from deep inside the export."""

    name = "list"

    def __init__(self, choices: tuple[str, ...]):
        self.choices = tuple(choices)

    def get_metavar(self, param, ctx=None) -> str:  # click 8.1 and 8.2 signatures
        return "[" + "|".join(self.choices) + "][,...]"

    def convert(self, value, param, ctx) -> list[str]:
        if isinstance(value, list):
            return value
        items = [v.strip() for v in str(value).split(",") if v.strip()]
        if not items:
            self.fail("needs at least one value", param, ctx)
        bad = [v for v in items if v not in self.choices]
        if bad:
            self.fail(f"{', '.join(map(repr, bad))} is not one of {', '.join(self.choices)}", param, ctx)
        if len(set(items)) != len(items):
            self.fail("a value is repeated", param, ctx)
        return items
