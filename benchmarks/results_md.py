#!/usr/bin/env python3
"""Render benchmarks/RESULTS.md from `retnet-edge bench` JSON documents (run by benchmarks/run_bench.sh).

    python benchmarks/results_md.py results/bench_demo.json results/bench_small.json > benchmarks/RESULTS.md
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def _mib(n: float | None) -> str:
    return "—" if n is None else f"{n:,.1f}"


def section(path: Path) -> list[str]:
    doc = json.loads(path.read_text())
    m, v = doc["machine"], doc["versions"]
    bw = m["read_bandwidth"]
    out = [f"## `{path.name}`", "",
           f"Machine: {m['cpu']} ({m['arch']}, flags {', '.join(m['flags'])}), {m['cores']} cores; load average "
           f"{m['load_average']} before, {m['load_average_after']} after. Read roof ({bw['kernel']}, "
           f"{bw['buffer_mib']} MiB buffer): " + ", ".join(f"{t} thread(s) {g} GB/s" for t, g in bw["gb_per_s"].items())
           + ".", "", "Versions: " + ", ".join(f"{k} {x}" for k, x in v.items()) + ".",
           f"Settings: contexts {doc['config']['contexts']}, {doc['config']['tokens']} tokens x "
           f"{doc['config']['repeat']} repetitions, threads {doc['config']['threads']}.", "",
           "| artifact | model | runtime | quant | thr | context | ms/token (median) | p90 | tok/s | prefill tok/s "
           "| RSS MiB (anon / file) | peak MiB | state MiB | MB read/token | roof |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in doc["results"]:
        out.append(f"| {Path(r['artifact']).name} | {r['model']} | {r['runtime']} | {r['quant']} | {r['threads']} | "
                   f"{r['context']} | {r['ms_per_token_median']:.3f} | {r['ms_per_token_p90']:.3f} | "
                   f"{r['tokens_per_s']:.1f} | {r['prefill_tokens_per_s'] or '—'} | {_mib(r['rss_mb'])} "
                   f"({_mib(r['rss_anon_mb'])} / {_mib(r['rss_file_mb'])}) | {_mib(r['rss_peak_mb'])} | "
                   f"{r['state_bytes'] / 2**20:.2f} | {r['bytes_per_token'] / 1e6:.1f} | {r['roof_fraction']:.0%} |")
    out += ["", "Flatness (ms/token at the deepest context ÷ at the shallowest) and resident-memory growth:", "",
            "| artifact | model | runtime | quant | thr | contexts | latency ratio | RSS growth MiB |",
            "|---|---|---|---|---|---|---|---|"]
    for f in doc["summary"]["flatness"]:
        out.append(f"| {Path(f['artifact']).name} | {f['model']} | {f['runtime']} | {f['quant']} | {f['threads']} | "
                   f"{f['contexts'][0]} → {f['contexts'][1]} | {f['latency_ratio']} | {f['rss_growth_mb']} |")
    if doc["summary"]["speedup_vs_baseline"]:
        out += ["", "RetNet (ONNX) vs the same-size Transformer-KV (ONNX, same quant), per-token speedup:", "",
                "| artifact | quant | thr | context | speedup |", "|---|---|---|---|---|"]
        for s in doc["summary"]["speedup_vs_baseline"]:
            out.append(f"| {Path(s['artifact']).name} | {s['quant']} | {s['threads']} | {s['context']} | "
                       f"{s['speedup']}x |")
    plots = doc.get("plots", [])
    out += [""] + [f"![{Path(p).stem}]({Path(p).relative_to(Path('benchmarks')) if p.startswith('benchmarks') else p})"
                   for p in plots] + [""]
    return out


def main() -> None:
    lines = ["# Benchmark results", "",
             "Regenerate with `bash benchmarks/run_bench.sh` (on an idle machine; ~30 min on 2 cores). Each row is "
             "one (artifact, context, threads) record of `retnet-edge bench`: decode latency by llama-bench's "
             "method (state or KV cache filled to the depth, one warm-up token, then timed single-token steps "
             "with logits), memory in a fresh process as deltas over the import baseline, and bytes read per "
             "token (weights without the embedding table, plus the RetNet state read and written or the "
             "baseline's KV cache read) against the read roof measured in the same run. The `small` preset has "
             "random weights and is exported with `--no-validate`; the demo artifacts passed the export gate.", ""]
    notes = Path(__file__).parent / "results" / "notes.md"  # what the run showed, written by whoever ran it
    if notes.is_file():
        lines += [notes.read_text().strip(), ""]
    for arg in sys.argv[1:]:
        lines += section(Path(arg))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
