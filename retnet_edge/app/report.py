"""The export report for people: `report.md` (tables + plots) and the one-screen table on stdout.

Both are pure renderings of the report dict that `bundle.export_bundle` writes as report.json.
"""
from __future__ import annotations


def _mib(n: float | None) -> str:
    return "—" if n is None else f"{n / 2**20:,.2f}"


def _ms(a: dict, ctx: str) -> str:
    r = (a.get("bench") or {}).get("by_context", {}).get(ctx)
    return "—" if not r else f"{r['ms_per_token']:.2f}"


def _rss(a: dict) -> str:
    rows = (a.get("bench") or {}).get("by_context", {})
    vals = [r["rss_mb"] for r in rows.values() if r.get("rss_mb") is not None]
    return "—" if not vals else f"{max(vals):.0f}"


def _quality(a: dict) -> str:
    q = a.get("quality") or {}
    if "perplexity" in q:
        return f"ppl {q['perplexity']:.3f} ({q['delta_vs_fp32']:+.3f})" + (f", KL {q['kl']:.1e}" if "kl" in q else "")
    if "kl" in q:
        return f"KL {q['kl']:.1e}, top-1 {q['top1']:.3f}"
    return q.get("error", "—")[:40] if q else "—"


def _task(a: dict) -> str:
    t = (a.get("quality") or {}).get("task")
    return "—" if not t else f"{100 * t['acc']:.1f} ± {100 * t['acc_stderr']:.1f}"


def _parity(a: dict) -> str:
    p = a.get("parity")
    if not p:
        return "skipped"
    top1 = p["top1_confident"] if p.get("top1_confident") is not None else p["top1"]
    return f"top-1 {top1:.3f}, KL {p['kl']:.1e}"


def _weights(quant: dict | None) -> str:
    """How the artifact's weights are stored: `int4 hqq g32`, `int8`, `fp32` (from the request's QuantConfig)."""
    if not quant:
        return "—"
    if quant["scheme"] == "int4":
        mixed = len(quant["int8_modules"].split(",")) if quant.get("int8_modules") else 0
        return f"int4 {quant.get('int4_method', 'rtn')} g{quant['group_size']}" + (f" + {mixed} int8" if mixed else "")
    return quant["scheme"]


COLUMNS = ("artifact", "status", "weights", "MiB", "parity vs eager fp32", "quality", "demo-mc %", "ms/tok ctx 0",
           "ms/tok ctx 2048", "RSS MiB")


def _row(a: dict, quant: dict | None = None) -> tuple[str, ...]:
    if a["status"] != "ok":
        return (a["name"], "FAILED", _weights(quant), "—", "—", "—", "—", "—", "—", "—")
    return (a["name"], "ok", _weights(quant), _mib(a["bytes"]), _parity(a), _quality(a), _task(a), _ms(a, "0"),
            _ms(a, "2048"),
            _rss(a))


def _rows(report: dict) -> list[tuple[str, ...]]:
    quants = {r["name"]: r.get("quant") for r in report.get("requests", [])}
    return [_row(a, quants.get(a["name"])) for a in report["artifacts"]]


def _ref_quality(report: dict) -> str:
    q = report.get("quality_reference")
    if not q:
        return "no quality pass (no artifact was written)"
    if q["metric"] == "perplexity":
        return (f"fp32 eager perplexity {q['perplexity']:.3f} on {q['tokens']:,} held-out tokens (and KL / top-1 "
                "against it on the same tokens)")
    return f"KL / top-1 against eager fp32 on {q['tokens']} tokens the fp32 model sampled itself"


def render_table(report: dict) -> str:
    """Fits one screen: a row per artifact, then state vs KV cache and the failures."""
    rows = [COLUMNS] + _rows(report)
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    s = report["source"]
    kv = s["kv_cache_bytes_fp16"]
    lines += [f"quality: {_ref_quality(report)}",
              f"state per sequence: {_mib(s['state_bytes_per_sequence'])} MiB at any context; a same-shape "
              f"Transformer's fp16 KV cache: {_mib(kv['2048'])} MiB at 2048, {_mib(kv['32768'])} MiB at 32768",
              f"wrote {report['output']}/report.md ({report['seconds']:.0f} s)"]
    for a in report["artifacts"]:
        if a["status"] != "ok":
            lines.append(f"FAILED {a['name']}: {a['error']}")
    return "\n".join(lines)


def render_markdown(report: dict) -> str:
    s, c = report["source"], report["source"]["config"]
    out = ["# retnet-edge export report", "",
           f"Source `{s['path']}`: {s['parameters']:,} parameters, L={c['n_layers']} d_model={c['d_model']} "
           f"heads={c['n_heads']} value_dim={c['value_dim']} vocab={c['vocab_size']}. Made {report['created']} "
           f"on {report['machine']['platform']} in {report['seconds']:.0f} s.", "",
           "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    out += ["| " + " | ".join(row) + " |" for row in _rows(report)]
    kv = s["kv_cache_bytes_fp16"]
    out += ["", "## Memory per sequence", "",
            f"The recurrent state is {_mib(s['state_bytes_per_sequence'])} MiB (fp32) at every context length. "
            "A same-shape Transformer's fp16 KV cache: " +
            ", ".join(f"{_mib(v)} MiB at {int(k):,} tokens" for k, v in kv.items()) + ".", "",
            "## Parity and quality", "",
            "Parity: the export gate's worst check (teacher-forced step and prefill paths, batch 1 and 3) against "
            "eager PyTorch fp32 (top-1 where eager is confident); an artifact past its quant mode's tolerance is "
            "not written. "
            f"Quality: {_ref_quality(report)}. Weights: an int4 artifact names how its weights were rounded and its "
            "group size (`--int4-method`; docs/quantization.md has each method's measured quality).", ""]
    for a in report["artifacts"]:
        if a["status"] != "ok":
            out.append(f"- **{a['name']} failed**: {a['error']}")
        elif a.get("quant_fallbacks"):  # never silently: each module its method could not round as asked
            out.append(f"- {a['name']}: kept at int8 (input width not a multiple of the int4 group): "
                       f"{', '.join(a['quant_fallbacks'])}")
    layered = [a for a in report["artifacts"] if a.get("quant_layers")]
    if layered:  # which layers hurt, whatever the method: each int4 linear's output error
        out += ["", "## Worst int4 layers", "",
                "Relative output error of each int4 linear on calibration text (||X ΔWᵀ||² / ||X Wᵀ||²), the "
                "five largest per artifact, beside symmetric round-to-nearest's (max |w| / 7) on the same inputs: "
                "gptq's on its calibration text as it rounds, the other methods' from the weights the target "
                "wrote, on 2,048 tokens of held-out text (else the gate's validation text).", "",
                "| artifact | method | linear | error | rtn's error |", "|---|---|---|---|---|"]
        quants = {r["name"]: r.get("quant") or {} for r in report.get("requests", [])}
        for a in layered:
            method = quants.get(a["name"], {}).get("int4_method", "?")
            out += [f"| {a['name']} | {method} | {x['module']} | {x['error']:.2e} | {x['rtn_error']:.2e} |"
                    for x in a["quant_layers"]]
    bench = [a for a in report["artifacts"] if a.get("bench") and "by_context" in a["bench"]]
    if bench:
        out += ["", "## Latency and memory per token", "",
                "Decode, 1 thread, median of short runs after the state is filled to the context (`retnet-edge "
                "bench DIR/NAME` for the full benchmark with a Transformer-KV baseline and the read roof).", "",
                "| artifact | runtime | context | ms/token | tokens/s | RSS MiB | state MiB | of read roof |",
                "|---|---|---|---|---|---|---|---|"]
        for a in bench:
            for ctx, r in a["bench"]["by_context"].items():
                out.append(f"| {a['name']} | {a['bench']['runtime']} | {ctx} | {r['ms_per_token']:.3f} | "
                           f"{r['tokens_per_s']:.1f} | {r['rss_mb'] or 0:.0f} | {_mib(r['state_bytes'])} | "
                           f"{r['roof_fraction']:.0%} |")
    for p in report.get("plots", []):
        out += ["", f"![{p}]({p})"]
    out += ["", "Run an artifact: `retnet-edge generate DIR/NAME \"prompt\"`; re-check it: `retnet-edge verify DIR`.", ""]
    return "\n".join(out)
