"""The `retnet-edge` command line. Commands parse, call one library function, and print.

Heavy dependencies (onnxruntime, executorch) are imported inside commands, so `--help` stays fast.
"""
from __future__ import annotations

import click

from . import __version__
from .cli_utils import ErrorHandlingGroup, emit, info

CONTEXT = dict(help_option_names=["-h", "--help"], max_content_width=110)


@click.group(cls=ErrorHandlingGroup, context_settings=CONTEXT)
@click.version_option(__version__, prog_name="retnet-edge")
def main() -> None:
    """Put a trained RetNet on a laptop CPU or a phone: constant memory and latency per token.

    \b
    Examples:
      retnet-edge inspect small
      retnet-edge inspect demo --json
      retnet-edge init-random --preset tiny -o tiny-model

    Exit codes: 0 ok, 1 known error (one line), 2 usage, 3 parity failure.
    Set RETNET_EDGE_DEBUG=1 for tracebacks.
    """


@main.command("inspect")
@click.argument("path")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def inspect_cmd(path: str, as_json: bool) -> None:
    """Show a model's config, size and recurrent-state memory vs a KV cache.

    PATH is a model directory, `demo`, or a preset name (tiny, small, 1.3b).

    \b
    Examples:
      retnet-edge inspect small
      retnet-edge inspect ./my-model --json
    """
    from .summary import render, summarize

    report = summarize(path)
    emit(report, as_json, render(report))


@main.command("init-random")
@click.option("--preset", required=True, help="Model size: tiny, small or 1.3b.")
@click.option("-o", "--output", required=True, type=click.Path(), help="Directory to write (native format).")
@click.option("--seed", default=0, show_default=True, help="Random seed.")
@click.option("--std", default=0.02, show_default=True, help="Init std of every matrix.")
@click.option("--dtype", type=click.Choice(["fp32", "fp16", "bf16"]), default="fp32", show_default=True)
@click.option("--force", is_flag=True, help="Overwrite OUTPUT if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def init_random_cmd(preset: str, output: str, seed: int, std: float, dtype: str, force: bool, as_json: bool) -> None:
    """Write a random-weight model of a named size (for tests and benchmarks).

    \b
    Examples:
      retnet-edge init-random --preset small -o small-random
      retnet-edge init-random --preset 1.3b --dtype fp16 -o big-random
    """
    from .presets import init_random

    info(f"initialising preset {preset} (seed {seed}) ...")
    path, n = init_random(preset, output, seed=seed, std=std, dtype=dtype, force=force)
    emit({"output": str(path), "preset": preset, "parameters": n, "dtype": dtype}, as_json,
         f"wrote {path} ({n:,} parameters, {dtype})")
