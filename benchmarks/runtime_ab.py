"""Side-by-side decode latency of ONNX artifacts and runtime settings, interleaved (issue 11's A/B table).

    python benchmarks/runtime_ab.py A=path[:setting,...] B=path[:setting,...] ... -o out.json

Settings: `functional` (the pre-IOBinding runner: numpy state in and out each token), `spin=1|0` (onnxruntime
intra-op spinning on/off; default: what the runtime sets), `threads=N`, `graph=fused|chain` (which step graph
the runner decodes with; default: its own pick by threads), `before=DIR` (import retnet_edge from DIR,
e.g. a git worktree of an older commit, for a before/after table from one run). Each variant runs in its own process;
rounds alternate the variants so drift of a shared machine hits all of them alike. Reported: median
ms/token over rounds (each round: `tokens` steps after a 512-token prompt), the prompt's time and its
ratio to 512 steps, the peak RSS through load and prompt, RSS after the prompt and after decoding (the prefill graph released, as `generate` does), and seconds to import the runtime.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, os, sys, time
if os.environ.get("RETNET_EDGE_FROM"):  # an older tree first: drop an editable install's meta-path finder
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in type(f).__module__ + repr(f)]
    sys.path.insert(0, os.environ["RETNET_EDGE_FROM"])
t0 = time.perf_counter()
from retnet_edge.runtimes import load_runner
import onnxruntime
import_s = time.perf_counter() - t0
torch_imported = "torch" in sys.modules
import numpy as np
from retnet_edge.bench.measure import memory_mb
spec = json.loads(sys.argv[1])
import retnet_edge.runtimes.onnxruntime as rt
if spec["spin"] is not False:
    base_opts = rt.session_options
    def spinning(*args, **kwargs):
        so = base_opts(*args, **kwargs)
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spec["spin"] == 1 else "0")
        return so
    rt.session_options = spinning
if spec["functional"]:
    del rt.OnnxSession.decoder  # the Runner then drives the functional session (numpy state in and out)
base = memory_mb()
r = load_runner(spec["path"], threads=spec["threads"])
rng = np.random.default_rng(0)
t = time.perf_counter()
r.prefill(rng.integers(3, r.cfg.vocab_size, 512).tolist(), all_logits=False)
prompt_ms = (time.perf_counter() - t) * 1e3
after_prompt = memory_mb()["rss"] - base["rss"]
peak_prompt = memory_mb()["peak"] - base["rss"]  # the process's high-water mark: load and prompt
if hasattr(r, "release_prefill"):  # the pre-issue-11 runner (`before`) kept the prompt graph resident
    r.release_prefill()
rounds = []
for _ in range(spec["rounds"]):
    for _ in range(4):
        r.step(int(rng.integers(3, r.cfg.vocab_size)))
    t = time.perf_counter()
    for _ in range(spec["tokens"]):
        r.step(int(rng.integers(3, r.cfg.vocab_size)))
    rounds.append((time.perf_counter() - t) / spec["tokens"] * 1e3)
import retnet_edge
print(json.dumps({"from": retnet_edge.__file__, "ms": rounds, "prompt_ms": round(prompt_ms, 1),
                  "rss_peak_prompt_mb": round(peak_prompt, 1), "rss_after_prompt_mb": round(after_prompt, 1),
                  "rss_decode_mb": round(memory_mb()["rss"] - base["rss"], 1), "import_s": round(import_s, 3),
                  "torch_imported": torch_imported}))
"""


def machine_line() -> str:
    """CPU model, cores and the ISA flags that matter here (`bench.machine.machine_facts`)."""
    from retnet_edge.bench.machine import machine_facts

    m = machine_facts()
    return f"{m['cpu']}, {m['cores']} cores, {' '.join(m['flags'])}"


def parse_variant(text: str) -> tuple[str, dict]:
    name, _, rest = text.partition("=")
    path, _, settings = rest.partition(":")
    spec = {"path": path, "functional": False, "spin": False, "threads": 1}
    for s in filter(None, settings.split(",")):
        key, _, value = s.partition("=")
        spec[key] = (int(value) if value.isdigit() else value) if value else True
    return name, spec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("variants", nargs="+",
                    help="NAME=ARTIFACT[:functional,spin=1|0,threads=N,before=DIR,graph=fused|chain]")
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=5, help="alternations of all variants")
    ap.add_argument("-o", "--output")
    ap.add_argument("--note", default="", help="what before / after are (kept in the JSON, shown in RESULTS.md)")
    a = ap.parse_args()
    variants = dict(map(parse_variant, a.variants))
    runs: dict[str, list[dict]] = {k: [] for k in variants}
    for _ in range(a.rounds):
        for name, spec in variants.items():
            env = {**os.environ, **({"RETNET_EDGE_FROM": spec["before"]} if spec.get("before") else {}),
                   **({"RETNET_EDGE_STEP_GRAPH": spec["graph"]} if spec.get("graph") else {})}
            out = subprocess.run([sys.executable, "-c", CHILD, json.dumps({**spec, "rounds": 1, "tokens": a.tokens})],
                                 capture_output=True, text=True, check=True, env=env)
            runs[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
    table = {}
    for name, rs in runs.items():
        ms = [r["ms"][0] for r in rs]
        prompt = statistics.median(r["prompt_ms"] for r in rs)
        table[name] = {**variants[name], "ms_per_token_median": round(statistics.median(ms), 2),
                       "ms_per_round": [round(m, 2) for m in ms], "prompt_512_ms_median": round(prompt, 1),
                       "prefill_vs_step_loop": round(512 * statistics.median(ms) / prompt, 2),
                       "rss_peak_prompt_mb": max(r["rss_peak_prompt_mb"] for r in rs),
                       "rss_after_prompt_mb": max(r["rss_after_prompt_mb"] for r in rs),
                       "rss_decode_mb": max(r["rss_decode_mb"] for r in rs),
                       "import_s": statistics.median(r["import_s"] for r in rs),
                       "torch_imported": any(r["torch_imported"] for r in rs), "code": rs[0]["from"]}
        print(f"{name:14s} {table[name]['ms_per_token_median']:7.2f} ms/token  rounds {table[name]['ms_per_round']}  "
              f"prompt {table[name]['prompt_512_ms_median']} ms ({table[name]['prefill_vs_step_loop']}x the step loop)  "
              f"RSS peak {table[name]['rss_peak_prompt_mb']} after prompt {table[name]['rss_after_prompt_mb']} "
              f"decode {table[name]['rss_decode_mb']} MB  "
              f"import {table[name]['import_s']} s", flush=True)
    if a.output:
        Path(a.output).write_text(json.dumps({"tool": "benchmarks/runtime_ab.py", "tokens": a.tokens,
                                              "rounds": a.rounds, "note": a.note, "machine": machine_line(),
                                              "variants": table}, indent=2) + "\n")


if __name__ == "__main__":
    main()
