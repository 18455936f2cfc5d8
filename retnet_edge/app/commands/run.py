"""`generate`: text from a model or an artifact."""
from __future__ import annotations

import click

from ..cli_utils import emit, info, runner_and_tokenizer, runtime_options, sampling_options


@click.command("generate")
@click.argument("model")
@click.argument("prompt")
@click.option("-n", "--max-new-tokens", default=64, show_default=True, help="Tokens to generate after the prompt.")
@sampling_options
@click.option("--stream/--no-stream", default=True, show_default=True, help="Print tokens as they come.")
@click.option("--threads", type=int, default=None, help="CPU threads for the runtime.")
@click.option("--tokenizer", type=click.Path(), help="Tokenizer file if MODEL has none.")
@runtime_options
@click.option("--json", "as_json", is_flag=True, help="Print text and speed as JSON (implies --no-stream).")
def generate_cmd(model, prompt, max_new_tokens, temperature, top_k, top_p, seed, stream, threads, tokenizer, step_graph,
                 spin, prompt_weights, as_json):
    """Generate text: chunkwise prefill of PROMPT, then one recurrent step per token.

    MODEL is `demo`, a model directory, or an exported artifact directory (ONNX or ExecuTorch).
    Speed goes to stderr.

    \b
    Examples:
      retnet-edge generate demo "And God said" -n 48 --seed 0
      retnet-edge generate out/onnx-int4 "In the beginning" --temperature 0
    """
    from ...runtimes.generate import (
        GenerationStats,
        SamplingConfig,
        generate_ids,
        stream_text,
    )

    runner, tok = runner_and_tokenizer(model, tokenizer, threads, step_graph, spin, prompt_weights)
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
    if getattr(runner.session, "prompt_note", ""):
        info(runner.session.prompt_note)


