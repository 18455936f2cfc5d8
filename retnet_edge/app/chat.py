"""`retnet-edge chat`: a conversation whose recurrent state carries across turns.

`Conversation` is the library: each `send` renders the conversation (the model's chat template, or plain
continuation), tokenizes only the text past what the state already covers, and resumes from the prefix
cache, so a turn computes only its new tokens. It keeps an undo stack of states (/undo) and saves and
loads a conversation with its state (/save, /load: `state_file.write_snapshot`, checksummed, refused for
another artifact). `run_chat` is the terminal loop; `StopMatcher` and `render_prompt` are shared with
`serve`.

Without a chat template a conversation is plain text: each user (or system) message after the first is
preceded by PLAIN_SEPARATOR (a blank line), and each reply continues the text right after the message it
answers, so a plain model simply continues what you type.
"""
from __future__ import annotations

import contextlib
import json
import re
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ..base.io_utils import read_json
from ..base.tokenizer import Tokenizer
from ..errors import ConfigError, MissingExtraError, RetNetEdgeError
from ..runtimes.cache import (
    Entry,
    GenerationCancelled,
    PrefixCache,
    TurnStats,
    cache_for,
    generate_cached,
)
from ..runtimes.generate import SamplingConfig, stream_text
from ..runtimes.session_runner import Runner
from ..runtimes.state_file import StateFileError, read_snapshot, write_snapshot
from .cli_utils import runner_and_tokenizer

PLAIN_SEPARATOR = "\n\n"
TOKENIZER_CONFIG = "tokenizer_config.json"  # where Hugging Face tokenizers keep `chat_template`
UNDO_DEPTH = 8  # states kept for /undo (each one state of the model)
SAVE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class ChatTemplate:
    """A Hugging Face chat template (jinja2) with the special-token strings it may print."""

    source: str
    bos_token: str = ""
    eos_token: str = ""

    def render(self, messages: list[dict]) -> str:
        try:
            from jinja2 import TemplateError
            from jinja2.sandbox import (
                ImmutableSandboxedEnvironment,  # here: only templates need jinja2
            )
        except ModuleNotFoundError as exc:
            raise MissingExtraError("chat templates need jinja2", hint="pip install 'retnet-edge[serve]'") from exc

        def raise_exception(message: str) -> None:
            raise TemplateError(message)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)  # as transformers renders
        env.globals["raise_exception"] = raise_exception
        try:
            return env.from_string(self.source).render(messages=messages, add_generation_prompt=True,
                                                       bos_token=self.bos_token, eos_token=self.eos_token)
        except TemplateError as exc:
            raise ConfigError(f"the chat template failed: {exc}") from exc


def _token_text(value) -> str:
    return value.get("content", "") if isinstance(value, dict) else value if isinstance(value, str) else ""


def load_chat_template(directory: Path | None, override: str | Path | None = None) -> ChatTemplate | None:
    """The template in `override` (a jinja file) or in the directory's tokenizer_config.json, else None."""
    config = read_json(directory / TOKENIZER_CONFIG) if directory and (directory / TOKENIZER_CONFIG).is_file() else {}
    bos, eos = _token_text(config.get("bos_token")), _token_text(config.get("eos_token"))
    source = Path(override).read_text() if override is not None else config.get("chat_template")
    if isinstance(source, list):  # [{"name": "default", "template": ...}, ...]
        source = next((t.get("template") for t in source if isinstance(t, dict) and t.get("name") == "default"), None)
    if not (isinstance(source, str) and source):
        return None
    template = ChatTemplate(source, bos, eos)
    template.render([{"role": "user", "content": "hello"}])  # a broken template fails now, not at turn one
    return template


def end_of_turn_id(tokenizer: Tokenizer, template: ChatTemplate | None) -> int | None:
    """The token a reply ends at: the template's eos_token where it is one token of this tokenizer (chat
    models end a turn with their own, e.g. <|im_end|>), else the tokenizer's end of sequence."""
    if template is not None and template.eos_token:
        ids = tokenizer.encode(template.eos_token)
        if len(ids) == 1:
            return ids[0]
    return tokenizer.eos_id


def render_prompt(messages: list[dict], template: ChatTemplate | None) -> str:
    """The text the model reads for messages [{"role", "content"}]: the template, or plain continuation."""
    if template is not None:
        return template.render(messages)
    return "".join((PLAIN_SEPARATOR if i and m["role"] != "assistant" else "") + m["content"]
                   for i, m in enumerate(messages))


class StopMatcher:
    """Cut streamed text at the first stop string, holding back a tail that may be the start of one."""

    def __init__(self, stops: list[str]):
        self.stops, self.pending, self.stopped = [s for s in stops if s], "", False

    def feed(self, text: str) -> str:
        """The part of pending + text that can be shown now."""
        if self.stopped:
            return ""
        buf = self.pending + text
        found = [i for i in (buf.find(s) for s in self.stops) if i >= 0]
        if found:
            self.stopped, self.pending = True, ""
            return buf[: min(found)]
        hold = max((k for s in self.stops for k in range(1, min(len(s), len(buf) + 1)) if buf.endswith(s[:k])),
                   default=0)
        self.pending = buf[len(buf) - hold:]
        return buf[: len(buf) - hold]

    def flush(self) -> str:
        out, self.pending = ("" if self.stopped else self.pending), ""
        return out


@dataclass
class Turn:
    """What the conversation was before a turn (for /undo): messages, the ids its state covers, their text."""

    messages: list[dict]
    ids: list[int]
    text: str
    entry: Entry | None  # the cached state after ids (None: the empty conversation, or no cache)


@dataclass
class Conversation:
    """A chat over one runner: send, undo, reset, save, load."""

    runner: Runner
    tokenizer: Tokenizer
    cache: PrefixCache | None
    template: ChatTemplate | None
    sampling: SamplingConfig
    max_new_tokens: int
    messages: list[dict] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)
    text: str = ""
    entry: Entry | None = None
    undo_stack: list[Turn] = field(default_factory=list)

    def send(self, user_text: str, on_text: Callable[[str], None] = lambda s: None,
             cancel: threading.Event | None = None) -> TurnStats:
        """One turn: the user's message in, the reply streamed to on_text. Cancelled while reading the
        prompt (GenerationCancelled), the conversation is unchanged; cancelled mid-reply, the reply so far
        stays in it."""
        messages = [*self.messages, {"role": "user", "content": user_text}]
        full = render_prompt(messages, self.template)
        if self.ids and full.startswith(self.text):
            ids = self.ids + self.tokenizer.encode(full[len(self.text):])
        else:  # a template that rewrites earlier turns: read it all again (the cache still helps)
            ids = self.tokenizer.encode(full, add_bos=self.template is None)
        if not ids:
            raise ConfigError("nothing to send: the message and the template produce no tokens")
        stats, reply = TurnStats(), []
        tokens = generate_cached(self.runner, self.cache, ids, self.max_new_tokens, self.sampling,
                                 end_of_turn_id(self.tokenizer, self.template), stats, cancel)
        stream_text(self.tokenizer, _collect(tokens, reply), on_text)
        self.undo_stack = [*self.undo_stack, Turn(self.messages, self.ids, self.text, self.entry)][-UNDO_DEPTH:]
        answer = self.tokenizer.decode(reply)
        self.messages = [*messages, {"role": "assistant", "content": answer}]
        self.ids, self.text = ids + reply, full + answer
        self.entry = self.cache.peek(self.ids) if self.cache is not None else None
        return stats

    def undo(self) -> bool:
        """Back to the state before the last turn; False when there is none."""
        if not self.undo_stack:
            return False
        self._become(self.undo_stack.pop())
        return True

    def reset(self) -> None:
        self._become(Turn([], [], "", None))
        self.undo_stack = []

    def _become(self, turn: Turn) -> None:
        self.messages, self.ids, self.text, self.entry = turn.messages, turn.ids, turn.text, turn.entry
        if turn.entry is None:
            self.runner.reset()
            return
        self.runner.restore(turn.entry.state)
        self.cache.put(turn.ids, turn.entry.state, turn.entry.logits)  # the next turn resumes here

    def save(self, path: Path) -> None:
        if self.entry is None:
            raise ConfigError("nothing to save yet (or this artifact cannot save its state)")
        write_snapshot(path, self.entry.state, {"messages": json.dumps(self.messages), "text": self.text},
                       {"logits": self.entry.logits, "ids": np.array(self.ids, dtype=np.int64)})

    def load(self, path: Path) -> None:
        if self.cache is None:
            raise ConfigError("this artifact cannot load a state (it keeps its state inside the program)")
        if not path.is_file():
            raise ConfigError(f"no saved conversation {path.stem!r} in {path.parent}")
        cfg = self.runner.cfg
        state, meta, extra = read_snapshot(path, self.runner.fingerprint, cfg.n_layers, (1, *cfg.state_shape))
        try:
            messages, ids = json.loads(meta["messages"]), [int(i) for i in extra["ids"]]
            text, logits = meta["text"], extra["logits"]
        except (KeyError, ValueError, TypeError) as exc:
            raise StateFileError(f"{path} is a state file but not a saved conversation") from exc
        if len(ids) != state.position or logits.shape != (cfg.vocab_size,):
            raise StateFileError(f"{path}: its transcript does not match its state")
        self.undo_stack = [*self.undo_stack, Turn(self.messages, self.ids, self.text, self.entry)][-UNDO_DEPTH:]
        self.cache.put(ids, state, logits)
        self.messages, self.ids, self.text, self.entry = messages, ids, text, self.cache.peek(ids)
        self.runner.restore(state)


def open_conversation(model: str, tokenizer: str | None = None, threads: int | None = None,
                      sampling: SamplingConfig = SamplingConfig(), max_new_tokens: int = 256,
                      cache_mb: float | None = None, chat_template: str | None = None,
                      warn: Callable[[str], None] = lambda message: None, step_graph: str = "auto",
                      spin: bool = True, prompt_weights: str = "auto") -> Conversation:
    """A new conversation with MODEL (an artifact directory, a checkpoint, or `demo`). The prompt graph opens
    now, before the first message (an int4 artifact's derives its int8 weights here, not in the first turn)."""
    if max_new_tokens < 1:
        raise ConfigError(f"-n/--max-new-tokens must be >= 1, got {max_new_tokens}")
    runner, tok = runner_and_tokenizer(model, tokenizer, threads, step_graph, spin, prompt_weights)
    runner.open_prompt()
    if getattr(runner.session, "prompt_note", ""):
        warn(runner.session.prompt_note)
    template = load_chat_template(runner.tokenizer_dir, chat_template)
    cache = cache_for(runner, cache_mb, warn=warn)
    return Conversation(runner, tok, cache, template, sampling, max_new_tokens)


def _collect(tokens: Iterator[int], into: list[int]) -> Iterator[int]:
    for t in tokens:
        into.append(t)
        yield t


@contextlib.contextmanager
def interrupt_sets(event: threading.Event) -> Iterator[None]:
    """Inside the block Ctrl-C sets `event` instead of raising: the reply stops at the next token and the
    state is never left half-written (a KeyboardInterrupt can land between an engine call and the
    decoder's bookkeeping)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: event.set())
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


HELP = ("/save NAME  save the conversation and its state   /load NAME  continue a saved one\n"
        "/undo       back to before the last turn          /reset      start over\n"
        "/quit       leave (also Ctrl-D)                   Ctrl-C      stop the current reply")


def turn_line(stats: TurnStats) -> str:
    """The per-turn speed line: time to first token, tokens/s, and what the cache saved."""
    fresh = stats.prompt_tokens - stats.cached_tokens
    return (f"[{stats.new_tokens} tokens, {stats.decode_tok_s:.1f} tok/s, first token {stats.ttft_s * 1e3:.0f} ms; "
            f"prompt: {fresh} new, {stats.cached_tokens} cached]")


def command(conv: Conversation, line: str, save_dir: Path, say: Callable[[str], None]) -> bool:
    """Run one /command; False for /quit."""
    name, _, arg = line.partition(" ")
    arg = arg.strip()
    if name in ("/quit", "/exit"):
        return False
    if name in ("/save", "/load"):
        if not SAVE_NAME.match(arg):
            say(f"{name} NAME: letters, digits, '.', '_' or '-' (got {arg!r})")
            return True
        path = save_dir / f"{arg}.state"
        if name == "/save":
            conv.save(path)
            say(f"[saved {arg}: {len(conv.ids)} tokens -> {path}]")
        else:
            conv.load(path)
            say(f"[loaded {arg}: {len(conv.ids)} tokens, {len(conv.messages)} messages]")
    elif name == "/undo":
        say("[undone]" if conv.undo() else "[nothing to undo]")
    elif name == "/reset":
        conv.reset()
        say("[new conversation]")
    else:
        say(HELP if name == "/help" else f"unknown command {name} (/help lists them)")
    return True


def run_chat(conv: Conversation, save_dir: Path, write: Callable[[str], None], say: Callable[[str], None],
             read: Callable[[str], str] = input) -> None:
    """The terminal loop: `read` a line, run a command or stream a reply through `write`, then `say` the
    turn's speed. Ends at /quit or end of input; Ctrl-C stops a reply (or clears the line)."""
    while True:
        try:
            line = read("> ").strip()
        except EOFError:
            write("\n")
            return
        except KeyboardInterrupt:
            write("\n")
            continue
        if not line:
            continue
        try:
            if line.startswith("/"):
                if not command(conv, line, save_dir, say):
                    return
                continue
            cancel = threading.Event()
            with interrupt_sets(cancel):
                stats = conv.send(line, write, cancel)
            write("\n")
            say(turn_line(stats) if stats.finish_reason != "cancelled" else "[stopped] " + turn_line(stats))
        except GenerationCancelled:
            say("[stopped before the reply; the turn was dropped]")
        except RetNetEdgeError as exc:  # a bad /load file, a template error: one line, the chat goes on
            say(f"Error: {exc}")
