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


@main.command("train")
@click.argument("corpus", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(), help="Directory for the trained model.")
@click.option("--preset", default="mini", show_default=True, help="Model shape (tiny, mini, small, 1.3b).")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False),
              help="JSON file of RetNetConfig fields overriding the preset (vocab_size comes from the tokenizer).")
@click.option("--tokenizer", type=click.Path(exists=True), help="Existing tokenizer.json/.model; else BPE is trained.")
@click.option("--vocab-size", default=4096, show_default=True, help="Vocabulary of the BPE tokenizer trained here.")
@click.option("--steps", default=2000, show_default=True)
@click.option("--batch-size", default=32, show_default=True)
@click.option("--seq-len", default=512, show_default=True)
@click.option("--lr", default=1.5e-3, show_default=True)
@click.option("--warmup", default=100, show_default=True)
@click.option("--dropout", default=0.1, show_default=True)
@click.option("--eval-every", default=100, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help="cuda, cpu or auto.")
@click.option("--no-resume", is_flag=True, help="Ignore a saved training state in OUTPUT.work/.")
@click.option("--force", is_flag=True, help="Overwrite OUTPUT if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print the training summary as JSON.")
def train_cmd(corpus, output, preset, config_file, tokenizer, vocab_size, steps, batch_size, seq_len, lr, warmup,
              dropout, eval_every, seed, device, no_resume, force, as_json) -> None:
    """Train a RetNet on a text corpus (documents separated by blank lines).

    Writes the native format with tokenizer.json, train_log.json and a model card; the weights kept are
    those with the best validation loss. Training state is saved to OUTPUT.work/ and resumed by default.

    \b
    Examples:
      retnet-edge train corpus.txt -o my-model --steps 2000 --device cuda
      retnet-edge train corpus.txt -o toy --preset tiny --steps 50 --device cpu
    """
    import torch

    from .card import write_model_card
    from .io_utils import read_json
    from .presets import PRESETS, preset_config
    from .train import TrainConfig, train

    preset_config(preset)  # validates the name
    model_cfg = dict(PRESETS[preset])
    if config_file:
        model_cfg.update(read_json(config_file))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    tc = TrainConfig(steps=steps, batch_size=batch_size, seq_len=seq_len, lr=lr, warmup=min(warmup, steps),
                     dropout=dropout, eval_every=eval_every, seed=seed, device=device)
    summary = train(corpus, output, model_cfg, tc, tokenizer=tokenizer, vocab_size=vocab_size,
                    resume=not no_resume, force=force, log=info)
    write_model_card(output, summary, corpus)
    emit({k: v for k, v in summary.items() if k != "history"}, as_json,
         f"wrote {output}: {summary['parameters']:,} parameters, best val loss {summary['best_val_loss']}")
