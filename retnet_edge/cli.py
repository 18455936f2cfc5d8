"""The `retnet-edge` command line. Commands parse, call one library function, and print.

Choices (formats, targets, presets, flavours) come from the registries. The exporters and runtimes
are imported inside commands (and target choices read lazily), so `--help` never loads onnx,
onnxruntime or executorch.
"""
from __future__ import annotations

import json

import click

from . import __version__
from .cli_utils import ErrorHandlingGroup, RegistryChoice, emit, info, quiet_libraries
from .errors import ConfigError
from .presets import PRESETS
from .quant import QuantScheme

PRESET_NAMES = ", ".join(PRESETS)


def _target_names() -> list[str]:
    from .exporters import TARGETS  # lazily: the exporters import onnx

    return TARGETS.names()


def _format_names() -> list[str]:
    from .checkpoints import FORMATS  # lazily: the checkpoint readers import torch

    return FORMATS.names()


def _flavor_names() -> list[str]:
    from .exporters import TARGETS

    return [f for _, t in TARGETS.items() for f in t.options.get("flavor", ())]

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

    Exit codes: 0 ok, 1 known error (one line), 2 usage, 3 parity failure.
    Set RETNET_EDGE_DEBUG=1 for tracebacks (and library warnings).
    """
    import os
    import warnings

    if not os.environ.get("RETNET_EDGE_DEBUG"):
        warnings.simplefilter("ignore")  # exporter/library notices are not for end users
        quiet_libraries()


@main.command("inspect")
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
    from .inspection import inspect_model, render

    report = inspect_model(path)
    emit(report, as_json, render(report))


@main.command("init-random")
@click.option("--preset", required=True, help=f"Model size: {PRESET_NAMES}.")
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
@click.argument("corpus", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(), help="Directory for the trained model.")
@click.option("--preset", default="mini", show_default=True, help=f"Model shape: {PRESET_NAMES}.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="JSON file of RetNetConfig fields overriding the preset (vocab_size comes from the tokenizer).")
@click.option("--tokenizer", type=click.Path(), help="Existing tokenizer.json/.model; else BPE is trained.")
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
    from .presets import preset_config
    from .train import TrainConfig, train

    _require_file(corpus, "corpus")
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


def _require_file(path, what: str) -> None:
    """Missing inputs are a one-line error (exit 1), not a usage error."""
    from pathlib import Path

    from .errors import RetNetEdgeError

    if not Path(path).is_file():
        raise RetNetEdgeError(f"{what} file {path} not found")


def _runner_and_tokenizer(model: str, tokenizer: str | None, threads: int | None):
    from .errors import CheckpointError
    from .runtimes import load_runner  # here: the runtimes are not needed for --help
    from .tokenizer import load_tokenizer

    runner = load_runner(model, threads=threads)
    source = tokenizer or runner.tokenizer_dir
    if source is None:
        raise CheckpointError(f"{model} has no tokenizer", hint="pass --tokenizer FILE")
    tok = load_tokenizer(source)
    if tok.vocab_size > runner.cfg.vocab_size:  # its ids past the model's vocabulary would crash the engine
        raise CheckpointError(f"the tokenizer ({tok.vocab_size} tokens) is larger than the model's vocabulary "
                              f"({runner.cfg.vocab_size}): it is not this model's tokenizer",
                              hint="pass the model's own tokenizer with --tokenizer")
    return runner, tok


@main.command("generate")
@click.argument("model")
@click.argument("prompt")
@click.option("-n", "--max-new-tokens", default=64, show_default=True)
@click.option("--temperature", default=0.8, show_default=True, help="0 for greedy decoding.")
@click.option("--top-k", default=0, show_default=True, help="Keep the k most likely tokens (0: off).")
@click.option("--top-p", default=0.95, show_default=True, help="Nucleus sampling mass (1: off).")
@click.option("--seed", type=int, default=None, help="Sampling seed (reproducible output).")
@click.option("--stream/--no-stream", default=True, show_default=True, help="Print tokens as they come.")
@click.option("--threads", type=int, default=None, help="CPU threads for the runtime.")
@click.option("--tokenizer", type=click.Path(), help="Tokenizer file if MODEL has none.")
@click.option("--json", "as_json", is_flag=True, help="Print text and speed as JSON (implies --no-stream).")
def generate_cmd(model, prompt, max_new_tokens, temperature, top_k, top_p, seed, stream, threads, tokenizer, as_json):
    """Generate text: chunkwise prefill of PROMPT, then one recurrent step per token.

    MODEL is `demo`, a model directory, or an exported artifact directory (ONNX or ExecuTorch).
    Speed goes to stderr.

    \b
    Examples:
      retnet-edge generate demo "And God said" -n 48 --seed 0
      retnet-edge generate out/onnx-int4 "In the beginning" --temperature 0
    """
    from .generate import GenerationStats, SamplingConfig, generate_ids, stream_text

    runner, tok = _runner_and_tokenizer(model, tokenizer, threads)
    sampling = SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    stats = GenerationStats()
    ids = generate_ids(runner, tok.encode(prompt, add_bos=True), max_new_tokens, sampling, tok.eos_id, stats,
                       release_prefill=True)
    live = stream and not as_json
    if live:
        click.echo(prompt, nl=False)
    new = stream_text(tok, ids, (lambda s: click.echo(s, nl=False)) if live else (lambda s: None))
    text = tok.decode(new)
    speed = (f"{stats.prompt_tokens} prompt tokens in {stats.prefill_s * 1e3:.1f} ms, "
             f"{stats.new_tokens} new tokens at {stats.decode_tok_s:.1f} tok/s")
    if as_json:
        emit({"prompt": prompt, "completion": text, "prompt_tokens": stats.prompt_tokens,
              "new_tokens": stats.new_tokens, "prefill_ms": stats.prefill_s * 1e3,
              "decode_tok_s": stats.decode_tok_s}, True)
    elif live:
        click.echo()
    else:
        click.echo(prompt + text)
    info(speed)


@main.command("eval")
@click.argument("model")
@click.option("--text", "text_file", type=click.Path(dir_okay=False),
              help="Text to score (default: the demo's held-out text when MODEL is demo).")
@click.option("--window", default=512, show_default=True, help="Tokens per independently scored window.")
@click.option("--max-tokens", type=int, default=None, help="Score only the first N tokens.")
@click.option("--threads", type=int, default=None)
@click.option("--tokenizer", type=click.Path())
@click.option("--json", "as_json", is_flag=True)
def eval_cmd(model, text_file, window, max_tokens, threads, tokenizer, as_json):
    """Perplexity (stated tokenizer) and bits per byte of MODEL on a text.

    \b
    Examples:
      retnet-edge eval demo --json
      retnet-edge eval my-model --text valid.txt --window 1024
    """
    from pathlib import Path

    from .errors import RetNetEdgeError
    from .evaluate import evaluate_text
    from .paths import DEMO_DIR

    if text_file is None:
        if not (DEMO_DIR / "heldout.txt").is_file():
            raise RetNetEdgeError("no --text given and no demo held-out text is installed")
        text_file = DEMO_DIR / "heldout.txt"
    _require_file(text_file, "text")
    runner, tok = _runner_and_tokenizer(model, tokenizer, threads)
    last = [0]

    def progress(done: int, total: int) -> None:
        if not as_json and done - last[0] >= 8192:
            info(f"  {done:,}/{total:,} tokens")
            last[0] = done

    r = evaluate_text(runner, tok, Path(text_file).read_text(encoding="utf-8"), window, max_tokens, progress)
    r.update(model=str(model), text=str(text_file), tokenizer=tok.file_name, vocab_size=tok.vocab_size)
    emit(r, as_json, f"perplexity {r['perplexity']:.3f} ({r['tokens']:,} tokens, {tok.file_name}, vocab "
         f"{tok.vocab_size})  bits/byte {r['bits_per_byte']:.4f}  [{r['seconds']:.1f} s]")


QUANT_HELP = f"{', '.join(s.value for s in QuantScheme)}: 8-bit weights, or 4-bit group-wise weights (int4)."


@main.command("export")
@click.argument("model")
@click.option("--target", default=None,
              help="onnx, executorch, or both comma-separated (default with no --quant either: both).")
@click.option("--quant", default=None, help=QUANT_HELP + " Comma-separated for several (default: int8,int4).")
@click.option("--group-size", default=32, show_default=True, help="Block/group size of int4 weights.")
@click.option("--lm-head", default="auto", show_default=True,
              help="lm_head precision: auto (int8 under int4), fp32, int8, int4.")
@click.option("--embedding", default="fp32", show_default=True, help="Embedding precision: fp32, int8, int4.")
@click.option("--prefill-weights", default="same", show_default=True, type=click.Choice(["same", "int8"]),
              help="ONNX int4 only: `int8` gives the prompt graph int8 copies of the int4 weights, so prompts run "
                   "through the int8 GEMM (~2x faster prompts on AVX-512/AMX; weights.bin ~1.7x larger). "
                   "Decode is unchanged.")
@click.option("--flavor", type=RegistryChoice(_flavor_names), default=None,
              help="ExecuTorch: runner (default; state in the program, stock LLM runner) or io (state in/out). "
                   "ONNX: standard (default; step + prefill graphs) or genai (one graph onnxruntime-genai runs).")
@click.option("-o", "--output", required=True, type=click.Path(), help="Artifact directory (or directory of them).")
@click.option("--steps", default=64, show_default=True, help="Teacher-forced validation steps.")
@click.option("--validate/--no-validate", default=True, show_default=True,
              help="Run the parity gate before writing. --no-validate writes \"validation\": \"skipped\" into the "
                   "manifest (benchmarks of random weights); `verify` runs the gate later.")
@click.option("--bench/--no-bench", default=True, show_default=True,
              help="Several artifacts: a short bench of each in the report (decode at context 0 and 2048).")
@click.option("--whole-model", is_flag=True,
              help="Load the whole fp32 model and trace it, instead of reading the checkpoint one layer at a time "
                   "(the default: memory independent of the depth). Same artifact; needs ~3x the fp32 size.")
@click.option("--force", is_flag=True, help="Overwrite OUTPUT (or the artifacts in it) if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest (or the report) as JSON.")
def export_cmd(model, target, quant, group_size, lm_head, embedding, prefill_weights, flavor, output, steps, validate,
               bench, whole_model, force, as_json):
    """Export MODEL to verified ONNX / ExecuTorch artifacts, with a report.

    MODEL is `demo`, a native model directory or any supported checkpoint. With one --target and one
    --quant, OUTPUT is that one artifact (+ manifest.json). Otherwise (by default: both targets at int8
    and int4) OUTPUT holds one artifact per target x quant (OUTPUT/onnx-int4/, ...), each gated, scored
    for quality (held-out perplexity, or KL / top-1 vs fp32) and briefly benched, plus OUTPUT/report.md
    and report.json; a failed target x quant is reported and the others still finish (exit non-zero).

    Every artifact is run against eager PyTorch for --steps teacher-forced steps (batch 1 and 3, step and
    prefill paths) before it is kept; past the tolerance of the quant mode nothing is written (exit 3).
    The checkpoint is read one layer at a time, export and gate alike (bf16/fp16 upcast per tensor), so a
    7B model exports in ~12 GB.

    \b
    Examples:
      retnet-edge export demo -o out/demo                      # 4 artifacts + out/demo/report.md
      retnet-edge export demo --target onnx --quant int4 -o out/demo-onnx-int4
      retnet-edge export my-model --target executorch --quant int8,int4 --no-bench -o out/pte
      retnet-edge export my-model --target onnx --quant int4 --prefill-weights int8 -o out/fast-prompts
    """
    from .bundle import DEFAULT_QUANTS, DEFAULT_TARGETS, parse_list

    targets = parse_list(target, DEFAULT_TARGETS if quant is None else ("onnx",), "--target")
    quants = parse_list(quant, DEFAULT_QUANTS if target is None else ("fp32",), "--quant")
    if len(targets) == 1 and len(quants) == 1 and (target is not None or quant is not None):
        _export_one(model, targets[0], quants[0], group_size, lm_head, embedding, flavor, output, steps, validate,
                    force, as_json, streamed=False if whole_model else None, prefill_weights=prefill_weights)
        return
    if not validate:
        raise ConfigError("--no-validate is for a single artifact (--target T --quant Q); a report needs the gate")
    from .bundle import BundleSpec, export_bundle
    from .progress import bar_enabled
    from .report import render_table

    spec = BundleSpec(targets=targets, quants=quants, group_size=group_size, lm_head=lm_head, embedding=embedding,
                      prefill_weights=prefill_weights, flavor=flavor, steps=steps, bench=bench, force=force,
                      streamed=False if whole_model else None)
    report = export_bundle(model, output, spec, log=info, show_bar=bar_enabled(as_json))
    emit(report, as_json, render_table(report))
    failed = [a for a in report["artifacts"] if a["status"] != "ok"]
    if failed:
        click.get_current_context().exit(max(a["exit_code"] for a in failed))


def _export_one(model, target, quant, group_size, lm_head, embedding, flavor, output, steps, validate, force,
                as_json, streamed: bool | None = None, prefill_weights: str = "same") -> None:
    from .exporters import TARGETS, export_model
    from .quant import QuantConfig

    qc = QuantConfig(scheme=quant, group_size=group_size, lm_head=lm_head, embedding=embedding,
                     prefill_weights=prefill_weights)
    choices = TARGETS.get(target).options.get("flavor", ())
    if flavor is not None and flavor not in choices:
        raise ConfigError(f"--flavor {flavor} is not a {target} flavor; expected one of {', '.join(choices) or 'none'}")
    options = {"flavor": flavor or choices[0]} if choices else None
    from .progress import bar_enabled

    art = export_model(model, target, qc, output, force=force, steps=steps, options=options, streamed=streamed,
                       validate_artifact=validate, log=info, show_bar=bar_enabled(as_json))
    sizes = ", ".join(f"{k} {v['bytes'] / 2**20:.2f} MiB" for k, v in art.manifest["files"].items())
    if art.manifest["validation"] == "skipped":
        verdict = "validation skipped (--no-validate): not checked against eager PyTorch"
    else:
        worst = max(art.manifest["validation"]["checks"], key=lambda c: c["kl"])
        conf = worst.get("top1_confident")
        where = f"{conf:.3f} where eager is confident" if conf is not None else "eager is nowhere confident"
        rounding = f" (rounding alone: {worst['rounding_kl']:.2e})" if worst.get("rounding_kl") is not None else ""
        verdict = (f"validated: top-1 {worst['top1']:.3f} ({where}), KL {worst['kl']:.2e}{rounding}, max rel "
                   f"{worst['max_rel']:.2e} (worst check)")
    emit(art.manifest, as_json, f"wrote {art.path}: {sizes}\n{verdict}")


@main.command("verify")
@click.argument("path")
@click.option("--model", "model_path", help="Source model (default: the one recorded in each manifest).")
@click.option("--steps", default=64, show_default=True, help="Teacher-forced tokens per check.")
@click.option("--positions", default=None, help="Token counts at which the state is compared per layer "
              "(default: 1, 4, 16, ... and --steps).")
@click.option("--forms", is_flag=True, help="PATH is a model: compare its parallel, chunkwise and recurrent forms.")
@click.option("--json", "as_json", is_flag=True)
def verify_cmd(path, model_path, steps, positions, forms, as_json):
    """Re-check artifacts against their source model and show where they diverge (exit 3 on failure).

    PATH is an artifact directory or a directory of them (`export -o DIR`). Each artifact's files are
    re-hashed against its manifest, its validation gate is rerun, and the recurrent state is compared
    with eager PyTorch layer by layer after --positions tokens: the first layer that moves away is where
    a kernel, a quantized projection or the state hand-off goes wrong. With --forms, PATH is a model and
    its three forms are compared the same way.

    \b
    Examples:
      retnet-edge verify out/demo                 # every artifact of a multi-artifact export
      retnet-edge verify out/pte --model ./my-model --json
      retnet-edge verify demo --forms --steps 128
    """
    from .exporters.divergence import default_positions
    from .exporters.validate import raise_if_failed

    pos = _int_list(positions, "--positions") if positions else None
    if forms:
        _verify_forms(path, steps, pos, as_json)
        return
    from .exporters.pipeline import artifact_dirs, verify_artifact

    results, dirs = [], artifact_dirs(path)
    for d in dirs:
        if len(dirs) > 1:
            info(f"verifying {d}")
        results.append(verify_artifact(d, model_path, steps, pos or default_positions(steps), log=info))
    lines = [f"{'passed' if r.report.passed else 'FAILED'}  {r.path}" for r in results]
    emit([r.to_dict() for r in results] if len(results) > 1 else results[0].to_dict(), as_json, "\n".join(lines))
    for r in results:
        raise_if_failed(r.report, str(r.path), exporting=False)


def _verify_forms(path: str, steps: int, positions: list[int] | None, as_json: bool) -> None:
    from .errors import ParityError
    from .exporters.divergence import default_positions, forms_divergence
    from .exporters.validate import validation_tokens
    from .loader import load
    from .paths import resolve_path

    from .contract import tokenizer_file
    from .tokenizer import load_tokenizer

    if not 4 <= steps <= 4096:
        raise ConfigError(f"--steps must be between 4 and 4096 with --forms (the parallel form is O(T^2)), got {steps}")
    positions = positions or default_positions(steps)
    if min(positions) < 1 or max(positions) > steps:
        raise ConfigError(f"--positions must lie in 1..{steps} (--steps)")
    src = resolve_path(path)
    model = load(src)
    tok = tokenizer_file(src) if src.is_dir() else None
    ids = validation_tokens(model.cfg.vocab_size, 1, steps, load_tokenizer(tok) if tok else None, seed=1)
    r = forms_divergence(model, ids, positions)
    for t in r["tables"]:
        info(t.render())
    doc = {**r, "tables": [t.to_dict() for t in r["tables"]], "model": str(path)}
    emit(doc, as_json, "\n".join(f"logits {k}: max rel {v:.2e}" for k, v in r["logits_max_rel"].items())
         + f"\n{'passed' if r['passed'] else 'FAILED'} (tolerance {r['tolerance']:.0e})")
    if not r["passed"]:
        raise ParityError(f"the forms of {path} disagree past {r['tolerance']:.0e}; the tables above show where")


@main.command("convert")
@click.argument("src")
@click.option("-o", "--output", required=True, type=click.Path(), help="Native-format directory to write.")
@click.option("--format", "fmt", type=RegistryChoice(_format_names, extra=("auto",)), default="auto", show_default=True,
              help="Source format.")
@click.option("--dtype", type=click.Choice(["auto", "fp32", "fp16", "bf16"]), default="auto", show_default=True,
              help="Weight dtype of the output (auto keeps the source's).")
@click.option("--force", is_flag=True, help="Overwrite OUTPUT if it exists.")
@click.option("--json", "as_json", is_flag=True)
def convert_cmd(src, output, fmt, dtype, force, as_json):
    """Convert a torchscale / fairseq / syncdoth / fla checkpoint to the native format.

    Streams tensor by tensor (memory ~ one tensor). Pickles load with weights_only=True only, and a
    checkpoint's modeling_*.py is never imported.

    \b
    Examples:
      retnet-edge convert ./retnet-1.3B-100B -o retnet-1.3b --dtype fp16
      retnet-edge convert checkpoint_best.pt --format fairseq -o my-retnet
    """
    from .convert import convert

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


def _int_list(value: str, name: str) -> list[int]:
    try:
        return [int(x) for x in value.split(",") if x.strip()]
    except ValueError as exc:
        raise ConfigError(f"{name} must be a comma-separated list of integers, got {value!r}") from exc


@main.command("bench")
@click.argument("models", nargs=-1, required=True)
@click.option("--contexts", default="0,512,2048,8192", show_default=True,
              help="Context depths to measure at (the state / KV cache is filled to each first).")
@click.option("--tokens", default=128, show_default=True, help="Timed decode steps per repetition.")
@click.option("--threads", "threads", default="1,2", show_default=True, help="Thread counts, comma-separated.")
@click.option("--repeat", default=5, show_default=True, help="Repetitions per depth (each restarts at the depth).")
@click.option("--baseline", type=click.Choice(["transformer", "none"]), default="transformer", show_default=True,
              help="Same-size Transformer with a KV cache, at each RetNet ONNX artifact's quant mode.")
@click.option("--runtime", type=click.Choice(["auto", "python", "cpp"]), default="auto", show_default=True,
              help="ExecuTorch artifacts: C++ retnet_bench when built (auto), the Python runtime, or force C++.")
@click.option("--plot", "plot_dir", type=click.Path(file_okay=False), help="Write PNG plots into this directory.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write the JSON document here (atomically).")
@click.option("--work-dir", type=click.Path(file_okay=False), help="Keep baseline artifacts here (reused).")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON document instead of the table.")
def bench_cmd(models, contexts, tokens, threads, repeat, baseline, runtime, plot_dir, output, work_dir, as_json):
    """Per-token latency and memory of artifacts over context, vs a Transformer-KV baseline and the read roof.

    MODELS are exported artifact directories (ONNX or ExecuTorch) or checkpoints (`demo`: eager PyTorch).
    Each artifact runs in a fresh process per thread count; the JSON has one record per (artifact,
    context, threads) with median/p90 ms per token, RSS (anonymous / file-backed), state bytes, bytes
    read per token and the fraction of this machine's measured read bandwidth.

    \b
    Examples:
      retnet-edge bench out/demo-onnx-int4 --contexts 0,2048,8192 --threads 1
      retnet-edge bench out/onnx-int8 out/pte-int8 -o results.json --plot plots/
      retnet-edge bench demo --baseline none --contexts 0,512 --tokens 32 --repeat 2
    """
    from pathlib import Path

    from .bench import BenchConfig, render_table, run_bench
    from .io_utils import atomic_write_text

    bc = BenchConfig(contexts=_int_list(contexts, "--contexts"), tokens=tokens, threads=_int_list(threads, "--threads"),
                     repeat=repeat, baseline=None if baseline == "none" else baseline, runtime=runtime,
                     work_dir=Path(work_dir) if work_dir else None)
    doc = run_bench(list(models), bc, log=info)
    if plot_dir:
        from .bench.plots import write_plots

        doc["plots"] = [str(p) for p in write_plots(doc, Path(plot_dir))]
    if output:
        atomic_write_text(Path(output), json.dumps(doc, indent=2))
        info(f"wrote {output}")
    emit(doc, as_json, render_table(doc))
