"""`eval`: how well a model or an artifact predicts a text, matches a reference, or answers tasks."""
from __future__ import annotations

import click

from ..cli_utils import PROMPT_WEIGHTS, emit, require_file, runner_and_tokenizer

TEXT_ONLY = ("text_file", "window", "max_tokens", "reference")
TASKS_ONLY = ("limit", "num_fewshot", "include_path", "max_length")


@click.command("eval")
@click.argument("model")
@click.option("--text", "text_file", type=click.Path(dir_okay=False),
              help="Text to score (default: the demo's held-out text when MODEL is demo).")
@click.option("--window", default=512, show_default=True, help="Tokens per independently scored window.")
@click.option("--max-tokens", type=int, default=None, help="Score only the first N tokens.")
@click.option("--reference", metavar="MODEL_OR_ARTIFACT",
              help="Compare with this model on the text: KL (mean, p99), top-1 agreement, Δppl.")
@click.option("--tasks", metavar="A,B", help="lm-evaluation-harness tasks (standard names, demo-mc, or those of "
                                             "--include-path) instead of a text; needs the `eval` extra.")
@click.option("--limit", type=int, default=None, help="Items per task (default: all).")
@click.option("--num-fewshot", type=int, default=None, help="Solved examples before each item (default: the task's).")
@click.option("--include-path", type=click.Path(), help="A folder of local task files (YAML + JSONL).")
@click.option("--max-length", type=int, default=None,
              help="Refuse items longer than N tokens (default: the artifact's own limit, if it declares one).")
@click.option("--threads", type=int, default=None, help="CPU threads for the runtime.")
@click.option("--tokenizer", type=click.Path(), help="Tokenizer file if MODEL has none.")
@click.option("--prompt-weights", type=click.Choice(PROMPT_WEIGHTS), default="auto", show_default=True,
              help="ONNX int4: text is scored through the prompt graph, so auto scores the int8 weights derived "
                   "from the int4 codes (what prompts run on); stored scores the int4 weights as exported (what "
                   "decoding runs on).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.pass_context
def eval_cmd(ctx, model, text_file, window, max_tokens, reference, tasks, limit, num_fewshot, include_path,
             max_length, threads, tokenizer, prompt_weights, as_json):
    """Perplexity and bits per byte of MODEL on a text; with --reference, its divergence from another
    model; with --tasks, its accuracy on lm-evaluation-harness tasks (each choice scored from the state
    after the shared context).

    \b
    Examples:
      retnet-edge eval demo --json
      retnet-edge eval my-model --text valid.txt --window 1024
      retnet-edge eval out/demo-onnx-int4 --reference demo
      retnet-edge eval out/demo-onnx-int4 --tasks demo-mc
      retnet-edge eval out/demo-onnx-int4 --tasks my-task --include-path my-tasks/ --limit 100 --json
    """
    from click.core import ParameterSource

    given = lambda name: ctx.get_parameter_source(name) != ParameterSource.DEFAULT  # noqa: E731
    mode_only = TEXT_ONLY if tasks is not None else TASKS_ONLY
    wrong = [f"--{n.replace('_file', '').replace('_', '-')}" for n in mode_only if given(n)]
    if wrong:
        raise click.UsageError(f"{', '.join(wrong)} {'does' if len(wrong) == 1 else 'do'} not apply "
                               f"{'with' if tasks is not None else 'without'} --tasks")
    if tasks is not None:
        _tasks(model, tasks, limit, num_fewshot, include_path, max_length, threads, tokenizer, prompt_weights, as_json)
    else:
        _text(model, text_file, window, max_tokens, reference, threads, tokenizer, prompt_weights, as_json)


def _progress(what: str, as_json: bool):
    """A stderr bar on a terminal; elsewhere a line at every tenth (nothing with --json). It writes to the
    stderr of when it was made: lm-eval's own bars are silenced by redirecting stderr while it runs."""
    import sys

    from tqdm import tqdm

    from ...base.progress import bar_enabled

    err, bar, last = sys.stderr, [None], [0]

    def update(done: int, total: int) -> None:
        if bar_enabled(as_json):
            bar[0] = bar[0] or tqdm(total=total, desc=what, file=err, leave=False)
            bar[0].update(done - bar[0].n)
        elif not as_json and (done == total or done - last[0] >= -(-total // 10)):
            print(f"  {done:,}/{total:,} {what}", file=err, flush=True)
            last[0] = done

    return update


def _tasks(model, tasks, limit, num_fewshot, include_path, max_length, threads, tokenizer, prompt_weights, as_json):
    from ..tasks import format_table, run_tasks

    runner, tok = runner_and_tokenizer(model, tokenizer, threads, prompt_weights=prompt_weights)
    names = [t.strip() for t in tasks.split(",") if t.strip()]
    r = run_tasks(runner, tok, names, limit=limit, num_fewshot=num_fewshot, include_path=include_path,
                  max_length=max_length, progress=_progress("requests", as_json))
    r.update(model=str(model), tokenizer=tok.file_name)
    emit(r, as_json, format_table(r))


def _text(model, text_file, window, max_tokens, reference, threads, tokenizer, prompt_weights, as_json):
    from pathlib import Path

    from ...base.paths import DEMO_DIR
    from ...errors import RetNetEdgeError

    if text_file is None:
        if not (DEMO_DIR / "heldout.txt").is_file():
            raise RetNetEdgeError("no --text given and no demo held-out text is installed")
        text_file = DEMO_DIR / "heldout.txt"
    require_file(text_file, "text")
    runner, tok = runner_and_tokenizer(model, tokenizer, threads, prompt_weights=prompt_weights)
    text = Path(text_file).read_text(encoding="utf-8")
    if reference is not None:
        from ...runtimes import load_runner
        from ...runtimes.scoring import compare_text

        r = compare_text(runner, load_runner(reference, threads=threads), tok, text, window, max_tokens,
                         _progress("tokens", as_json))
        r.update(model=str(model), reference=str(reference), text=str(text_file), tokenizer=tok.file_name)
        emit(r, as_json, f"KL mean {r['kl_mean']:.4g} nats, p99 {r['kl_p99']:.4g}  top-1 agreement "
             f"{r['top1']:.2%}  perplexity {r['perplexity']:.3f} vs {r['reference_perplexity']:.3f} "
             f"(Δ {r['delta_ppl']:+.3f}, {r['delta_ppl_pct']:+.2f} %)  ({r['tokens']:,} tokens)")
        return
    from ...runtimes.evaluate import evaluate_text

    r = evaluate_text(runner, tok, text, window, max_tokens, _progress("tokens", as_json))
    r.update(model=str(model), text=str(text_file), tokenizer=tok.file_name, vocab_size=tok.vocab_size)
    emit(r, as_json, f"perplexity {r['perplexity']:.3f} ({r['tokens']:,} tokens, {tok.file_name}, vocab "
         f"{tok.vocab_size})  bits/byte {r['bits_per_byte']:.4f}  [{r['seconds']:.1f} s]")
