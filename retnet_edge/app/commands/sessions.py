"""`chat` and `serve`: conversations whose state carries across turns, in a terminal or over HTTP."""
from __future__ import annotations

from pathlib import Path

import click

from ...errors import MissingExtraError
from ..cli_utils import info, runtime_options, sampling_options

DEFAULT_SAVE_DIR = Path("~/.cache/retnet-edge/chats")

model_options = [
    click.option("--threads", type=int, default=None, help="CPU threads for the runtime."),
    click.option("--tokenizer", type=click.Path(), help="Tokenizer file if MODEL has none."),
    click.option("--chat-template", type=click.Path(exists=True, dir_okay=False),
                 help="A jinja chat template (default: tokenizer_config.json's, else plain continuation)."),
    click.option("--cache-mb", type=click.FloatRange(min=0), default=None,
                 help="Prefix-cache memory budget in MiB (default: room for 32 states; 0: off)."),
]


def with_model_options(fn):
    fn = runtime_options(fn)  # --step-graph, --spin/--no-spin (as generate has them)
    for option in reversed(model_options):
        fn = option(fn)
    return fn


@click.command("chat")
@click.argument("model")
@click.option("-n", "--max-new-tokens", default=256, show_default=True, help="Longest reply, in tokens.")
@sampling_options
@click.option("--save-dir", type=click.Path(file_okay=False), default=str(DEFAULT_SAVE_DIR), show_default=True,
              help="Where /save and /load keep conversations.")
@with_model_options
def chat_cmd(model, max_new_tokens, temperature, top_k, top_p, seed, save_dir, threads, tokenizer, chat_template,
             cache_mb, step_graph, spin, prompt_weights):
    """Chat with MODEL in the terminal; the state carries across turns, so each turn reads only its new tokens.

    Replies stream as they come; after each one, stderr shows the time to first token, tokens/s, and how
    much of the prompt came from the cache. Commands: /save NAME, /load NAME, /undo (back to before the
    last turn), /reset, /help, /quit (or Ctrl-D). Ctrl-C stops the current reply, not the chat. Without
    a chat template (tokenizer_config.json or --chat-template) the chat is plain continuation: each of
    your messages after the first starts after a blank line and the model continues your text.

    \b
    Examples:
      retnet-edge chat demo --temperature 0
      retnet-edge chat out/demo/onnx-int4 -n 64 --save-dir ./chats
      retnet-edge chat ./my-model --chat-template template.jinja
    """
    from ...runtimes.generate import SamplingConfig
    from ..chat import open_conversation, run_chat

    sampling = SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    conv = open_conversation(model, tokenizer, threads, sampling, max_new_tokens, cache_mb, chat_template, info,
                             step_graph=step_graph, spin=spin, prompt_weights=prompt_weights)
    mode = "chat template" if conv.template is not None else "plain continuation"
    info(f"chatting with {model} ({mode}); /help for commands, Ctrl-D to leave")
    run_chat(conv, Path(save_dir).expanduser(), lambda s: click.echo(s, nl=False), info)


@click.command("serve")
@click.argument("model")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (loopback by default).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--api-key", default=None, help="Require 'Authorization: Bearer KEY' on /v1 routes.")
@click.option("--model-name", default=None, help="The model id clients send (default: MODEL's directory name).")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
              help="Also keep cached states on disk (checksummed), so conversations resume after a restart.")
@click.option("--max-prompt-tokens", type=click.IntRange(min=1), default=32768, show_default=True)
@click.option("--max-tokens", "max_tokens_limit", type=click.IntRange(min=1), default=2048, show_default=True,
              help="The largest max_tokens a request may ask for.")
@click.option("--max-body-kb", type=click.IntRange(min=1), default=1024, show_default=True)
@click.option("--max-queue", type=click.IntRange(min=0), default=8, show_default=True,
              help="Requests waiting behind the running one; more get 503 with Retry-After.")
@with_model_options
def serve_cmd(model, host, port, api_key, model_name, cache_dir, max_prompt_tokens, max_tokens_limit, max_body_kb,
              max_queue, threads, tokenizer, chat_template, cache_mb, step_graph, spin, prompt_weights):
    """Serve MODEL over an OpenAI-compatible HTTP API (one decode at a time, a shared prefix cache).

    Routes: GET /v1/models, POST /v1/completions and /v1/chat/completions (stream: true for server-sent
    events; temperature, top_p, max_tokens, stop, seed), GET /health. A client that resends the whole
    conversation each turn pays only for the new tokens. Runs until Ctrl-C.

    \b
    Examples:
      retnet-edge serve out/demo/onnx-int4
      retnet-edge serve out/demo/onnx-int4 --port 8080 --api-key secret --cache-dir ~/.cache/retnet-edge/states
      curl http://127.0.0.1:8000/v1/completions -H 'Content-Type: application/json' \\
        -d '{"model": "onnx-int4", "prompt": "And God said", "max_tokens": 16, "temperature": 0}'
    """
    try:
        from ..serve import Limits, ServerConfig, serve
    except ModuleNotFoundError as exc:
        raise MissingExtraError(f"serve needs {exc.name}, which the base install leaves out",
                                hint="pip install 'retnet-edge[serve]'") from exc

    limits = Limits(max_prompt_tokens, max_tokens_limit, max_body_kb * 1024, max_queue)
    serve(ServerConfig(model, host, port, api_key, model_name, tokenizer, threads, cache_mb, cache_dir, chat_template,
                       limits, step_graph, spin, prompt_weights), info)
