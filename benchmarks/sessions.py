"""Sessions (issue 27): restoring a cached state vs re-reading the prompt, a 10-turn conversation through
`serve` with and without the prefix cache, and a bounded load test on loopback.

    python benchmarks/sessions.py ARTIFACT --threads 1 -o sessions_demo

1. restore: for prefixes of 512, 4k and 32k tokens, the time to re-prefill the prefix against the time to
   restore its state from memory and from the disk tier (read + checksum + restore); restore must not
   grow with the prefix.
2. conversation: `retnet-edge serve` in a child process, the official `openai` client resending the whole
   history each turn (10 turns, streamed, temperature 0); time to first token per turn with the cache
   and with `--cache-mb 0`.
3. load: 16 client threads x 20 requests (streamed and not, alternating) against a server with its
   default queue (8); every request must be answered or refused with 503 before a fixed deadline (a
   refused client waits Retry-After, then sends its next request), and each answer must equal the same
   request served alone (no lost or crossed streams); p50 / p99 latency of the answered ones.
Everything binds to 127.0.0.1 on a free port; the servers are stopped at the end.
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import write_result  # noqa: E402

from retnet_edge.base.paths import DEMO_DIR  # noqa: E402

PREFIXES = (512, 4096, 32768)
TURNS, TURN_WORDS, REPLY_TOKENS = 10, 120, 32
CLIENTS, PER_CLIENT, LOAD_TOKENS, LOAD_DEADLINE_S = 16, 20, 16, 600


def _ms(seconds: float) -> float:
    return round(float(seconds) * 1e3, 3)


def bench_restore(artifact: str, threads: int) -> dict:
    """Re-prefill vs restore (memory, disk) at each prefix length."""
    from retnet_edge.runtimes import load_runner
    from retnet_edge.runtimes.cache import cache_for, prefill_cached

    runner = load_runner(artifact, threads=threads)
    ids = [int(t) for t in np.random.default_rng(0).integers(3, runner.cfg.vocab_size, max(PREFIXES))]
    runner.prefill(ids[:64])  # open the prompt graph before timing
    out = {"state_bytes": runner.snapshot().nbytes, "prefixes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for n in PREFIXES:
            runner.reset()
            t0 = time.perf_counter()
            runner.prefill(ids[:n], all_logits=False)
            prefill_s = time.perf_counter() - t0
            snap = runner.snapshot()
            restores = []
            for _ in range(20):
                runner.reset()
                t0 = time.perf_counter()
                runner.restore(snap)
                restores.append(time.perf_counter() - t0)
            cache = cache_for(runner, directory=tmp, interval=n)
            cache.put(ids[:n], snap, np.zeros(runner.cfg.vocab_size, np.float32))
            disk = []
            for _ in range(5):
                fresh = cache_for(runner, directory=tmp, interval=n)  # a restart: memory empty, disk warm
                t0 = time.perf_counter()
                assert prefill_cached(runner, fresh, ids[:n])[1] == n
                disk.append(time.perf_counter() - t0)
            restore_s, disk_s = statistics.median(restores), statistics.median(disk)
            out["prefixes"][n] = {"reprefill_ms": _ms(prefill_s), "restore_ms_median": _ms(restore_s),
                                  "restore_ms_max": _ms(max(restores)), "disk_restore_ms_median": _ms(disk_s),
                                  "speedup": round(prefill_s / restore_s, 1)}
            print(f"  prefix {n}: re-prefill {prefill_s * 1e3:.1f} ms, restore {restore_s * 1e3:.3f} ms, "
                  f"from disk {disk_s * 1e3:.2f} ms", file=sys.stderr)
    return out


class Server:
    """`retnet-edge serve` in a child process on a free loopback port."""

    def __init__(self, artifact: str, threads: int, *extra: str):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc = subprocess.Popen([sys.executable, "-m", "retnet_edge", "serve", artifact, "--threads", str(threads),
                                      "--port", str(self.port), "--model-name", "m", *extra],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        import urllib.request

        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(self.proc.stderr.read())
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=1).read()
                return
            except OSError:
                time.sleep(0.2)
        raise TimeoutError("the server did not start")

    def client(self, timeout: float = 120):
        import openai

        return openai.OpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", api_key="x", max_retries=0, timeout=timeout)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout=30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


def _user_messages() -> list[str]:
    words = (DEMO_DIR / "heldout.txt").read_text().split()
    return [" ".join(words[i * TURN_WORDS:(i + 1) * TURN_WORDS]) for i in range(TURNS)]


def conversation(server: Server) -> list[dict]:
    """10 turns, the full history resent each time; per turn: prompt tokens, cached tokens, TTFT."""
    client, messages, turns = server.client(), [], []
    client.completions.create(model="m", prompt="Warm up", max_tokens=2)  # open both graphs before turn 1
    for text in _user_messages():
        messages.append({"role": "user", "content": text})
        t0, ttft, reply, usage = time.perf_counter(), None, [], None
        for chunk in client.chat.completions.create(model="m", messages=messages, max_tokens=REPLY_TOKENS,
                                                    temperature=0, stream=True, stream_options={"include_usage": True}):
            if chunk.choices and chunk.choices[0].delta.content:
                ttft = ttft if ttft is not None else time.perf_counter() - t0
                reply.append(chunk.choices[0].delta.content)
            usage = chunk.usage or usage
        messages.append({"role": "assistant", "content": "".join(reply)})
        turns.append({"prompt_tokens": usage.prompt_tokens, "cached_tokens": usage.prompt_tokens_details.cached_tokens,
                      "ttft_ms": _ms(ttft), "total_ms": _ms(time.perf_counter() - t0)})
    return turns


def load_test(server: Server) -> dict:
    """CLIENTS threads x PER_CLIENT requests; outcomes, latency, and each answer against its solo answer."""
    import openai

    prompts = [" ".join(p.split()[:12 + 3 * i]) for i, p in enumerate(_user_messages()[:8])]
    client = server.client(timeout=LOAD_DEADLINE_S)

    def ask(prompt: str, stream: bool) -> str:
        out = client.completions.create(model="m", prompt=prompt, max_tokens=LOAD_TOKENS, temperature=0, stream=stream)
        return "".join(c.choices[0].text for c in out) if stream else out.choices[0].text

    alone = {p: ask(p, False) for p in prompts}
    outcomes = {"ok": 0, "refused_503": 0, "mismatch": 0, "error": 0, "past_deadline": 0}
    latencies, lock, deadline = [], threading.Lock(), time.time() + LOAD_DEADLINE_S

    def client_loop(c: int) -> None:
        for r in range(PER_CLIENT):
            prompt, stream = prompts[(c + r) % len(prompts)], (c + r) % 2 == 0
            if time.time() > deadline:
                kind = "past_deadline"
            else:
                t0 = time.perf_counter()
                try:
                    kind = "ok" if ask(prompt, stream) == alone[prompt] else "mismatch"
                except openai.APIStatusError as exc:
                    kind = "refused_503" if exc.status_code == 503 else "error"
                    if kind == "refused_503":  # as a well-behaved client: wait, then its next request
                        time.sleep(float(exc.response.headers.get("Retry-After", "1")))
                except openai.APIError:
                    kind = "error"
            with lock:
                outcomes[kind] += 1
                if kind == "ok":
                    latencies.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(client_loop, range(CLIENTS)))
    wall = time.perf_counter() - t0
    lat = np.array(latencies) if latencies else np.zeros(1)
    return {"clients": CLIENTS, "requests_per_client": PER_CLIENT, "max_tokens": LOAD_TOKENS,
            "deadline_s": LOAD_DEADLINE_S, "outcomes": outcomes, "wall_s": round(wall, 2),
            "latency_ms": {"p50": _ms(np.percentile(lat, 50)), "p99": _ms(np.percentile(lat, 99)),
                           "max": _ms(lat.max())}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifact")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("-o", "--output", default=None, help="benchmarks/results/NAME.json (default: print only)")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: restore, conversation, load")
    ap.add_argument("--made-with", default=None, help="how the artifact was made (recorded in the JSON)")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    result = {"tool": "benchmarks/sessions.py", "artifact": args.artifact, "made_with": args.made_with,
              "threads": args.threads, "load_average_before": list(os.getloadavg())}
    if "restore" not in skip:
        print("restore vs re-prefill", file=sys.stderr)
        result["restore"] = bench_restore(args.artifact, args.threads)
    if "conversation" not in skip:
        for name, extra in (("with_cache", ()), ("without_cache", ("--cache-mb", "0"))):
            server = Server(args.artifact, args.threads, *extra)
            try:
                result.setdefault("conversation", {})[name] = conversation(server)
            finally:
                server.stop()
            ttft = [t["ttft_ms"] for t in result["conversation"][name]]
            print(f"  conversation {name}: TTFT turn 1 {ttft[0]:.1f} ms, turn 10 {ttft[-1]:.1f} ms",
                  file=sys.stderr)
    if "load" not in skip:
        server = Server(args.artifact, args.threads)
        try:
            result["load"] = load_test(server)
        finally:
            result.setdefault("load", {})["server_exit_code"] = server.stop()
        print(f"  load: {result['load']}", file=sys.stderr)
    if args.output:
        print(write_result(args.output, result))


if __name__ == "__main__":
    main()
