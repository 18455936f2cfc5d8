"""The `retnet-edge` command line: the group, its error handling, and the commands of `app.commands`.

Commands parse, call one library function, and print. Choices (formats, targets, presets, flavours) come
from the registries. The exporters and runtimes are imported inside commands (and target choices read
lazily), so `--help` never loads onnx, onnxruntime or executorch.
"""
from __future__ import annotations

import click

from . import __version__
from .app.cli_utils import ErrorHandlingGroup, quiet_libraries
from .app.commands import bench, evaluate, export, model, run, sessions

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
      retnet-edge export demo --target onnx --quant int4 -o out/demo-onnx-int4
      retnet-edge bench out/demo-onnx-int4 --plot out/plots

    Exit codes: 0 ok, 1 known error (one line), 2 usage, 3 parity failure, 130 interrupted (Ctrl-C),
    143 terminated (SIGTERM). Set RETNET_EDGE_DEBUG=1 for tracebacks (and library warnings).
    """
    import os
    import warnings

    if not os.environ.get("RETNET_EDGE_DEBUG"):
        warnings.simplefilter("ignore")  # exporter/library notices are not for end users
        quiet_libraries()


COMMANDS = [model.inspect_cmd, model.init_random_cmd, model.train_cmd, model.convert_cmd, run.generate_cmd,
            evaluate.eval_cmd, export.export_cmd, export.verify_cmd, bench.bench_cmd, sessions.chat_cmd,
            sessions.serve_cmd]
for _command in COMMANDS:
    main.add_command(_command)
