"""`eval`: how well a model or an artifact predicts a text."""
from __future__ import annotations

import click

from ..cli_utils import emit, info, require_file, runner_and_tokenizer


@click.command("eval")
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

    from ...base.paths import DEMO_DIR
    from ...errors import RetNetEdgeError
    from ...runtimes.evaluate import evaluate_text

    if text_file is None:
        if not (DEMO_DIR / "heldout.txt").is_file():
            raise RetNetEdgeError("no --text given and no demo held-out text is installed")
        text_file = DEMO_DIR / "heldout.txt"
    require_file(text_file, "text")
    runner, tok = runner_and_tokenizer(model, tokenizer, threads)
    last = [0]

    def progress(done: int, total: int) -> None:
        if not as_json and done - last[0] >= 8192:
            info(f"  {done:,}/{total:,} tokens")
            last[0] = done

    r = evaluate_text(runner, tok, Path(text_file).read_text(encoding="utf-8"), window, max_tokens, progress)
    r.update(model=str(model), text=str(text_file), tokenizer=tok.file_name, vocab_size=tok.vocab_size)
    emit(r, as_json, f"perplexity {r['perplexity']:.3f} ({r['tokens']:,} tokens, {tok.file_name}, vocab "
         f"{tok.vocab_size})  bits/byte {r['bits_per_byte']:.4f}  [{r['seconds']:.1f} s]")


