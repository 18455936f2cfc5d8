"""`bench`: per-token latency and memory of artifacts over context."""
from __future__ import annotations

import json

import click

from ...errors import RetNetEdgeError
from ..cli_utils import CommaChoice, emit, info, int_list


@click.command("bench")
@click.argument("models", nargs=-1, required=True)
@click.option("--contexts", default="0,512,2048,8192", show_default=True,
              help="Context depths to measure at (the state / KV cache is filled to each first).")
@click.option("--tokens", default=128, show_default=True, help="Timed decode steps per repetition.")
@click.option("--threads", "threads", default="1,2", show_default=True, help="Thread counts, comma-separated.")
@click.option("--repeat", default=5, show_default=True, help="Repetitions per depth (each restarts at the depth).")
@click.option("--baseline", type=CommaChoice(("transformer", "llama.cpp", "none")), default="transformer",
              show_default=True,
              help="What each RetNet artifact is compared with, comma-separated: transformer (a same-size "
                   "Transformer-KV artifact, same target and quant), llama.cpp (a same-shape Llama GGUF at the "
                   "matching bits: Q8_0 for int8, Q4_0 and Q4_K_M for int4; extra `llamacpp`), or none.")
@click.option("--runtime", type=click.Choice(["auto", "python", "cpp"]), default="auto", show_default=True,
              help="ExecuTorch artifacts: C++ retnet_bench when built (auto), the Python runtime, or force C++.")
@click.option("--plot", "plot_dir", type=click.Path(file_okay=False), help="Write PNG plots into this directory.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write the JSON document here (atomically).")
@click.option("--work-dir", type=click.Path(file_okay=False), help="Keep baseline artifacts here (reused).")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON document instead of the table.")
def bench_cmd(models, contexts, tokens, threads, repeat, baseline, runtime, plot_dir, output, work_dir, as_json):
    """Decode tok/s over context, prompt tok/s at 512 and time to first token, against a baseline and the read roof.

    MODELS are exported artifact directories (ONNX or ExecuTorch) or checkpoints (`demo`: eager PyTorch).
    Each artifact runs in a fresh process per thread count; the JSON has one record per (artifact,
    context, threads): tok/s, median/p90 ms per token, the 512-token prompt's tok/s and time to first
    token, RSS (anonymous / file-backed), state bytes, bytes read per token and the fraction of this
    machine's measured read bandwidth; with llama.cpp as a baseline, the ratios from this one run.

    \b
    Examples:
      retnet-edge bench out/demo-onnx-int4 --contexts 0,2048,8192 --threads 1
      retnet-edge bench out/onnx-int8 out/pte-int8 -o results.json --plot plots/
      retnet-edge bench demo --baseline none --contexts 0,512 --tokens 32 --repeat 2
      retnet-edge bench out/demo/onnx-int4 --baseline llama.cpp --contexts 0,512,4096 --threads 1,2
    """
    from pathlib import Path

    from ...base.io_utils import atomic_write_text, check_output_path
    from ...bench import BenchConfig, render_bench_table, run_bench

    if "none" in baseline and len(baseline) > 1:
        raise click.UsageError("--baseline none stands alone (no baseline); drop it or the others")
    for path, is_dir in ((output, False), (plot_dir, True)):  # before any measuring, not after it
        if path:
            check_output_path(path, directory=is_dir)
    if plot_dir:
        import importlib.util

        if importlib.util.find_spec("matplotlib") is None:
            raise RetNetEdgeError("--plot needs matplotlib", hint="pip install 'retnet-edge[bench]'")
    depths, counts = int_list(contexts, "--contexts"), int_list(threads, "--threads")
    for name, values in (("--contexts", depths), ("--threads", counts)):
        twice = sorted({v for v in values if values.count(v) > 1})
        if twice:
            info(f"{name}: {', '.join(map(str, twice))} given more than once; each is measured once")
    bc = BenchConfig(contexts=depths, tokens=tokens, threads=counts, repeat=repeat,
                     baselines=tuple(b for b in baseline if b != "none"), runtime=runtime,
                     work_dir=Path(work_dir) if work_dir else None)
    doc = run_bench(list(models), bc, log=info)
    if plot_dir:
        from ...bench.plots import write_plots

        doc["plots"] = [str(p) for p in write_plots(doc, Path(plot_dir))]
    if output:
        atomic_write_text(Path(output), json.dumps(doc, indent=2))
        info(f"wrote {output}")
    emit(doc, as_json, render_bench_table(doc))
