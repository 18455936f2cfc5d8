"""OpenAI request bodies -> `Job`s for `serve`: parsed, type-checked and limited once.

Each failure is a `RequestError`: an HTTP status and an OpenAI-shaped JSON error naming the parameter
(`{"error": {"message", "type", "param", "code"}}`), so the official clients raise their usual
BadRequestError / NotFoundError / AuthenticationError. No HTTP framework here: `serve` turns the error
into a response. Parameters that would change the output and that this server does not implement (n > 1,
logprobs, penalties, tools, ...) are refused, never silently ignored.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass

from ..base.tokenizer import Tokenizer
from ..errors import RetNetEdgeError
from ..runtimes.generate import SamplingConfig
from .chat import ChatTemplate, render_prompt

COMPLETION_MAX_TOKENS = 16  # OpenAI's default for /v1/completions; chat defaults to the server's limit
MAX_STOPS = 4
ROLES = ("system", "developer", "user", "assistant")
# parameters accepted only at their neutral values: name -> the values that change nothing
NEUTRAL = {"n": (None, 1), "best_of": (None, 1), "echo": (None, False), "logprobs": (None, False, 0),
           "top_logprobs": (None, 0), "suffix": (None, ""), "presence_penalty": (None, 0),
           "frequency_penalty": (None, 0), "logit_bias": (None, {}), "tools": (None, []), "functions": (None, []),
           "tool_choice": (None, "none", "auto"), "response_format": (None, {"type": "text"})}


class RequestError(Exception):
    """A request the server refuses: status, message, and the OpenAI error fields."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error", headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.param, self.code, self.kind, self.headers = status, param, code, kind, headers or {}

    def payload(self) -> dict:
        return {"error": {"message": str(self), "type": self.kind, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class Job:
    """One generation request, checked: prompt ids, how much to generate and how to sample."""

    ids: list[int]
    max_tokens: int
    sampling: SamplingConfig
    stop: list[str]
    stream: bool
    include_usage: bool
    chat: bool = False  # a chat reply ends at the template's end-of-turn token


def bad(message: str, param: str | None = None) -> RequestError:
    return RequestError(400, message, param=param)


def load_body(raw: bytes) -> dict:
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise bad(f"the body is not valid JSON ({type(exc).__name__}: {str(exc)[:120]})") from None
    if not isinstance(body, dict):
        raise bad("the body must be a JSON object")
    return body


def number(body: dict, name: str, default: float, lo: float, hi: float, integer: bool = False,
           lo_open: bool = False) -> float | int:
    """body[name] (or default when absent / null), checked to be a number in [lo, hi] ((lo, hi] if lo_open)."""
    value = body.get(name)
    if value is None:
        return default
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value):
        raise bad(f"`{name}` must be {'an integer' if integer else 'a number'}, got {json.dumps(value)[:40]}", name)
    if not (lo < value if lo_open else lo <= value) or value > hi:
        raise bad(f"`{name}` must be in {'(' if lo_open else '['}{lo}, {hi}], got {value}", name)
    return value


def flag(body: dict, name: str) -> bool:
    value = body.get(name)
    if value is not None and not isinstance(value, bool):
        raise bad(f"`{name}` must be true or false", name)
    return bool(value)


def common(body: dict, model_id: str, max_tokens_default: int, limit: int) -> dict:
    """The fields completions and chat share: model, sampling, limits, stop, stream."""
    model = body.get("model")
    if not isinstance(model, str):
        raise bad("`model` must be a string (GET /v1/models lists the one served here)", "model")
    if model != model_id:
        raise RequestError(404, f"the model {model[:80]!r} does not exist here; this server serves {model_id!r}",
                           param="model", code="model_not_found")
    for name, neutral in NEUTRAL.items():
        if name in body and body[name] not in neutral:
            raise bad(f"`{name}` is not supported by this server (leave it out)", name)
    max_key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    stop = body.get("stop")
    stop = [stop] if isinstance(stop, str) else stop if stop is not None else []
    if not (isinstance(stop, list) and len(stop) <= MAX_STOPS and all(isinstance(s, str) and s for s in stop)):
        raise bad(f"`stop` must be a string or a list of up to {MAX_STOPS} non-empty strings", "stop")
    options = body.get("stream_options")
    if options is not None and not (isinstance(options, dict)
                                    and isinstance(options.get("include_usage", False), bool)):
        raise bad("`stream_options` must be an object like {\"include_usage\": true}", "stream_options")
    return {"max_tokens": number(body, max_key, max_tokens_default, 1, limit, integer=True),
            "sampling": SamplingConfig(temperature=number(body, "temperature", 1.0, 0, 2), top_k=0,
                                       top_p=number(body, "top_p", 1.0, 0, 1, lo_open=True),
                                       seed=number(body, "seed", None, 0, 2**63 - 1, integer=True)),
            "stop": stop, "stream": flag(body, "stream"),
            "include_usage": bool(options and options.get("include_usage"))}


def encode(tokenizer: Tokenizer, text: str, add_bos: bool, param: str) -> list[int]:
    try:
        text.encode("utf-8")  # JSON can carry lone surrogates ("\\ud800"), which no tokenizer takes
    except UnicodeEncodeError:
        raise bad(f"`{param}` is not valid Unicode text (a lone surrogate)", param) from None
    return tokenizer.encode(text, add_bos=add_bos)


def checked_ids(ids: list[int], vocab_size: int, max_prompt_tokens: int, param: str) -> list[int]:
    if not ids:
        raise bad("the prompt is empty (and this tokenizer has no beginning-of-sequence token)", param)
    if len(ids) > max_prompt_tokens:
        raise RequestError(400, f"the prompt has {len(ids)} tokens; this server takes at most {max_prompt_tokens}",
                           param=param, code="context_length_exceeded")
    return ids


def prompt_ids(prompt, tokenizer: Tokenizer, vocab_size: int) -> list[int]:
    """A completions `prompt`: a string, a list of token ids, or a list holding one of those."""
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return encode(tokenizer, prompt, True, "prompt")
    if isinstance(prompt, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        if any(not 0 <= t < vocab_size for t in prompt):
            raise bad(f"token ids must be in [0, {vocab_size})", "prompt")
        return list(prompt)
    raise bad("`prompt` must be a string or a list of token ids (one prompt per request)", "prompt")


def parse_completion(raw: bytes, model_id: str, tokenizer: Tokenizer, template: ChatTemplate | None,
                     vocab_size: int, limits) -> Job:
    """A /v1/completions body -> Job (RequestError otherwise)."""
    body = load_body(raw)
    fields = common(body, model_id, min(COMPLETION_MAX_TOKENS, limits.max_tokens), limits.max_tokens)
    if "prompt" not in body:
        raise bad("`prompt` is required", "prompt")
    ids = prompt_ids(body["prompt"], tokenizer, vocab_size)
    return Job(checked_ids(ids, vocab_size, limits.max_prompt_tokens, "prompt"), **fields)


def message_text(message, i: int) -> dict:
    """One chat message as {"role", "content": str}; content may be a string or a list of text parts."""
    if not isinstance(message, dict) or message.get("role") not in ROLES:
        raise bad(f"messages[{i}] must be an object with a role in {', '.join(ROLES)}", "messages")
    content = message.get("content")
    if isinstance(content, list):
        if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
            raise bad(f"messages[{i}].content: only text parts are supported", "messages")
        content = "".join(p["text"] for p in content)
    if not isinstance(content, str):
        raise bad(f"messages[{i}].content must be a string", "messages")
    return {"role": message["role"], "content": content}


def parse_chat(raw: bytes, model_id: str, tokenizer: Tokenizer, template: ChatTemplate | None,
               vocab_size: int, limits) -> Job:
    """A /v1/chat/completions body -> Job: the messages rendered (chat template or plain) and tokenized."""
    body = load_body(raw)
    fields = common(body, model_id, limits.max_tokens, limits.max_tokens)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad("`messages` must be a non-empty list", "messages")
    messages = [message_text(m, i) for i, m in enumerate(messages)]
    try:
        text = render_prompt(messages, template)
    except RetNetEdgeError as exc:
        raise bad(str(exc), "messages") from None
    ids = encode(tokenizer, text, template is None, "messages")
    return Job(checked_ids(ids, vocab_size, limits.max_prompt_tokens, "messages"), **fields, chat=True)
