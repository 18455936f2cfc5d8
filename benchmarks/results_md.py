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


def _load(name: str) -> dict | None:
    p = Path(__file__).parent / "results" / name
    return json.loads(p.read_text()) if p.is_file() else None


def _ab_table(ab: dict, title: str) -> list[str]:
    out = [title, "", ab.get("note") or "", ""]
    if ab.get("machine"):
        out += [f"Machine: {ab['machine']}.", ""]
    wide = any("prompt_512_ms_median" in v for v in ab["variants"].values())
    if wide:
        out += ["| variant | threads | ms/token | per round | prompt 512 ms | prefill vs step loop | RSS peak (load + "
                "prompt) MiB | RSS after prompt MiB | RSS decoding MiB | import s | torch |",
                "|---|---|---|---|---|---|---|---|---|---|---|"]
    else:
        out += ["| variant | threads | ms/token | per round | RSS after prompt MiB | RSS decoding MiB | import s | torch |",
                "|---|---|---|---|---|---|---|---|"]
    for name, v in ab["variants"].items():
        mid = (f"{v['prompt_512_ms_median']} | {v['prefill_vs_step_loop']}x | {v['rss_peak_prompt_mb']} | "
               if wide else "")
        out.append(f"| {name} | {v['threads']} | {v['ms_per_token_median']} | {v['ms_per_round']} | {mid}"
                   f"{v['rss_after_prompt_mb']} | {v['rss_decode_mb']} | {v['import_s']} | "
                   f"{'yes' if v['torch_imported'] else 'no'} |")
    return out


def _llamacpp_table(ll: dict) -> list[str]:
    out = ["", f"llama.cpp (llama-cpp-python {ll['llama_cpp_python']}, {ll['system_info']}) on a same-shape "
           "Llama (d 1024, 12 layers, ffn 2816, vocab 32000; `benchmarks/llamacpp_compare.py`), same machine, "
           "right after:", "",
           "| quant | threads | ms/token | tok/s | MB read/token | effective GB/s |", "|---|---|---|---|---|---|"]
    for r in ll["records"]:
        out.append(f"| {r['quant']} | {r['threads']} | {r['ms_per_token_median']} | {r['tok_per_s']} | "
                   f"{(r['weight_bytes_per_token'] + r['kv_bytes']) / 1e6:.1f} | {r['effective_gb_s']} |")
    return out


def runtime_section() -> list[str]:
    """Issue 11's before/after tables and the llama.cpp / onnxruntime-genai comparisons, from their JSON:
    the newest run (runtime_ab_xeon.json, llamacpp_xeon.json) first, then the AVX2 EPYC run."""
    out = []
    new_ab, new_ll = _load("runtime_ab_xeon.json"), _load("llamacpp_xeon.json")
    if new_ab:
        out += _ab_table(new_ab, "## Runtime efficiency: before / after, Xeon run (`benchmarks/runtime_ab.py`, "
                         "`small` preset, 270M)")
        if new_ll:
            out += _llamacpp_table(new_ll)
        new_ge = _load("genai_small_xeon.json")
        if new_ge:
            out += _genai_table(new_ge)
        out.append("")
    single = _load("runtime_ab_xeon_single_session.json")
    if single:
        out += _ab_table(single, "## Tried, not adopted: decoding through the prefill graph in one session (Xeon run)") + [""]
    ab, ll, ge = _load("runtime_ab.json"), _load("llamacpp_small.json"), _load("genai_small.json")
    if not ab:
        return out
    ab = {**ab, "note": ab.get("note") or (
        "One interleaved run: each variant in its own process, rounds alternating, the same 512-token prompt "
        "then timed single-token steps (median of rounds). `before` is the runtime at commit 213868b (numpy "
        "state in and out, torch imported, the prompt graph resident with onnxruntime's arena); `after` "
        "that session's tree (IOBinding state, no torch, prompt graph arena-free and released after the "
        "prompt, worker spinning on). RSS is over the interpreter baseline. Machine: the 2-core AMD EPYC "
        "(AVX2, no AVX-512).")}
    out += _ab_table(ab, "## Runtime efficiency: before / after, EPYC run of 2026-11-29 (`benchmarks/runtime_ab.py`, "
                     "`small` preset, 270M)")
    if ll:
        out += _llamacpp_table(ll)
    if ge:
        out += _genai_table(ge)
    return out + [""]


def _genai_table(ge: dict) -> list[str]:
    out = ["", f"onnxruntime-genai {ge['onnxruntime_genai']} generator vs retnet-edge's runner "
           f"(`benchmarks/genai_compare.py`, {ge['threads']} thread, {ge['prompt']}-token prompt, "
           f"{ge['tokens']} greedy tokens):", "", "| runner | prompt ms | decode tok/s | per round |",
           "|---|---|---|---|"]
    return out + [f"| {name} | {r['prompt_ms']} | {r['tok_per_s']} | {r['rounds_tok_per_s']} |"
                  for name, r in ge["results"].items()]


def export_section() -> list[str]:
    """Peak RSS and time per export stage (`export_memory.py`), and the ARM-vs-x86 parity run."""
    out = []
    for name in sorted((Path(__file__).parent / "results").glob("export_memory_*.json")):
        doc = json.loads(name.read_text())
        out += [f"## Export memory: `{doc['preset']}` preset, {doc.get('path', 'whole model')} "
                f"({doc['checkpoint_dtype']} checkpoint, {doc['checkpoint_bytes'] / 2**30:.2f} GiB; "
                "`benchmarks/export_memory.py`)", "",
                "Peak resident memory of the export process tree, sampled every 0.1 s, per stage; the gate ran "
                f"as in a user's export. Torch {doc.get('torch', '?')}; machine: "
                f"{doc['machine'].get('where') or str(doc['machine']['cpus']) + ' cores, ' + str(doc['machine']['memory_gib']) + ' GiB'}.", "",
                "| target | quant | exit | wall s | peak RSS MiB | per stage (s / peak MiB) | gate |", "|---|---|---|---|---|---|---|"]
        for r in doc["runs"]:
            stages = ", ".join(f"{k} {v['seconds']:.0f}/{v['peak_rss_mib']:,}" for k, v in r["stages"].items())
            out.append(f"| {r['target']} | {r['quant']} | {r['exit_code']} | {r['wall_seconds']:.0f} | "
                       f"{r['peak_rss_mib']:,} | {stages} | {r['gate'][:90]} |")
        out.append("")
    arm = _load("arm64_qemu.json")
    if arm:
        out += ["## The .pte on linux-aarch64 under qemu (`benchmarks/device/arm64_qemu.py`)", "",
                f"{arm['arm64']}; reference: {arm['x86']}. {arm['qemu']}.", "",
                "| program | quant | same greedy tokens | logits max rel | top-1 | KL | verdict |", "|---|---|---|---|---|---|---|"]
        for r in arm["results"]:
            m = r["logits_arm64_vs_x86"]
            out.append(f"| {r['artifact']} | {r['quant']} | {r['same_greedy_tokens']} | {m['max_rel']:.2e} | "
                       f"{m['top1']:.3f} | {m['kl']:.2e} | {'pass' if r['passed'] else 'FAIL'} |")
        out.append("")
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
    lines += runtime_section()
    lines += export_section()
    for arg in sys.argv[1:]:
        lines += section(Path(arg))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
