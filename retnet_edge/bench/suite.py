"""`run_bench(paths, BenchConfig) -> dict`: latency and memory per token over context, vs a Transformer-KV
baseline and this machine's read roof — the document `retnet-edge bench` prints and plots.

Each (artifact, threads) runs in a fresh process (`measure.py`, or the C++ `retnet_bench` for ExecuTorch
programs when it is built), so memory is that artifact's alone. For every RetNet ONNX artifact the
baseline is the same-size Transformer with a KV cache at the same quant mode, exported through the same
ONNX exporter and quantization plan.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..base.interrupts import run_tied, sigterm_as_exit
from ..base.io_utils import read_json
from ..base.paths import resolve_path
from ..contract import MANIFEST_FILE, ONNX_STEP_FILE, ONNX_WEIGHTS_FILE, PTE_FILE
from ..contract.manifest import Manifest
from ..contract.quant import QuantConfig
from ..core.config import RetNetConfig
from ..errors import ConfigError, RetNetEdgeError
from ..runtimes import check_threads
from .machine import machine_facts, versions
from .measure import PROMPT, fill_rate
from .plan import check_plan, check_runtime, unique_subjects, work_dir
from .roof import measure_read_bandwidth
from .tools import build_harness, harness_path

BENCH_RUNTIMES = ("auto", "python", "cpp")
BASELINES = ("transformer", "llama.cpp")  # `--baseline`, comma-separated; none: no baseline
PROFILE_BELOW = 0.6  # records under this fraction of the read roof carry a profile (onnxruntime)


@dataclass
class BenchConfig:
    contexts: list[int] = field(default_factory=lambda: [0, 512, 2048, 8192])
    tokens: int = 128
    threads: list[int] = field(default_factory=lambda: [1, 2])
    repeat: int = 5
    baselines: tuple[str, ...] = ("transformer",)  # any of BASELINES; () measures the artifacts alone
    runtime: str = "auto"  # ExecuTorch: auto (C++ harness if built) | python | cpp
    work_dir: Path | None = None  # where baseline artifacts are cached

    def __post_init__(self) -> None:
        if not self.contexts or min(self.contexts) < 0 or max(self.contexts) > 1_000_000:
            raise ConfigError("--contexts must be depths between 0 and 1,000,000")
        if not 1 <= self.tokens <= 100_000 or not 1 <= self.repeat <= 1000:
            raise ConfigError("--tokens must be in 1..100000 and --repeat in 1..1000")
        if not self.threads:
            raise ConfigError("--threads needs at least one thread count")
        for t in self.threads:
            check_threads(t)
        if self.runtime not in BENCH_RUNTIMES:
            raise ConfigError(f"unknown --runtime {self.runtime!r}; expected one of {', '.join(BENCH_RUNTIMES)}")
        unknown = [b for b in self.baselines if b not in BASELINES]
        if unknown:
            raise ConfigError(f"unknown --baseline {unknown[0]!r}; expected {', '.join(BASELINES)} or none "
                              "(comma-separated)")
        self.baselines = tuple(dict.fromkeys(self.baselines))
        # a depth or a thread count given twice is measured once (`--contexts 0,0,0` gave a flatness line)
        self.contexts, self.threads = sorted(set(self.contexts)), list(dict.fromkeys(self.threads))


@dataclass
class Subject:
    """One thing to measure: a RetNet artifact or checkpoint, or a baseline artifact."""

    label: str
    model: str  # retnet | transformer
    runtime: str  # onnxruntime | executorch | executorch-cpp | torch
    path: Path
    cfg: RetNetConfig
    quant: str
    weight_bytes_per_token: int  # weights read per token (the embedding table is read one row at a time)
    artifact_bytes: int
    validation: str


def _embedding_bytes(cfg: RetNetConfig, precision: str) -> int:
    return int(cfg.vocab_size * cfg.d_model * {"fp32": 4, "int8": 1, "int4": 0.5}[precision])


def _onnx_weight_bytes(directory: Path, graph: str = ONNX_STEP_FILE) -> tuple[int, int]:
    """(all initializer bytes of the graph, those of the embedding) from the graph's external-data table."""
    import onnx

    total = embed = 0
    for t in onnx.load(str(directory / graph), load_external_data=False).graph.initializer:
        n = next((int(e.value) for e in t.external_data if e.key == "length"), len(t.raw_data))
        total += n
        embed += n if t.name.startswith("embed.") else 0
    return total, embed


def describe(path: str, runtime_choice: str) -> Subject:
    """What a path is and how it will be run."""
    p = resolve_path(path)
    if not (p / MANIFEST_FILE).is_file():  # a checkpoint: eager PyTorch
        from ..app.inspection import parameter_count
        from ..checkpoints.loader import (
            load_config,  # here: benchmarking artifacts needs no torch
        )

        _, cfg = load_config(p)

        n = parameter_count(cfg)
        return Subject(str(path), "retnet", "torch", p, cfg, "fp32", 4 * n - _embedding_bytes(cfg, "fp32"),
                       4 * n, "reference")
    m = Manifest.load(p, check_hashes=True)  # the measuring processes skip it: load time is the runtime's
    cfg, quant = m.config, m.quant.scheme.value
    model = m.extra.get("model", "retnet")
    label = f"transformer-kv {quant}" if model == "transformer" else str(path)
    if m.target == "onnx":
        total, embed = _onnx_weight_bytes(p)
        size = (p / ONNX_WEIGHTS_FILE).stat().st_size
        return Subject(label, model, "onnxruntime", p, cfg, quant, total - embed, size, m.validation_status.lower())
    size = (p / PTE_FILE).stat().st_size
    flavor = read_json(p / "delegation.json").get("flavor")
    if runtime_choice == "cpp" and flavor != "runner":
        raise RetNetEdgeError(f"--runtime cpp runs runner-flavour programs; {path} is the {flavor} flavour",
                              hint="--runtime python")
    harness = build_harness() if runtime_choice == "cpp" else harness_path()  # auto: only if already built
    # the baseline's llama::custom_sdpa kernels live in the Python runtime only
    cpp = runtime_choice != "python" and harness and flavor == "runner" and model == "retnet"
    weights = size - _embedding_bytes(cfg, m.quant.embedding)
    return Subject(label, model, "executorch-cpp" if cpp else "executorch", p, cfg, quant, weights, size,
                   m.validation_status.lower())


def baseline_for(subject: Subject, bc: BenchConfig, work_dir: Path, log) -> Subject:
    """The same-size Transformer-KV artifact for the subject's target and quant mode (built once, cached)."""
    from .baseline import export_baseline_executorch, export_baseline_onnx, quiet_export

    onnx = subject.runtime in ("onnxruntime", "torch")
    # the ExecuTorch cache must hold the whole run: the deepest context plus its timed tokens, or the prompt
    max_context = max(max(bc.contexts) + bc.tokens * bc.repeat + 8, PROMPT + 8)
    key = hashlib.sha256((subject.cfg.to_json() + subject.quant + ("" if onnx else str(max_context))).encode())
    out = work_dir / f"transformer-{'onnx' if onnx else 'pte'}-{subject.quant}-{key.hexdigest()[:12]}"
    if not (out / MANIFEST_FILE).is_file():
        log(f"building the Transformer-KV baseline ({'ONNX' if onnx else 'ExecuTorch'}, {subject.quant}) ...")
        with quiet_export():
            if onnx:
                export_baseline_onnx(subject.cfg, QuantConfig(subject.quant), out, log=log)
            else:
                export_baseline_executorch(subject.cfg, QuantConfig(subject.quant), out, max_context, log=log)
    return describe(str(out), "python")


def llama_subjects(subject: Subject, bc: BenchConfig, work_dir: Path, log) -> list[Subject]:
    """The same-shape Llama GGUF at each of llama.cpp's quants that match the subject's bits (built once)."""
    from .llamacpp import LLAMA_QUANTS, LlamaShape, gguf_for, weight_bytes

    shape = LlamaShape.of(subject.cfg, ctx=max(max(bc.contexts) + bc.tokens + 16, PROMPT + 16))
    out = []
    for quant in LLAMA_QUANTS[subject.quant]:
        path = gguf_for(shape, quant, work_dir, log)
        weights, size = weight_bytes(path)
        out.append(Subject(f"llama.cpp {quant}", "llama.cpp", "llama.cpp", path, subject.cfg, subject.quant, weights,
                           size, "none (random weights)"))
    return out


def _run_child(cmd: list[str]) -> list[dict]:
    res = run_tied(cmd)  # dies with this process, even SIGKILLed (a measuring child held ~930 MB)
    if res.returncode != 0:
        tail = (res.stderr.strip().splitlines() or ["no output"])[-1]
        raise RetNetEdgeError(f"benchmark process failed ({' '.join(cmd[:3])} ...): {tail}")
    return [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]


def measure_subject(s: Subject, threads: int, bc: BenchConfig) -> dict:
    """Run one subject at one thread count in a fresh process; the measure.py result shape."""
    if s.runtime == "executorch-cpp":
        ctx = ",".join(str(c) for c in sorted(bc.contexts))
        lines = _run_child([str(harness_path()), str(s.path / PTE_FILE), str(bc.tokens), str(threads), "1", ctx,
                            str(bc.repeat), str(PROMPT)])
        head, records = lines[0], lines[1:]
        ttft = head["ttft_ms"]  # the runner flavour's prompt: token by token, as the stock runner runs it
        return {"load_s": head["load_ms"] / 1e3, "import_rss_mb": head["rss_before_load_mib"],
                "memory_after_load_mb": {"rss": head["rss_mib"] - head["rss_before_load_mib"]},
                "prefill_tokens": head["prompt_tokens"], "ttft_ms": round(ttft, 2),
                "prefill_tokens_per_s": round(head["prompt_tokens"] / ttft * 1e3, 1),
                "records": [{**r, **fill_rate(r["context"], r["fill_ms"] / 1e3),
                             "memory_mb": {k: round(r[f"{k}_mib"] - head["rss_before_load_mib"], 1)
                                           for k in ("rss", "anon", "file", "peak")},
                             "state_bytes_now": s.cfg.state_bytes(1), "state_fingerprint": None}
                            for r in records]}
    spec = {"model": s.model, "runtime": s.runtime, "path": str(s.path), "threads": threads,
            "contexts": sorted(bc.contexts), "tokens": bc.tokens, "repeat": bc.repeat,
            "profile": s.model == "retnet" and s.runtime == "onnxruntime"}
    if s.runtime == "llama.cpp":
        from dataclasses import asdict

        from .llamacpp import LlamaShape

        spec["shape"] = asdict(LlamaShape.of(s.cfg, ctx=max(max(bc.contexts) + bc.tokens + 16, PROMPT + 16)))
        return _run_child([sys.executable, "-m", "retnet_edge.bench.llamacpp", json.dumps(spec)])[0]
    return _run_child([sys.executable, "-m", "retnet_edge.bench.measure", json.dumps(spec)])[0]


def flatten(s: Subject, threads: int, result: dict, bandwidth: dict) -> list[dict]:
    """The issue's record per (subject, context, threads), with bytes per token and the roof fraction."""
    out = []
    roof = bandwidth["gb_per_s"].get(threads) or max(bandwidth["gb_per_s"].values())
    for r in result["records"]:
        kv = s.model != "retnet"
        state = r["state_bytes_now"] if kv else s.cfg.state_bytes(1)
        # RetNet: S read and written each token; a baseline reads its whole cache each token
        bytes_per_token = s.weight_bytes_per_token + (state if kv else 2 * state)
        tok_s = 1e3 / r["ms_per_token_median"]
        mem = r["memory_mb"]
        out.append({
            "model": s.model, "runtime": s.runtime, "quant": s.quant, "threads": threads, "context": r["context"],
            "artifact": s.label, "artifact_bytes": s.artifact_bytes, "validation": s.validation,
            "ms_per_token_median": r["ms_per_token_median"], "ms_per_token_p90": r["ms_per_token_p90"],
            "tokens_per_s": round(tok_s, 2), "spread": r.get("spread"), "positions": r.get("positions"),
            "prefill_tokens_per_s": result["prefill_tokens_per_s"], "ttft_ms": result["ttft_ms"],
            "prompt_weights": result.get("prompt_weights"), "prompt_open_s": result.get("prompt_open_s"),
            "stored_prompt": result.get("stored_prompt"),
            "fill_tokens_per_s": r.get("fill_tokens_per_s"), "fill_ms": r.get("fill_ms"),
            "rss_mb": mem.get("rss"), "rss_peak_mb": mem.get("peak"), "rss_anon_mb": mem.get("anon"),
            "rss_file_mb": mem.get("file"), "state_bytes": state, "state_fingerprint": r.get("state_fingerprint"),
            "bytes_per_token": bytes_per_token, "effective_gb_per_s": round(bytes_per_token * tok_s / 1e9, 2),
            "roof_gb_per_s": roof, "roof_fraction": round(bytes_per_token * tok_s / 1e9 / roof, 3)})
        prof = result.get("profile")
        if out[-1]["roof_fraction"] < PROFILE_BELOW and prof:  # under 60 % of the roof: where the time goes
            # the profiler times every node and slows small kernels most: shares are of kernel time
            out[-1]["profile"] = prof
    return out


def run_bench(paths: list[str], bc: BenchConfig, log: Callable[[str], None] = lambda s: None,
              progress: Callable[[str], None] | None = None) -> dict:
    """Measure every path (and its baseline) at every thread count; one JSON document."""
    subjects = unique_subjects([describe(p, bc.runtime) for p in paths], log)
    check_runtime(subjects, bc.runtime)
    if "llama.cpp" in bc.baselines:
        from .llamacpp import require

        require()  # the missing extra is one line before any work, not after the exports
    baselines = {(s.cfg.to_json(), s.quant, s.runtime.startswith("executorch")): s
                 for s in subjects if s.model == "retnet"} if "transformer" in bc.baselines else {}
    llamas = {(s.cfg.to_json(), s.quant): s
              for s in subjects if s.model == "retnet"} if "llama.cpp" in bc.baselines else {}
    from .llamacpp import LLAMA_QUANTS

    n_llama = sum(len(LLAMA_QUANTS[s.quant]) for s in llamas.values())
    log(f"plan: {check_plan(subjects, bc, len(baselines), n_llama)}")
    with sigterm_as_exit():  # SIGTERM unwinds: the measuring child is killed and the temp dir removed
        return _measure_all(subjects, list(baselines.values()), list(llamas.values()), bc, log, progress)


def _measure_all(subjects: list[Subject], retnets: list[Subject], llamas: list[Subject], bc: BenchConfig, log,
                 progress) -> dict:
    work = bc.work_dir or work_dir()
    try:
        subjects = subjects + [baseline_for(s, bc, work, log) for s in retnets]
        subjects += [x for s in llamas for x in llama_subjects(s, bc, work, log)]
        machine = machine_facts()
        log("measuring this machine's read bandwidth ...")
        bandwidth = measure_read_bandwidth(sorted(set(bc.threads)))
        machine["read_bandwidth"] = bandwidth
        results, extras = [], []
        jobs = [(s, t) for s in subjects for t in bc.threads]
        for i, (s, t) in enumerate(jobs, 1):
            (progress or log)(f"[{i}/{len(jobs)}] {s.label} ({s.model}, {s.runtime}, {s.quant}) at {t} thread(s)")
            res = measure_subject(s, t, bc)
            results += flatten(s, t, res, bandwidth)
            extras.append({"artifact": s.label, "threads": t, "load_s": res["load_s"],
                           "prompt_open_s": res.get("prompt_open_s"), "prompt_weights": res.get("prompt_weights"),
                           "import_rss_mb": res["import_rss_mb"], "memory_after_load_mb": res["memory_after_load_mb"],
                           "memory_after_prefill_mb": res.get("memory_after_prefill_mb"),
                           "torch_imported": res.get("torch_imported")})
        machine["load_average_after"] = machine_facts()["load_average"]
        if llamas:
            from .llamacpp import system_info

            machine["llama_cpp"] = system_info()
    finally:
        if not bc.work_dir:  # baseline artifacts built for this run only
            shutil.rmtree(work, ignore_errors=True)
    return {"tool": "retnet-edge bench", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": machine, "versions": versions(),
            "config": {"contexts": sorted(bc.contexts), "tokens": bc.tokens, "threads": bc.threads,
                       "repeat": bc.repeat, "baselines": list(bc.baselines), "runtime": bc.runtime},
            "results": results, "processes": extras, "summary": summarize(results)}


def summarize(results: list[dict]) -> dict:
    """Flatness (latency at the deepest context ÷ at the shallowest) and RetNet-vs-baseline speedups."""
    out: dict = {"flatness": [], "speedup_vs_baseline": [], "vs_llama_cpp": vs_llama_cpp(results)}
    groups: dict = {}
    for r in results:
        groups.setdefault((r["artifact"], r["model"], r["runtime"], r["quant"], r["threads"]), []).append(r)
    for (art, model, rt, quant, th), rs in groups.items():
        rs.sort(key=lambda r: r["context"])
        if rs[0]["context"] == rs[-1]["context"]:  # one depth: no flatness to speak of
            continue
        out["flatness"].append({"artifact": art, "model": model, "runtime": rt, "quant": quant, "threads": th,
                                "contexts": [rs[0]["context"], rs[-1]["context"]],
                                "latency_ratio": round(rs[-1]["ms_per_token_median"] / rs[0]["ms_per_token_median"], 3),
                                "rss_growth_mb": round((rs[-1]["rss_mb"] or 0) - (rs[0]["rss_mb"] or 0), 1)})
    engine = lambda rt: rt.split("-")[0]  # noqa: E731  (executorch-cpp is compared with executorch)
    for r in results:
        if r["model"] != "retnet":
            continue
        b = next((x for x in results if x["model"] == "transformer" and x["quant"] == r["quant"]
                  and engine(x["runtime"]) == engine(r["runtime"]) and x["threads"] == r["threads"]
                  and x["context"] == r["context"]), None)
        if b:
            out["speedup_vs_baseline"].append({"artifact": r["artifact"], "runtime": r["runtime"],
                                               "baseline_runtime": b["runtime"], "quant": r["quant"],
                                               "threads": r["threads"], "context": r["context"],
                                               "speedup": round(b["ms_per_token_median"] / r["ms_per_token_median"], 2),
                                               "memory_ratio": round((b["rss_mb"] or 0) / max(r["rss_mb"] or 1, 1), 2)})
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def vs_llama_cpp(results: list[dict]) -> list[dict]:
    """Each RetNet record against every llama.cpp record of its bits, threads and context, as ratios a user
    reads: decode tok/s, prompt tok/s at 512 (pp512), time to first token, and the prompt rate filling that
    context from empty (> 1: retnet-edge is faster)."""
    out = []
    for r in results:
        if r["model"] != "retnet":
            continue
        for b in results:
            if b["model"] == "llama.cpp" and (b["quant"], b["threads"], b["context"]) == \
                    (r["quant"], r["threads"], r["context"]):
                out.append({"artifact": r["artifact"], "runtime": r["runtime"], "quant": r["quant"],
                            "llama_cpp": b["artifact"].split()[-1], "threads": r["threads"], "context": r["context"],
                            "decode_tok_s": [r["tokens_per_s"], b["tokens_per_s"]],
                            "decode_ratio": round(r["tokens_per_s"] / b["tokens_per_s"], 3),
                            "pp512_tok_s": [r["prefill_tokens_per_s"], b["prefill_tokens_per_s"]],
                            "pp512_ratio": _ratio(r["prefill_tokens_per_s"], b["prefill_tokens_per_s"]),
                            "ttft_ms": [r["ttft_ms"], b["ttft_ms"]],
                            "fill_tok_s": [r.get("fill_tokens_per_s"), b.get("fill_tokens_per_s")],
                            "fill_ratio": _ratio(r.get("fill_tokens_per_s"), b.get("fill_tokens_per_s"))})
    return out


def render_bench_table(doc: dict) -> str:
    """The tables `retnet-edge bench` prints: what a user feels first (decode tok/s per context, prompt
    tok/s at 512, time to first token), then what explains it (ms, bytes per token, the read roof, memory)."""
    contexts = doc["config"]["contexts"]
    groups: dict = {}
    for r in doc["results"]:
        groups.setdefault((r["artifact"], r["runtime"], r["quant"], r["threads"]), {})[r["context"]] = r
    head = (f"{'artifact':<28} {'runtime':<15} {'quant':<5} {'thr':>3} "
            + " ".join(f"{'tok/s@' + str(c):>11}" for c in contexts) + f" {'pp512 tok/s':>11} {'TTFT ms':>8}")
    rows = ["decode tok/s at each context; the prompt (512 tokens) in tok/s and as time to its first token", head]
    for (art, rt, quant, th), by_ctx in groups.items():
        first = next(iter(by_ctx.values()))
        pp, ttft = first["prefill_tokens_per_s"], first["ttft_ms"]
        rows.append(f"{art[-28:]:<28} {rt:<15} {quant:<5} {th:>3} "
                    + " ".join(f"{by_ctx[c]['tokens_per_s']:>11.1f}" if c in by_ctx else f"{'—':>11}" for c in contexts)
                    + f" {pp if pp else '—':>11} {ttft if ttft else '—':>8}")
    deep = [c for c in contexts if c > 0]
    if any(r.get("fill_tokens_per_s") for r in doc["results"]):
        rows += ["", "prompt tok/s filling each context from empty (a Transformer's falls with depth)",
                 f"{'artifact':<28} {'runtime':<15} {'quant':<5} {'thr':>3} " + " ".join(f"{'fill@' + str(c):>11}" for c in deep)]
        for (art, rt, quant, th), by_ctx in groups.items():
            fills = [by_ctx[c].get("fill_tokens_per_s") if c in by_ctx else None for c in deep]
            rows.append(f"{art[-28:]:<28} {rt:<15} {quant:<5} {th:>3} "
                        + " ".join(f"{f:>11.1f}" if f else f"{'—':>11}" for f in fills))
        rows.append("")
    derived = [(key, next(iter(by_ctx.values()))) for key, by_ctx in groups.items()
               if next(iter(by_ctx.values())).get("stored_prompt")]
    if derived:
        rows.append("int4 prompt weights: int8 derived at load vs stored int4 (--prompt-weights stored), same process")
        for (art, rt, quant, th), r in derived:
            st = r["stored_prompt"]
            rows.append(f"  {art[-28:]} {th} thr: pp512 {r['prefill_tokens_per_s']} vs {st['prefill_tokens_per_s']} tok/s "
                        f"(x{r['prefill_tokens_per_s'] / st['prefill_tokens_per_s']:.2f}); opening the prompt graph "
                        f"{r['prompt_open_s']:.2f} vs {st['prompt_open_s']:.2f} s")
        rows.append("")
    for v in doc["summary"].get("vs_llama_cpp", []):
        pp = f"; pp512 x{v['pp512_ratio']:.2f}" if v["pp512_ratio"] else ""
        rows.append(f"vs llama.cpp {v['llama_cpp']} ({v['quant']}, {v['threads']} thr, context {v['context']}): "
                    f"decode x{v['decode_ratio']:.2f} ({v['decode_tok_s'][0]:.1f} vs {v['decode_tok_s'][1]:.1f} tok/s)"
                    + pp + (f", TTFT {v['ttft_ms'][0]} vs {v['ttft_ms'][1]} ms" if v["ttft_ms"][0] else "")
                    + (f"; filling {v['context']} tokens x{v['fill_ratio']:.2f} ({v['fill_tok_s'][0]:.0f} vs "
                       f"{v['fill_tok_s'][1]:.0f} tok/s)" if v.get("fill_ratio") else ""))
    rows += ["", "what explains it:",
             f"{'artifact':<28} {'runtime':<15} {'quant':<5} {'thr':>3} {'context':>7} {'ms/tok':>8} {'p90':>8} "
             f"{'MB/tok':>7} {'GB/s':>6} {'roof':>5} {'rss MB':>7} {'state MB':>8}"]
    for r in doc["results"]:
        rows.append(f"{r['artifact'][-28:]:<28} {r['runtime']:<15} {r['quant']:<5} {r['threads']:>3} {r['context']:>7} "
                    f"{r['ms_per_token_median']:>8.3f} {r['ms_per_token_p90']:>8.3f} {r['bytes_per_token'] / 1e6:>7.1f} "
                    f"{r['effective_gb_per_s']:>6.2f} {r['roof_fraction']:>5.0%} {(r['rss_mb'] or 0):>7.1f} "
                    f"{r['state_bytes'] / 2**20:>8.2f}")
    bw, m = doc["machine"]["read_bandwidth"], doc["machine"]
    rows.append(f"read roof: {', '.join(f'{t} thread(s) {g} GB/s' for t, g in bw['gb_per_s'].items())} "
                f"[{bw['kernel']}]; CPU {m['cpu']} ({', '.join(m['flags']) or 'no listed ISA flags'}), {m['cores']} cores; "
                f"load average {m['load_average']} -> {m['load_average_after']}")
    for f in doc["summary"]["flatness"]:
        rows.append(f"flatness {f['artifact']} ({f['model']}, {f['runtime']}, {f['threads']} thr): latency "
                    f"x{f['latency_ratio']} from context {f['contexts'][0]} to {f['contexts'][1]}")
    return "\n".join(rows)
