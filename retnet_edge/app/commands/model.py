"""`inspect`, `init-random`, `train`, `convert`: commands about a model itself (not an artifact)."""
from __future__ import annotations

import click

from ...core.presets import PRESETS
from ..cli_utils import RegistryChoice, emit, format_names, info

PRESET_NAMES = ", ".join(PRESETS)


@click.command("inspect")
@click.argument("path")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def inspect_cmd(path: str, as_json: bool) -> None:
    """Show a model's config, size and recurrent-state memory vs a KV cache.

    PATH is a model directory, an exported artifact, `demo`, or a preset name.

    \b
    Examples:
      retnet-edge inspect small
      retnet-edge inspect ./my-model --json
    """
    from ..inspection import inspect_model, render

    report = inspect_model(path)
    emit(report, as_json, render(report))


@click.command("init-random")
@click.option("--preset", required=True, help=f"Model size: {PRESET_NAMES}.")
@click.option("-o", "--output", required=True, type=click.Path(), help="Directory to write (native format).")
@click.option("--seed", default=0, show_default=True, help="Random seed.")
@click.option("--std", default=0.02, show_default=True, help="Init std of every matrix.")
@click.option("--dtype", type=click.Choice(["fp32", "fp16", "bf16"]), default="fp32", show_default=True,
              help="Dtype the weights are stored in.")
@click.option("--force", is_flag=True, help="Overwrite OUTPUT if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def init_random_cmd(preset: str, output: str, seed: int, std: float, dtype: str, force: bool, as_json: bool) -> None:
    """Write a random-weight model of a named size (for tests and benchmarks).

    \b
    Examples:
      retnet-edge init-random --preset small -o small-random
      retnet-edge init-random --preset 1.3b --dtype fp16 -o big-random
    """
    from ...checkpoints.random_init import init_random

    info(f"initialising preset {preset} (seed {seed}) ...")
    path, n = init_random(preset, output, seed=seed, std=std, dtype=dtype, force=force)
    emit({"output": str(path), "preset": preset, "parameters": n, "dtype": dtype}, as_json,
         f"wrote {path} ({n:,} parameters, {dtype})")


@click.command("train")
@click.argument("corpus", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(), help="Directory for the trained model.")
@click.option("--preset", default="mini", show_default=True, help=f"Model shape: {PRESET_NAMES}.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="JSON file of RetNetConfig fields overriding the preset (vocab_size comes from the tokenizer).")
@click.option("--tokenizer", type=click.Path(), help="Existing tokenizer.json/.model; else BPE is trained.")
@click.option("--vocab-size", default=4096, show_default=True, help="Vocabulary of the BPE tokenizer trained here.")
@click.option("--steps", default=2000, show_default=True, help="Optimizer steps.")
@click.option("--batch-size", default=32, show_default=True, help="Sequences per step.")
@click.option("--seq-len", default=512, show_default=True, help="Tokens per training sequence.")
@click.option("--lr", default=1.5e-3, show_default=True, help="Peak learning rate (AdamW, cosine decay).")
@click.option("--warmup", default=100, show_default=True, help="Linear warm-up steps.")
@click.option("--dropout", default=0.1, show_default=True, help="Dropout probability while training.")
@click.option("--eval-every", default=100, show_default=True, help="Steps between validation passes (the best is kept).")
@click.option("--seed", default=0, show_default=True, help="Random seed (data order and init).")
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

    from ...base.confine import regular_file
    from ...base.io_utils import read_json
    from ...core.presets import preset_config
    from ..card import write_model_card
    from ..train import TrainConfig, train

    regular_file(corpus, "corpus")  # a FIFO or a device is refused by name, never read
    preset_config(preset)  # validates the name
    model_cfg = dict(PRESETS[preset])
    if config_file:
        model_cfg.update(read_json(config_file))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    train_cfg = TrainConfig(steps=steps, batch_size=batch_size, seq_len=seq_len, lr=lr, warmup=min(warmup, steps),
                     dropout=dropout, eval_every=eval_every, seed=seed, device=device)
    summary = train(corpus, output, model_cfg, train_cfg, tokenizer=tokenizer, vocab_size=vocab_size,
                    resume=not no_resume, force=force, log=info)
    write_model_card(output, summary, corpus)
    emit({k: v for k, v in summary.items() if k != "history"}, as_json,
         f"wrote {output}: {summary['parameters']:,} parameters, best val loss {summary['best_val_loss']}")




@click.command("convert")
@click.argument("src")
@click.option("-o", "--output", required=True, type=click.Path(), help="Native-format directory to write.")
@click.option("--format", "fmt", type=RegistryChoice(format_names, extra=("auto",)), default="auto", show_default=True,
              help="Source format.")
@click.option("--dtype", type=click.Choice(["auto", "fp32", "fp16", "bf16"]), default="auto", show_default=True,
              help="Weight dtype of the output (auto keeps the source's).")
@click.option("--force", is_flag=True, help="Overwrite OUTPUT if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def convert_cmd(src, output, fmt, dtype, force, as_json):
    """Convert a torchscale / fairseq / syncdoth / fla checkpoint to the native format.

    Streams tensor by tensor (memory ~ one tensor). Pickles load with weights_only=True only, and a
    checkpoint's modeling_*.py is never imported.

    \b
    Examples:
      retnet-edge convert ./retnet-1.3B-100B -o retnet-1.3b --dtype fp16
      retnet-edge convert checkpoint_best.pt --format fairseq -o my-retnet
    """
    from ...checkpoints.convert import convert

    last = [0.0]

    def progress(done: int, total: int) -> None:
        import time

        if not as_json and (time.time() - last[0] > 2 or done == total):
            info(f"  {done}/{total} tensors")
            last[0] = time.time()

    s = convert(src, output, fmt, dtype, force, progress)
    c = s["config"]
    emit(s, as_json, f"converted {s['format']} -> {s['output']}: {s['tensors']} tensors, {s['parameters']:,} "
         f"parameters ({', '.join(s['source_dtypes'])} -> {s['dtype']}), {s['bytes'] / 2**20:,.1f} MiB\n"
         f"config: L={c['n_layers']} d_model={c['d_model']} heads={c['n_heads']} value_dim={c['value_dim']} "
         f"ffn={c['ffn_dim']} rotary={c['rotary']} decay={c['decay']} normalize={c['normalize']} "
         f"group_norm_affine={c['group_norm_affine']} tie={c['tie_embeddings']}")


