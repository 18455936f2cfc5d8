"""One artifact at one thread count, measured in its own process (`python -m retnet_edge.bench.measure SPEC`).

llama-bench's method: the state is filled to each context depth from empty (RetNet: through the prefill
graph; the baseline: its KV cache filled; that fill's rate is the prompt rate at the depth), one warm-up
token, then `tokens` single-token steps with logits, `repeat` times, each repetition starting again from
that depth (a snapshot of the O(1) state or of the cache; the ExecuTorch runner flavour keeps its state
inside the program, so its repetitions run on, and the record says so). Sampling and tokenization are
excluded. Memory comes from /proc/self/status: RSS after import is the baseline, everything else is a
delta over it.
"""
from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

PROMPT = 512  # prefill speed and time to first token are measured on a prompt of this length


def memory_mb() -> dict:
    """{rss, anon, file, peak} in MiB from /proc/self/status (Linux); rss and peak only elsewhere."""
    out = {}
    try:
        for line in open("/proc/self/status"):
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
                out[{"VmRSS": "rss", "RssAnon": "anon", "RssFile": "file", "VmHWM": "peak"}[key]] = \
                    int(value.split()[0]) / 1024
    except OSError:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        out = {"rss": peak, "peak": peak}
    return out


def memory_delta(m: dict, base: dict) -> dict:
    """Each memory figure over the import baseline (MiB)."""
    return {k: round(v - base.get(k, 0.0), 1) for k, v in m.items()}


class _RetNetAdapter:
    """A Runner with snapshot/restore of its (position, state) when the state lives outside the program."""

    def __init__(self, runner):
        self.r = runner

    def reset(self):
        self.r.reset()

    def prefill(self, ids):
        return self.r.prefill(ids, all_logits=False)  # a depth fill needs the state, not T x V logits

    def step(self, token):
        return self.r.step(token)

    def release_prefill(self):
        if hasattr(self.r, "release_prefill"):
            self.r.release_prefill()

    def open_prompt(self) -> str:
        """Open the prompt graph as a chat or a server does; what its weights are."""
        if not hasattr(self.r, "open_prompt"):
            return "stored"
        self.r.open_prompt()
        derived = getattr(self.r.session, "derived_prompt", None)
        return (f"int8 derived at load ({derived.linears} linears, {derived.weight_bytes / 1e6:.0f} MB)"
                if derived else getattr(self.r.session, "prompt_note", "") or "stored")

    @property
    def position(self):
        return self.r.position

    @property
    def restorable(self) -> bool:
        return bool(self.r.state)

    def snapshot(self):
        return self.r.position, self.r.state  # the property returns a copy

    def restore(self, snap):
        self.r.position, self.r.state = snap  # the setter copies into the decoder's buffers

    def state_fingerprint(self) -> float | None:
        state = self.r.state
        return float(sum(np.abs(s).sum() for s in state)) if state else None

    @property
    def state_bytes(self) -> int:
        return self.r.cfg.state_bytes(1)


class _KVAdapter(_RetNetAdapter):
    restorable = True

    def snapshot(self):
        return self.r.snapshot()

    def restore(self, snap):
        self.r.restore(snap)

    def state_fingerprint(self):
        return None

    @property
    def state_bytes(self) -> int:
        return self.r.state_bytes


class _ProgramKVAdapter(_RetNetAdapter):
    """The ExecuTorch baseline: its cache lives in the program; the bytes in use follow the position."""

    @property
    def state_bytes(self) -> int:
        from .baseline import kv_cache_bytes

        return kv_cache_bytes(self.r.cfg, self.r.position)


def prompt_seconds(reset: Callable[[], object], run: Callable[[list[int]], object], prompt: list[int],
                   rounds: int = 2) -> float:
    """Time to the first token of `prompt` from an empty state: the best of `rounds` (the first call also
    opens / warms the prompt graph)."""
    best = float("inf")
    for _ in range(rounds):
        reset()
        t = time.perf_counter()
        run(prompt)
        best = min(best, time.perf_counter() - t)
    return best


def fill_from_empty(reset: Callable[[], object], run: Callable[[list[int]], object], ids: list[int]) -> float | None:
    """Seconds to fill an empty state (or cache) with `ids` the way a prompt runs: the prompt rate at that
    depth (for a Transformer it falls with depth, for a RetNet it should not). None for an empty fill.

    A one-token prompt runs first, untimed: the decode phase before it freed the prompt graph (as `generate`
    does), and reopening it is a load cost that a chat's later turns do not pay (`chat` and `serve` keep it)."""
    reset()
    if not ids:
        return None
    run(ids[:1])
    reset()
    t = time.perf_counter()
    run(ids)
    return time.perf_counter() - t


def fill_rate(context: int, seconds: float | None) -> dict:
    """The record's fill fields: the time to fill `context` tokens from empty, and that as tokens/s."""
    if not seconds:
        return {"fill_ms": None, "fill_tokens_per_s": None}
    return {"fill_ms": round(seconds * 1e3, 2), "fill_tokens_per_s": round(context / seconds, 1)}


def stored_prompt(dec, prompt: list[int]) -> dict | None:
    """An int4 ONNX artifact's prompt through its stored int4 weights too (`--prompt-weights stored`), in the
    same process: the derived int8 weights' gain in one run. None where the artifact has no such choice."""
    session = getattr(dec.r, "session", None)
    if session is None or "stored" not in getattr(session, "prompt_graph_variants", ()):
        return None
    previous = session.use_prompt_graph("stored")
    try:
        t0 = time.perf_counter()
        session.open_prompt()
        opened = time.perf_counter() - t0
        seconds = prompt_seconds(dec.reset, dec.prefill, prompt)
    finally:
        session.use_prompt_graph(previous)
    return {"prompt_open_s": round(opened, 3), "ttft_ms": round(seconds * 1e3, 2),
            "prefill_tokens_per_s": round(len(prompt) / seconds, 1)}


def open_decoder(model: str, runtime: str, path: str, threads: int, positions: int = PROMPT + 16):
    """The subject's decoder; `positions`: what the run reaches (the ONNX baseline preallocates its cache)."""
    from ..runtimes import load_runner

    if model == "transformer" and runtime == "onnxruntime":
        from .kv_onnx import GQARunner

        return _KVAdapter(GQARunner(Path(path), threads, max_len=positions))
    if model == "transformer":
        import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401  (the llama:: kernels it calls)

        return _ProgramKVAdapter(load_runner(path, threads=threads, verify_files=False))
    return _RetNetAdapter(load_runner(path, threads=threads, verify_files=False))  # the suite hashed it once


def _import_engine(runtime: str) -> None:
    """Import the engine before the baseline RSS: import cost is not the artifact's memory."""
    from .. import runtimes  # noqa: F401

    if runtime == "executorch":
        import executorch.runtime  # noqa: F401
    elif runtime == "onnxruntime":
        import onnxruntime  # noqa: F401


def measure(spec: dict) -> dict:
    """Run the spec ({model, runtime, path, threads, contexts, tokens, repeat, seed}); one record per context."""
    _import_engine(spec["runtime"])
    base = memory_mb()
    t0 = time.perf_counter()
    positions = max(max(spec["contexts"]) + spec["tokens"] + 16, PROMPT + 16)
    dec = open_decoder(spec["model"], spec["runtime"], spec["path"], spec["threads"], positions)
    load_s = time.perf_counter() - t0
    after_load = memory_delta(memory_mb(), base)
    vocab = dec.r.cfg.vocab_size
    rng = np.random.default_rng(spec.get("seed", 0))
    prompt = rng.integers(3, vocab, PROMPT).tolist()
    t0 = time.perf_counter()
    prompt_weights = dec.open_prompt()  # a load cost: chat and serve pay it at start, not in a turn
    prompt_open_s = time.perf_counter() - t0
    ttft = prompt_seconds(dec.reset, dec.prefill, prompt)
    after_prefill = memory_delta(memory_mb(), base)
    records = []
    for context in sorted(spec["contexts"]):
        fill_s = fill_from_empty(dec.reset, dec.prefill, rng.integers(3, vocab, context).tolist())
        start, fingerprint = dec.position, dec.state_fingerprint()  # the state as the fill left it
        dec.release_prefill()  # decode-phase memory: the prompt graph is freed, as `generate` does
        dec.step(int(rng.integers(3, vocab)))  # warm-up token
        snap = dec.snapshot() if dec.restorable else None
        runs = []
        for _ in range(spec["repeat"]):
            if snap is not None:
                dec.restore(snap)
            times = []
            for _ in range(spec["tokens"]):
                tok = int(rng.integers(3, vocab))
                t = time.perf_counter()
                dec.step(tok)
                times.append((time.perf_counter() - t) * 1e3)
            runs.append(times)
        flat = sorted(x for run in runs for x in run)
        medians = [statistics.median(run) for run in runs]
        records.append({
            "context": context, "positions": [start, dec.position], "restored_each_repeat": snap is not None,
            "ms_per_token_median": round(statistics.median(flat), 4),
            "ms_per_token_p90": round(flat[int(0.9 * (len(flat) - 1))], 4),
            "repeat_medians_ms": [round(m, 4) for m in medians],
            "spread": round((max(medians) - min(medians)) / statistics.median(medians), 4), **fill_rate(context, fill_s),
            "state_bytes_now": dec.state_bytes, "state_fingerprint": fingerprint,
            "memory_mb": memory_delta(memory_mb(), base)})
    stored = stored_prompt(dec, prompt)
    profile = ort_profile(spec["path"], spec["threads"]) if spec.get("profile") else None
    return {"load_s": round(load_s, 3), "prompt_open_s": round(prompt_open_s, 3), "prompt_weights": prompt_weights,
            "import_rss_mb": round(base.get("rss", 0.0), 1), "profile": profile,
            "torch_imported": "torch" in sys.modules,  # ONNX artifacts run without torch (the base install)
            "memory_after_load_mb": after_load, "memory_after_prefill_mb": after_prefill,
            "prefill_tokens": PROMPT, "ttft_ms": round(ttft * 1e3, 2),
            "prefill_tokens_per_s": round(PROMPT / ttft, 1), "stored_prompt": stored, "records": records}


# op types by what they cost in a RetNet step (the rest: norms, rotary, gating, reshapes)
PROFILE_GROUPS = {"MatMulNBits": "quantized weights (MatMulNBits)", "MatMulInteger": "int8 weights (MatMulInteger)",
                  "DynamicQuantizeMatMul": "int8 weights (MatMulInteger)", "MatMul": "fp32 matmuls (weights or state)",
                  "GatherBlockQuantized": "embedding", "Gather": "embedding",
                  "LinearAttention": "fused state update (LinearAttention)"}


def ort_profile(directory: str, threads: int, steps: int = 32, step_graph: str = "auto") -> dict:
    """Where a decode step's time goes in onnxruntime: kernel time per op group. The profiler slows the
    run itself, so the framework overhead is judged by the caller against the unprofiled ms/token."""
    from ..runtimes.onnxruntime import OnnxSession

    with tempfile.TemporaryDirectory(prefix="retnet-edge-profile-") as tmp:  # never beside the user's artifact
        session = OnnxSession(Path(directory), threads, profile_prefix=str(Path(tmp) / "profile"), step_graph=step_graph)
        decoder = session.decoder()  # the runner's own decoder: its step graph, bound as it binds it
        t0 = time.perf_counter()
        for t in range(steps):
            decoder.step(3 + t, t)
        wall_us = (time.perf_counter() - t0) * 1e6
        graph = session.step_file
        events = json.loads(Path(session.step_session.end_profiling()).read_text())
    groups: dict[str, float] = {}
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            op = e.get("args", {}).get("op_name", "?")
            key = PROFILE_GROUPS.get(op, "elementwise / norms / reshapes")
            groups[key] = groups.get(key, 0.0) + e["dur"]
    nodes = sum(groups.values())
    return {"tool": "onnxruntime profiling", "graph": graph, "steps": steps, "node_ms_per_step": round(nodes / steps / 1e3, 4),
            "profiled_ms_per_step": round(wall_us / steps / 1e3, 4),
            "share_of_node_time": {k: round(v / nodes, 3) for k, v in sorted(groups.items(), key=lambda kv: -kv[1])}}


def main() -> None:
    spec = json.loads(sys.argv[1])
    print(json.dumps(measure(spec)))


if __name__ == "__main__":
    main()
