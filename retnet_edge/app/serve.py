"""`retnet-edge serve`: an OpenAI-compatible HTTP server over one artifact (Starlette + uvicorn).

Routes: /v1/models, /v1/completions, /v1/chat/completions (with `stream: true`: server-sent events), and
/health. Every request goes through one `Engine`: one runner, one decode thread (one decode at a time per
artifact), the prefix cache shared by all requests (a client that resends the whole conversation each
turn pays only for its new tokens), and a bounded queue: past `Limits.max_queue` waiting requests the
answer is 503 with Retry-After. Bad input is a 4xx with an OpenAI-shaped JSON error and the server stays
up; a client that disconnects stops its generation at the next token.

Requests are parsed and checked in `openai_request` (no HTTP there); here the engine runs `Engine.run` in
its decode thread and `Engine.admit` / `release` on the event loop.
"""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import signal
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator, Callable, Iterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from ..base.tokenizer import Tokenizer
from ..errors import RetNetEdgeError
from ..runtimes.cache import (
    GenerationCancelled,
    PrefixCache,
    TurnStats,
    cache_for,
    generate_cached,
)
from ..runtimes.generate import stream_text
from ..runtimes.session_runner import Runner
from .chat import ChatTemplate, StopMatcher, end_of_turn_id, load_chat_template
from .cli_utils import runner_and_tokenizer
from .openai_request import Job, RequestError, parse_chat, parse_completion

DISCONNECT_POLL_S = 0.2  # how often a non-streaming request checks that its client is still there
DRAIN_LIMIT = 64 << 20  # an oversized body is read (and dropped) up to this, so the client gets its 413
GRACE_S = 5  # shutdown waits this long for open streams


@dataclass(frozen=True)
class Limits:
    max_prompt_tokens: int = 32768
    max_tokens: int = 2048  # the largest max_tokens a request may ask for
    max_body_bytes: int = 1 << 20
    max_queue: int = 8  # requests waiting behind the running one; more are refused with 503


@dataclass
class Outcome:
    text: str
    finish_reason: str  # "stop" (end of sequence or a stop string) or "length"
    stats: TurnStats


class Engine:
    """One artifact behind the server: runner, tokenizer, prefix cache, decode thread, admission count."""

    def __init__(self, runner: Runner, tokenizer: Tokenizer, cache: PrefixCache | None,
                 template: ChatTemplate | None, model_id: str, limits: Limits = Limits()):
        self.runner, self.tokenizer, self.cache, self.template = runner, tokenizer, cache, template
        self.model_id, self.limits = model_id, limits
        self.end_of_turn = end_of_turn_id(tokenizer, template)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode")  # one decode at a time
        self.admitted = 0  # running + waiting; touched only on the event loop
        self.counts = {"served": 0, "refused": 0, "cancelled": 0, "failed": 0}
        self.created = int(time.time())

    def admit(self) -> None:
        if self.admitted >= 1 + self.limits.max_queue:
            self.counts["refused"] += 1
            raise RequestError(503, f"the server is busy ({self.admitted} requests in progress or queued); "
                               "retry shortly", kind="server_busy", headers={"Retry-After": "1"})
        self.admitted += 1

    def release(self) -> None:
        self.admitted -= 1

    def run(self, job: Job, emit: Callable[[str], None], cancel: threading.Event) -> Outcome:
        """Generate one reply (in the decode thread), handing each shown piece of text to emit."""
        stats, matcher, pieces = TurnStats(), StopMatcher(job.stop), []

        def show(text: str) -> None:
            if text:
                pieces.append(text)
                emit(text)

        eos = self.end_of_turn if job.chat else self.tokenizer.eos_id
        tokens = generate_cached(self.runner, self.cache, job.ids, job.max_tokens, job.sampling, eos, stats, cancel)
        stream_text(self.tokenizer, _until(lambda: matcher.stopped, tokens), lambda s: show(matcher.feed(s)))
        show(matcher.flush())
        return Outcome("".join(pieces), "stop" if matcher.stopped else stats.finish_reason, stats)

    def health(self) -> dict:
        return {"status": "ok", "model": self.model_id, "in_progress": self.admitted,
                "queue_limit": self.limits.max_queue, **self.counts,
                "cache": self.cache.summary() if self.cache is not None else None}


def _until(stop: Callable[[], bool], tokens):
    """Tokens until stop() turns true after one of them (the rest are never generated)."""
    for t in tokens:
        yield t
        if stop():
            return


# ---- responses -----------------------------------------------------------------------------------------

def usage(stats: TurnStats) -> dict:
    return {"prompt_tokens": stats.prompt_tokens, "completion_tokens": stats.new_tokens,
            "total_tokens": stats.prompt_tokens + stats.new_tokens,
            "prompt_tokens_details": {"cached_tokens": stats.cached_tokens}}


def completion_body(engine: Engine, rid: str, chat: bool, text: str | None, delta: dict | None,
                    finish: str | None) -> dict:
    """A completion object or stream chunk (chat: message / delta, else text)."""
    choice = {"index": 0, "finish_reason": finish, "logprobs": None}
    if chat:
        choice.update({"delta": delta} if delta is not None else {"message": {"role": "assistant", "content": text}})
        kind = "chat.completion.chunk" if delta is not None else "chat.completion"
    else:
        choice["text"], kind = text, "text_completion"
    return {"id": rid, "object": kind, "created": int(time.time()), "model": engine.model_id, "choices": [choice]}


def sse(data: dict | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


async def events(engine: Engine, job: Job, chat: bool, cancel: threading.Event,
                 finished: threading.Event) -> AsyncIterator[str]:
    """The server-sent events of one streamed reply (the decode thread feeds them through a queue); sets
    `finished` once the reply is complete."""
    loop, queue, done = asyncio.get_running_loop(), asyncio.Queue(), object()
    rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
    future = loop.run_in_executor(engine.executor, engine.run, job,
                                  lambda s: loop.call_soon_threadsafe(queue.put_nowait, s), cancel)

    def on_done(f: asyncio.Future) -> None:  # runs after every piece: both reach the queue through the loop
        _retrieved(f)
        queue.put_nowait(done)

    future.add_done_callback(on_done)
    if chat:
        yield sse(completion_body(engine, rid, True, None, {"role": "assistant", "content": ""}, None))
    while (piece := await queue.get()) is not done:
        yield sse(completion_body(engine, rid, chat, piece, {"content": piece} if chat else None, None))
    finished.set()
    try:
        outcome = future.result()
    except Exception as exc:  # noqa: BLE001  (the status line is gone: the error travels as an event)
        engine.counts["failed"] += 1
        yield sse({"error": {"message": f"generation failed: {exc}", "type": "server_error"}})
        return
    engine.counts["served"] += 1
    yield sse(completion_body(engine, rid, chat, "", {} if chat else None, outcome.finish_reason))
    if job.include_usage:
        yield sse({"id": rid, "object": "chat.completion.chunk" if chat else "text_completion",
                   "created": int(time.time()), "model": engine.model_id, "choices": [],
                   "usage": usage(outcome.stats)})
    yield sse("[DONE]")


def _retrieved(future: asyncio.Future) -> None:
    """Mark a decode job's exception as seen: its request may be gone (asyncio would log it at exit)."""
    if not future.cancelled():
        future.exception()


class AdmittedStream(StreamingResponse):
    """A streamed reply that gives its queue place back and stops its generation however it ends (done,
    client gone, server shutting down) — even if the body never started."""

    def __init__(self, engine: Engine, job: Job, chat: bool):
        self.engine, self.cancel, self.finished = engine, threading.Event(), threading.Event()
        super().__init__(events(engine, job, chat, self.cancel, self.finished), media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache"})

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.cancel.set()
            self.engine.release()
            if not self.finished.is_set():
                self.engine.counts["cancelled"] += 1


async def run_to_end(engine: Engine, job: Job, request: Request, cancel: threading.Event) -> Outcome:
    """A non-streamed reply; stops (cancel) when the client goes away while it is generated."""
    future = asyncio.get_running_loop().run_in_executor(engine.executor, engine.run, job, lambda s: None, cancel)
    future.add_done_callback(_retrieved)
    try:
        while True:
            done, _ = await asyncio.wait({future}, timeout=DISCONNECT_POLL_S)
            if done:
                return future.result()
            if await request.is_disconnected():
                cancel.set()
    finally:
        cancel.set()


# ---- the application -----------------------------------------------------------------------------------

async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused past `limit` bytes (read on to DRAIN_LIMIT so the client sees the 413)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
        elif size > DRAIN_LIMIT:
            break
    if size > limit:
        raise RequestError(413, f"the request body is larger than the server's limit of {limit} bytes",
                           code="request_too_large")
    return b"".join(chunks)


def error_response(exc: RequestError) -> JSONResponse:
    return JSONResponse(exc.payload(), status_code=exc.status, headers=exc.headers)


def check_key(request: Request, api_key: str | None) -> None:
    if api_key is None:
        return
    given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
    if not hmac.compare_digest(given.encode(), api_key.encode()):  # constant time: no key prefix leaks
        raise RequestError(401, "invalid API key (send it as 'Authorization: Bearer KEY')",
                           kind="authentication_error", code="invalid_api_key")


def build_app(engine: Engine, api_key: str | None = None) -> Starlette:
    """The Starlette application: routes, JSON errors for every failure, the engine behind each call."""

    async def generate(request: Request, chat: bool):
        body = await read_body(request, engine.limits.max_body_bytes)
        check_key(request, api_key)
        parse = parse_chat if chat else parse_completion
        job = await asyncio.to_thread(parse, body, engine.model_id, engine.tokenizer, engine.template,
                                      engine.runner.cfg.vocab_size, engine.limits)  # tokenizing off the loop
        engine.admit()
        if job.stream:
            return AdmittedStream(engine, job, chat)
        cancel = threading.Event()
        try:
            outcome = await run_to_end(engine, job, request, cancel)
        except GenerationCancelled:
            engine.counts["cancelled"] += 1
            raise RequestError(499, "the client went away") from None
        finally:
            engine.release()
        engine.counts["served" if outcome.stats.finish_reason != "cancelled" else "cancelled"] += 1
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        return JSONResponse({**completion_body(engine, rid, chat, outcome.text, None, outcome.finish_reason),
                             "usage": usage(outcome.stats)})

    async def completions(request: Request):
        return await generate(request, chat=False)

    async def chat_completions(request: Request):
        return await generate(request, chat=True)

    async def models(request: Request):
        check_key(request, api_key)
        return JSONResponse({"object": "list", "data": [{"id": engine.model_id, "object": "model",
                                                         "created": engine.created, "owned_by": "retnet-edge"}]})

    async def health(request: Request):
        return JSONResponse(engine.health())

    async def request_error(request: Request, exc: RequestError):
        return error_response(exc)

    async def http_error(request: Request, exc: HTTPException):  # unknown route, wrong method
        return error_response(RequestError(exc.status_code, exc.detail or "error"))

    async def server_error(request: Request, exc: Exception):
        engine.counts["failed"] += 1
        return error_response(RequestError(500, f"internal error: {type(exc).__name__}: {exc}", kind="server_error"))

    routes = [Route("/v1/completions", completions, methods=["POST"]),
              Route("/v1/chat/completions", chat_completions, methods=["POST"]),
              Route("/v1/models", models, methods=["GET"]), Route("/health", health, methods=["GET"])]
    return Starlette(routes=routes, exception_handlers={RequestError: request_error, HTTPException: http_error,
                                                         Exception: server_error})


@dataclass(frozen=True)
class ServerConfig:
    """What `serve` runs: the model and its options, the limits, and where it listens."""

    model: str  # an artifact directory, a checkpoint, or `demo`
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    model_name: str | None = None  # the id clients send; default: the model directory's name
    tokenizer: str | None = None
    threads: int | None = None
    cache_mb: float | None = None  # None: room for DEFAULT_STATES states; 0 (without cache_dir): no cache
    cache_dir: str | None = None
    chat_template: str | None = None
    limits: Limits = Limits()
    step_graph: str = "auto"  # ONNX: fused | chain | auto (runtimes.options)
    spin: bool = True
    prompt_weights: str = "auto"  # ONNX int4: auto | stored (runtimes.options)


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def open_engine(config: ServerConfig, warn: Callable[[str], None] = lambda message: None) -> Engine:
    """The engine for the config's model, with its prefix cache and chat template; the prompt graph opens
    before the first request (an int4 artifact's derives its int8 weights here)."""
    runner, tok = runner_and_tokenizer(config.model, config.tokenizer, config.threads, config.step_graph, config.spin,
                                       config.prompt_weights)
    runner.open_prompt()
    if getattr(runner.session, "prompt_note", ""):
        warn(runner.session.prompt_note)
    cache = cache_for(runner, config.cache_mb, config.cache_dir, warn=warn)
    template = load_chat_template(runner.tokenizer_dir, config.chat_template)
    name = config.model_name or Path(str(config.model).rstrip("/")).name
    return Engine(runner, tok, cache, template, name, config.limits)


def listen(host: str, port: int) -> socket.socket:
    """The listening socket, or a one-line error (port taken, bad host)."""
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(info[0], socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(info[4])
    except OSError as exc:
        raise RetNetEdgeError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from exc
    return sock


def serve(config: ServerConfig, say: Callable[[str], None]) -> None:
    """Listen (first: a taken port fails before the model loads), open the engine, and serve until Ctrl-C
    / SIGTERM (uvicorn's graceful shutdown, GRACE_S for open streams)."""
    import uvicorn  # here: the app above is importable (and testable) without starting a server

    sock = listen(config.host, config.port)
    engine = open_engine(config, warn=say)
    if config.host not in LOOPBACK and config.api_key is None:
        say(f"warning: serving on {config.host} without --api-key: anyone who can reach it can use it")
    uv_config = uvicorn.Config(build_app(engine, config.api_key), log_level="warning", lifespan="off",
                               timeout_graceful_shutdown=GRACE_S)
    say(f"serving {engine.model_id} on http://{config.host}:{sock.getsockname()[1]} "
        "(/v1/models, /v1/completions, /v1/chat/completions, /health); Ctrl-C stops")
    try:
        with stop_signals_handled():
            uvicorn.Server(uv_config).run(sockets=[sock])
    finally:
        engine.executor.shutdown(wait=True, cancel_futures=True)
        sock.close()
    say("stopped")


@contextlib.contextmanager
def stop_signals_handled() -> Iterator[None]:
    """uvicorn shuts down gracefully on SIGINT / SIGTERM, then re-raises the signal to the handlers it
    found: these no-ops, so a requested stop ends the command normally (exit 0), not as an interrupt."""
    stop = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.signal(s, lambda signum, frame: None) for s in stop}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
