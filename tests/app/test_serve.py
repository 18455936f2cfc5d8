"""`retnet-edge serve` as users meet it: a real server on a free loopback port, the official `openai` client.

The ONNX server runs with torch blocked (the base install's view). A second server over the eager demo
(about 100 tokens/s at one thread, slow enough to hold a request) checks the full queue and disconnects.
"""
from __future__ import annotations

import http.client
import json
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from click.testing import CliRunner
from session_helpers import BLOCK_TORCH, free_port, text_artifact

from retnet_edge.base.tokenizer import load_tokenizer
from retnet_edge.cli import main

KEY = "test-key"
SERVE = BLOCK_TORCH + "\nfrom retnet_edge.cli import main\nsys.argv = ['retnet-edge'] + sys.argv[1:]\nmain()\n"


class Server:
    def __init__(self, args: list[str], log_path, block_torch: bool = True):
        self.port = free_port()
        script = SERVE if block_torch else SERVE.replace(BLOCK_TORCH, "import sys\n")
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen([sys.executable, "-c", script, "serve", *args, "--port", str(self.port)],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 90
        while time.time() < deadline:
            assert self.proc.poll() is None, open(log_path).read()
            try:
                if self.get("/health")[0] == 200:
                    return
            except OSError:
                time.sleep(0.1)
        raise TimeoutError(open(log_path).read())

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        conn.request(method, path, body, {"Content-Type": "application/json", **(headers or {})})
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        return resp.status, json.loads(data), resp.headers

    def get(self, path: str):
        return self.request("GET", path)

    def health(self) -> dict:
        status, body, _ = self.get("/health")
        assert status == 200 and body["status"] == "ok"
        return body

    def client(self, key: str = KEY) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", api_key=key, max_retries=0, timeout=60)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown
        try:
            return self.proc.wait(timeout=20)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self.log.close()


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    return text_artifact(tmp_path_factory)


@pytest.fixture(scope="module")
def server(art, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "server.log"
    srv = Server([str(art), "--api-key", KEY, "--threads", "1", "--max-prompt-tokens", "300", "--max-tokens", "512",
                  "--max-body-kb", "64"], log)
    yield srv
    assert srv.stop() == 0, log.read_text()
    assert "Traceback" not in log.read_text()


def test_models_and_greedy_completion_equal_generate(server, art):
    client = server.client()
    assert [m.id for m in client.models.list()] == ["art"]
    done = client.completions.create(model="art", prompt="And God said", max_tokens=12, temperature=0)
    res = CliRunner().invoke(main, ["generate", str(art), "And God said", "-n", "12", "--temperature", "0",
                                    "--no-stream"])
    assert res.exit_code == 0, res.output
    assert "And God said" + done.choices[0].text == res.stdout.rstrip("\n")
    prompt_tokens = len(load_tokenizer(art).encode("And God said", add_bos=True))
    assert (done.usage.prompt_tokens, done.usage.completion_tokens, done.usage.total_tokens) == (
        prompt_tokens, 12, prompt_tokens + 12)


def test_chat_stream_equals_non_stream_and_reports_usage(server):
    client = server.client()
    messages = [{"role": "user", "content": "In the beginning"}]
    whole = client.chat.completions.create(model="art", messages=messages, max_tokens=20, temperature=0)
    chunks = list(client.chat.completions.create(model="art", messages=messages, max_tokens=20, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content and len(text) > 0
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason


def test_resent_conversation_reads_only_new_tokens(server):
    client = server.client()
    messages = [{"role": "user", "content": "Let there be light"}]
    first = client.chat.completions.create(model="art", messages=messages, max_tokens=8, temperature=0)
    messages += [{"role": "assistant", "content": first.choices[0].message.content},
                 {"role": "user", "content": "and there was light"}]
    second = client.chat.completions.create(model="art", messages=messages, max_tokens=8, temperature=0)
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert first.usage.prompt_tokens <= cached < second.usage.prompt_tokens


def test_stop_and_seed(server):
    client = server.client()
    greedy = client.completions.create(model="art", prompt="The LORD", max_tokens=30, temperature=0).choices[0]
    stop = greedy.text[10:13]
    cut = client.completions.create(model="art", prompt="The LORD", max_tokens=30, temperature=0, stop=[stop])
    assert cut.choices[0].text == greedy.text[: greedy.text.index(stop)] and cut.choices[0].finish_reason == "stop"
    sampled = [client.completions.create(model="art", prompt="The LORD", max_tokens=16, temperature=1.0, seed=s,
                                         top_p=0.9).choices[0].text for s in (7, 7, 8)]
    assert sampled[0] == sampled[1] != sampled[2]


def test_concurrent_streams_do_not_cross(server):
    """Six clients at once, streamed: each gets exactly the reply its prompt gets alone."""
    client = server.client()
    prompts = [f"Verse {i}: and it came to pass" for i in range(6)]

    def ask(prompt: str, stream: bool) -> str:
        out = client.completions.create(model="art", prompt=prompt, max_tokens=24, temperature=0, stream=stream)
        return "".join(c.choices[0].text for c in out) if stream else out.choices[0].text

    alone = [ask(p, False) for p in prompts]
    with ThreadPoolExecutor(len(prompts)) as pool:
        together = list(pool.map(lambda p: ask(p, True), prompts))
    assert together == alone and len(set(alone)) > 1
    assert server.health()["in_progress"] == 0


def test_serve_refuses_a_taken_port_and_a_missing_model(server, art, tmp_path):
    res = CliRunner().invoke(main, ["serve", str(art), "--port", str(server.port)])
    assert res.exit_code == 1 and res.stderr.startswith("Error: cannot listen on 127.0.0.1:")
    res = CliRunner().invoke(main, ["serve", str(tmp_path / "nope"), "--port", str(free_port())])
    assert res.exit_code == 1 and len(res.stderr.strip().splitlines()) == 1 and "does not exist" in res.stderr
    res = CliRunner().invoke(main, ["serve", str(art), "--max-queue", "-1"])
    assert res.exit_code == 2


BAD_BODIES = [  # (body, status, what the error names)
    (b"{not json", 400, "not valid JSON"),
    (b"[1, 2]", 400, "JSON object"),
    (b"[" * 100_000 + b"]" * 100_000, 413, "larger than"),
    (json.dumps({"model": "art", "prompt": "x", "max_tokens": -5}).encode(), 400, "max_tokens"),
    (json.dumps({"model": "art", "prompt": "x", "max_tokens": 10**12}).encode(), 400, "max_tokens"),
    (json.dumps({"model": "gpt-4o", "prompt": "x"}).encode(), 404, "does not exist"),
    (json.dumps({"model": "art", "prompt": "a b " * 400}).encode(), 400, "at most 300"),
    (json.dumps({"model": "art", "prompt": "x", "temperature": "hot"}).encode(), 400, "temperature"),
    (b'{"model": "art", "prompt": "x", "top_p": NaN}', 400, "top_p"),
    (json.dumps({"model": "art", "prompt": "\ud800"}).encode(), 400, "Unicode"),
    (json.dumps({"model": "art", "prompt": [1, 99999]}).encode(), 400, "token ids"),
    (json.dumps({"model": "art", "prompt": "x", "n": 3}).encode(), 400, "not supported"),
    (json.dumps({"model": "art", "prompt": "x", "stop": ["a"] * 9}).encode(), 400, "stop"),
]


@pytest.mark.parametrize("body, status, names", BAD_BODIES, ids=range(len(BAD_BODIES)))
def test_bad_input_is_a_json_4xx_and_the_server_stays_up(server, body, status, names):
    got, error, _ = server.request("POST", "/v1/completions", body, {"Authorization": f"Bearer {KEY}"})
    assert got == status and names in error["error"]["message"], error
    assert server.health()["in_progress"] == 0


def test_official_client_errors(server):
    """What the openai client raises for each refusal, and a 10 MB body answered (not reset) with 413."""
    with pytest.raises(openai.AuthenticationError):
        server.client("wrong").completions.create(model="art", prompt="x", max_tokens=2)
    with pytest.raises(openai.NotFoundError):
        server.client().completions.create(model="nope", prompt="x", max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="at most 300") as err:
        server.client().chat.completions.create(model="art", messages=[{"role": "user", "content": "a b " * 400}])
    assert err.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        server.client().completions.create(model="art", prompt="x", max_tokens=-1)
    status, error, _ = server.request("POST", "/v1/completions", b"x" * (10 << 20))
    assert status == 413 and error["error"]["code"] == "request_too_large"
    status, error, _ = server.request("GET", "/v1/nowhere")
    assert status == 404 and "error" in error
    assert server.health()["failed"] == 0


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory):
    """The eager demo (torch), one thread, no queue: a second request while one runs is refused."""
    log = tmp_path_factory.mktemp("serve-demo") / "server.log"
    srv = Server(["demo", "--threads", "1", "--max-queue", "0"], log, block_torch=False)
    yield srv
    assert srv.stop() == 0, log.read_text()


def _open_stream(srv: Server, max_tokens: int) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    body = {"model": "demo", "prompt": "And God said", "max_tokens": max_tokens, "temperature": 0, "stream": True}
    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200 and resp.readline().startswith(b"data: ")
    return conn


def _wait_idle(srv: Server, timeout: float = 5.0) -> dict:
    deadline = time.time() + timeout
    while (h := srv.health())["in_progress"] and time.time() < deadline:
        time.sleep(0.05)
    return h


def test_full_queue_503_and_disconnects_stop_generation(demo_server):
    conn = _open_stream(demo_server, 2000)  # ~20 s of decoding if nobody stopped it
    status, error, headers = demo_server.request("POST", "/v1/completions",
                                                 json.dumps({"model": "demo", "prompt": "x", "max_tokens": 2}).encode())
    assert status == 503 and headers["Retry-After"] == "1" and "busy" in error["error"]["message"]
    with pytest.raises(openai.APIStatusError) as err:
        demo_server.client().completions.create(model="demo", prompt="x", max_tokens=2)
    assert err.value.status_code == 503
    t0 = time.time()
    conn.close()  # the client goes away mid-stream
    health = _wait_idle(demo_server)
    assert health["in_progress"] == 0 and time.time() - t0 < 5 and health["cancelled"] == 1
    # a non-streamed request whose client leaves: stopped too
    conn = http.client.HTTPConnection("127.0.0.1", demo_server.port, timeout=30)
    conn.request("POST", "/v1/completions", json.dumps({"model": "demo", "prompt": "In", "max_tokens": 2000}),
                 {"Content-Type": "application/json"})
    time.sleep(0.5)
    conn.close()
    health = _wait_idle(demo_server)
    assert health["in_progress"] == 0 and health["cancelled"] == 2 and health["refused"] == 2
    done = demo_server.client().completions.create(model="demo", prompt="And God said", max_tokens=8, temperature=0)
    assert done.choices[0].text.startswith(" unto")
