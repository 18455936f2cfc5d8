#!/usr/bin/env python3
"""Render benchmarks/RESULTS.md, and the README's block of figures, from `retnet-edge bench` JSON.

    python benchmarks/results_md.py            # rewrite RESULTS.md and the README block
    python benchmarks/results_md.py --check    # exit 1 when either differs from what the JSON gives

One page of current numbers: every bench document in benchmarks/results/ with a "created" stamp (each
file is named for its suite and the machine's CPU, so a new run replaces that machine's old one; documents
without a stamp are older formats and stay in git history), newest first, headline first (decode tok/s at each context, prompt tok/s at 512, time to first token, the
prompt rate filling each deeper context, the ratios against llama.cpp from the same run), then what explains it (ms, bytes per token, the read roof,
memory). The README shows the newest machine's headline between its `bench:begin` / `bench:end` markers.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
PAGE = ROOT / "benchmarks" / "RESULTS.md"
README = ROOT / "README.md"
BEGIN, END = "<!-- bench:begin (benchmarks/results_md.py writes this block) -->", "<!-- bench:end -->"


def current_runs(results: Path = RESULTS) -> list[tuple[Path, dict]]:
    """Every bench document with a `created` stamp, newest first. A file is named for its suite and the
    machine's CPU (run_bench.sh), so a machine's new run replaces its old one and git keeps the history."""
    runs = []
    for path in sorted(results.glob("bench_*.json")):
        doc = json.loads(path.read_text())
        if doc.get("tool") == "retnet-edge bench" and "created" in doc:
            runs.append((path, doc))
    return sorted(runs, key=lambda pd: pd[1]["created"], reverse=True)


def main_run(runs: list[tuple[Path, dict]]) -> tuple[Path, dict] | None:
    """The README's run: the newest `bench_small_<cpu>.json` (not a variants or long-context suite)."""
    return next(((p, d) for p, d in runs if not any(t in p.name for t in ("_variants_", "_16k_"))), None)


def machine_line(doc: dict) -> str:
    m, v = doc["machine"], doc["versions"]
    roof = ", ".join(f"{t} thread(s) {g} GB/s" for t, g in m["read_bandwidth"]["gb_per_s"].items())
    ll = m.get("llama_cpp")
    return (f"{m['cpu']} ({m['arch']}; flags {', '.join(m['flags']) or 'none listed'}), {m['cores']} cores; "
            f"load average {m['load_average'][0]} before, {m['load_average_after'][0]} after; read roof {roof} "
            f"({m['read_bandwidth']['kernel']}); onnxruntime {v.get('onnxruntime', '—')}"
            + (f", llama-cpp-python {ll['llama_cpp_python']}" if ll else "") + f"; run {doc['created']}.")


def _groups(doc: dict) -> dict:
    out: dict = {}
    for r in doc["results"]:
        out.setdefault((r["artifact"], r["runtime"], r["quant"], r["threads"]), {})[r["context"]] = r
    return out


def _name(artifact: str) -> str:
    return Path(artifact).name if "/" in artifact else artifact


def headline(doc: dict) -> list[str]:
    """Decode tok/s per context, pp512 and TTFT per (artifact, threads); then the llama.cpp ratios."""
    ctx = doc["config"]["contexts"]
    # the prompt rate filling a context deeper than the 512-token prompt (older runs did not time the fill)
    deep = [c for c in ctx if c > 512 and any(r.get("fill_tokens_per_s") for r in doc["results"] if r["context"] == c)]
    out = ["| subject | runtime | bits | threads | " + " | ".join(f"decode tok/s @{c}" for c in ctx)
           + " | prompt tok/s (512) | time to first token (512) |" + "".join(f" prompt tok/s filling {c} |" for c in deep),
           "|---|---|---|---|" + "---|" * len(ctx) + "---|---|" + "---|" * len(deep)]
    for (art, rt, quant, th), by in _groups(doc).items():
        first = next(iter(by.values()))
        cells = [f"{by[c]['tokens_per_s']:.1f}" if c in by else "—" for c in ctx]
        pp, ttft = first["prefill_tokens_per_s"], first["ttft_ms"]
        fills = [by[c].get("fill_tokens_per_s") if c in by else None for c in deep]
        out.append(f"| {_name(art)} | {rt} | {quant} | {th} | " + " | ".join(cells)
                   + f" | {pp if pp else '—'} | {f'{ttft:,.0f} ms' if ttft else '—'} |"
                   + "".join(f" {f:.1f} |" if f else " — |" for f in fills))
    ratios = doc["summary"].get("vs_llama_cpp", [])
    if ratios:
        rows: dict = {}
        for v in ratios:
            rows.setdefault((_name(v["artifact"]), v["llama_cpp"], v["threads"]), {})[v["context"]] = v
        out += ["", "Against llama.cpp in the same run, retnet-edge ÷ llama.cpp tok/s (> 1: retnet-edge is faster; same "
                "bits, threads and context):", "",
                "| retnet-edge | llama.cpp | threads | " + " | ".join(f"decode @{c}" for c in ctx)
                + " | prompt (512) | time to first token |" + "".join(f" prompt filling {c} |" for c in deep),
                "|---|---|---|" + "---|" * len(ctx) + "---|---|" + "---|" * len(deep)]
        for (art, q, th), by in rows.items():
            first = next(iter(by.values()))
            cells = [f"**{by[c]['decode_ratio']:.2f}x**" if c in by else "—" for c in ctx]
            pp, ttft = first["pp512_ratio"], first["ttft_ms"]
            fills = [by[c].get("fill_ratio") if c in by else None for c in deep]
            out.append(f"| {art} | {q} | {th} | " + " | ".join(cells) + f" | {f'**{pp:.2f}x**' if pp else '—'} | "
                       + (f"{ttft[0]:,.0f} vs {ttft[1]:,.0f} ms |" if ttft[0] and ttft[1] else "— |")
                       + "".join(f" **{f:.2f}x** |" if f else " — |" for f in fills))
    return out


def prompt_weights(doc: dict) -> list[str]:
    """int4 artifacts' prompts on int8 weights derived at load against their stored int4 weights, same process."""
    rows = [(art, th, next(iter(by.values()))) for (art, _, _, th), by in _groups(doc).items()
            if next(iter(by.values())).get("stored_prompt")]
    if not rows:
        return []
    out = ["", "int4 prompts, int8 weights derived at load (the default) against the stored int4 weights "
           "(`--prompt-weights stored`), in the same process:", "",
           "| subject | threads | prompt tok/s (512), derived | stored | ratio | opening the prompt graph, derived | stored |",
           "|---|---|---|---|---|---|---|"]
    for art, th, r in rows:
        st = r["stored_prompt"]
        out.append(f"| {_name(art)} | {th} | {r['prefill_tokens_per_s']} | {st['prefill_tokens_per_s']} | "
                   f"**{r['prefill_tokens_per_s'] / st['prefill_tokens_per_s']:.2f}x** | {r['prompt_open_s']:.2f} s | "
                   f"{st['prompt_open_s']:.2f} s |")
    return out


def explanation(doc: dict) -> list[str]:
    out = ["| subject | runtime | bits | thr | context | ms/token (median) | p90 | MB read/token | GB/s | of roof "
           "| RSS MiB | state / KV MiB |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in doc["results"]:
        rss = "—" if r["rss_mb"] is None else f"{r['rss_mb']:.0f}"
        out.append(f"| {_name(r['artifact'])} | {r['runtime']} | {r['quant']} | {r['threads']} | {r['context']} | "
                   f"{r['ms_per_token_median']:.2f} | {r['ms_per_token_p90']:.2f} | {r['bytes_per_token'] / 1e6:.1f} | "
                   f"{r['effective_gb_per_s']:.2f} | {r['roof_fraction']:.0%} | "
                   f"{rss} | "
                   f"{r['state_bytes'] / 2**20:.1f} |")
    flat = doc["summary"]["flatness"]
    if flat:
        out += ["", "Flatness: " + "; ".join(f"{_name(f['artifact'])} ({f['threads']} thr) x{f['latency_ratio']} from "
                                            f"{f['contexts'][0]} to {f['contexts'][1]}" for f in flat) + "."]
    return out


def _machine(doc: dict) -> str:
    m = doc["machine"]
    load = (doc.get("load_average") or doc.get("load_average_before") or m.get("load_average")
            or m.get("loadavg_at_start") or ["?"])
    flags = ", ".join(m["flags"]) or "none listed" if "flags" in m else "not recorded"
    return f"{m['cpu']} (flags {flags}, {m.get('cores', '?')} cores; load average {float(load[0]):.1f})"


def task_section(results: Path) -> list[str]:
    """`eval --tasks demo-mc` per subject (benchmarks/task_accuracy.py)."""
    out = []
    for path in sorted(results.glob("task_accuracy_*.json")):
        doc = json.loads(path.read_text())
        out += [f"### {doc['task']} on `{doc['model']}` — `benchmarks/results/{path.name}`", "",
                f"{_machine(doc)}, {doc['threads']} thread. Accuracy of every artifact, items/s with shared "
                "contexts, the speedup over scoring each choice from scratch, and whether lm-eval's own command "
                "line gave the same accuracy.", "",
                "| subject | acc | vs eager fp32 (points) | items/s | shared vs scratch | lm_eval CLI same |",
                "|---|---|---|---|---|---|"]
        for name, r in doc["subjects"].items():
            sp = r.get("vs_scratch", {}).get("speedup")
            same = r.get("lm_eval_cli", {}).get("same_accuracy")
            out.append(f"| {name} | {100 * r['acc']:.1f} ± {100 * r['acc_stderr']:.1f} | "
                       f"{r.get('acc_minus_eager_fp32_points', 0):+.2f} | {r.get('items_per_s', 0):.2f} | "
                       f"{f'{sp:.2f}x' if sp else '—'} | {'yes' if same else '—' if same is None else 'NO'} |")
        out.append("")
    return out


def sessions_section(results: Path) -> list[str]:
    """Restoring a prompt's state vs reading the prompt again (benchmarks/sessions.py)."""
    path = results / "sessions_demo.json"
    if not path.is_file():
        return []
    doc = json.loads(path.read_text())
    out = [f"### Sessions — `benchmarks/results/{path.name}`", "",
           f"{_machine(doc)}; {doc['made_with']}, {doc['threads']} thread. A prompt's state "
           f"({doc['restore']['state_bytes'] / 2**20:.2f} MiB at any length) restored from memory or disk "
           "instead of the prompt read again:", "",
           "| prompt tokens | read again | restored (memory) | restored (disk) |", "|---|---|---|---|"]
    for n, r in doc["restore"]["prefixes"].items():
        out.append(f"| {int(n):,} | {r['reprefill_ms']:,.0f} ms | {r['restore_ms_median']:.3f} ms | "
                   f"{r['disk_restore_ms_median']:.2f} ms |")
    return out + [""]


def int4_section(results: Path) -> list[str]:
    """int4 rounding methods against fp32 (benchmarks/int4_methods.py)."""
    out = []
    for path in sorted(results.glob("int4_methods_*.json")):
        doc = json.loads(path.read_text())
        out += [f"### int4 methods on `{Path(doc['model']).name}` — `benchmarks/results/{path.name}`", "",
                f"{_machine(doc)}; {doc['rows'][0]['tokens']:,} held-out tokens against eager fp32 "
                f"(docs/quantization.md reads them):", "",
                "| target | group | method | MiB | KL | KL / rtn's | top-1 | Δppl | export s | decode ms |",
                "|---|---|---|---|---|---|---|---|---|---|"]
        rtn = {(r["target"], r["group_size"]): r["kl_mean"] for r in doc["rows"] if r["method"] == "rtn"}
        for r in doc["rows"]:
            base = rtn.get((r["target"], r["group_size"]))
            ratio = f"{r['kl_mean'] / base:.3f}" if base else "—"
            out.append(f"| {r['target']} | {r['group_size']} | {r['method']} | {r['bytes'] / 2**20:.2f} | "
                       f"{r['kl_mean']:.5f} | {ratio} | {r['top1']:.4f} | {r['delta_ppl_pct']:+.2f} % | "
                       f"{r['export_seconds']:.0f} | {r['decode_ms_per_token']:.2f} |")
        out.append("")
    return out


def auto_section(results: Path) -> list[str]:
    """`--quant auto` against `--quant int8` (benchmarks/int4_methods.py --auto)."""
    out = []
    for path in sorted(results.glob("int4_auto_*.json")):
        doc = json.loads(path.read_text())
        out += [f"### `--quant auto` on `{Path(doc['model']).name}`, {doc['target']} — `benchmarks/results/{path.name}`",
                "", f"{_machine(doc)}; bounds as multiples of `--quant int8`'s eager KL "
                f"({doc['int8_kl_calibration']:.5f} on {doc['calibration']}); each artifact scored on "
                f"{doc['rows'][0]['tokens']:,} held-out tokens:", "",
                "| artifact | MiB | KL | top-1 | Δppl | int8 linears | embedding | measured mix KL |",
                "|---|---|---|---|---|---|---|---|"]
        for r in doc["rows"]:
            p = r.get("plan")
            name = f"auto, {r['max_kl_factor']} x" if p else f"--quant {r['scheme']}"
            mix = (f"{len(p['int8_modules']) + (p['lm_head'] == 'int8')} | {p['embedding']} | {p['auto_kl']:.5f}"
                   if p else "all | fp32 | —")
            out.append(f"| {name} | {r['bytes'] / 2**20:.2f} | {r['kl_mean']:.5f} | {r['top1']:.4f} | "
                       f"{r['delta_ppl_pct']:+.2f} % | {mix} |")
        out.append("")
    return out


def page(runs: list[tuple[Path, dict]]) -> str:
    out = ["# Benchmark results", "",
           "The latest `retnet-edge bench` run of each suite per machine, rendered from its JSON by `python benchmarks/results_md.py`"
           " (`bash benchmarks/run_bench.sh` measures and renders; earlier runs live in git history). Figures from "
           "different machines are never compared. Subjects with random weights (`small`) are for speed and memory "
           "only; llama.cpp runs a same-shape Llama GGUF (d_model, layers, FFN, vocabulary; head dim 64) quantized "
           "by its own quantizer.", ""]
    if not runs:
        out.append("No bench document with a `created` stamp yet.")
    for path, doc in runs:
        c = doc["config"]
        out += [f"## {doc['machine']['cpu']} — `benchmarks/results/{path.name}`", "", machine_line(doc), "",
                f"Settings: contexts {c['contexts']}, {c['tokens']} timed tokens x {c['repeat']} repetitions per "
                f"context, threads {c['threads']}, baselines {', '.join(c.get('baselines', [])) or 'none'}.", "",
                *headline(doc), *prompt_weights(doc), "", "What explains it:", "", *explanation(doc), ""]
    out += ["## Other measurements (each names its machine)", "", *task_section(RESULTS), *sessions_section(RESULTS),
            *int4_section(RESULTS), *auto_section(RESULTS)]
    return "\n".join(out).rstrip() + "\n"


def readme_block(runs: list[tuple[Path, dict]]) -> str:
    main = main_run(runs)
    if main is None:
        return f"{BEGIN}\nNo bench run recorded yet.\n{END}"
    path, doc = main
    return "\n".join([BEGIN, f"Measured by `retnet-edge bench` (`benchmarks/results/{path.name}`) on "
                      + machine_line(doc), "", *headline(doc), END])


def with_block(readme: str, block: str) -> str:
    if BEGIN not in readme or END not in readme:
        raise SystemExit(f"README.md lacks the {BEGIN!r} ... {END!r} markers")
    head, rest = readme.split(BEGIN, 1)
    return head + block + rest.split(END, 1)[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 when RESULTS.md or the README block is stale")
    a = ap.parse_args()
    runs = current_runs()
    want = {PAGE: page(runs), README: with_block(README.read_text(), readme_block(runs))}
    if a.check:
        stale = [p.name for p, text in want.items() if p.read_text() != text]
        if stale:
            print(f"stale: {', '.join(stale)} (run python benchmarks/results_md.py)", file=sys.stderr)
            return 1
        return 0
    for p, text in want.items():
        tmp = p.with_name(p.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(p)
    print(f"wrote {PAGE.relative_to(ROOT)} and the README block ({len(runs)} bench run(s))", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
