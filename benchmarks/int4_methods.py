"""int4 rounding methods (`--int4-method`) compared on a trained model, both targets (issue 28).

For each target x group size x method: export through the product path (streamed, gated), then score the
artifact against eager fp32 on the model's held-out text (>= 16k tokens, windows of 512 from a fresh state):
mean KL(fp32 || artifact), top-1 agreement, perplexity and its change; plus the artifact's bytes, the
export's seconds and decode ms/token (1 thread). ONNX hqq stores a fp32 zero point per group beside the
scale, so it is also exported at twice the group size, where its weights take rtn's bytes ("same size").

    python benchmarks/int4_methods.py --model demo --out benchmarks/results/int4_methods_demo.json
    python benchmarks/int4_methods.py --model .data/deep --out benchmarks/results/int4_methods_deep.json

`--auto FILE|heldout` instead measures `--quant auto` (issue 28 item 3) on the first target: the all-int8 artifact,
then auto at --max-kl = 1, 2 and 4 x the all-int8 eager KL on calibration text FILE (one sensitivity
measurement for the three; gptq's integers, int8 and int4, from the held-out text's end as the export
takes them), each artifact scored as above:

    python benchmarks/int4_methods.py --model demo --targets onnx --methods gptq --groups 32 --auto heldout \
        --out benchmarks/results/int4_auto_demo.json
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import subprocess
import tempfile
import time
from pathlib import Path


def cpu_name() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), "?")


def machine() -> dict:
    """The CPU, its flags and cores (named with every figure), and the platform."""
    from retnet_edge.bench.machine import machine_facts

    return {**machine_facts(), "cpu": cpu_name(), "platform": platform.platform()}


def decode_ms(path: Path, tokens: int = 32, repeat: int = 3) -> float:
    """Best-of-`repeat` mean ms per decoded token at context 16, 1 thread."""
    from retnet_edge.runtimes import load_runner

    runner = load_runner(path, threads=1)
    best = float("inf")
    for _ in range(repeat):
        runner.reset()
        runner.prefill(list(range(1, 17)), all_logits=False)
        t = time.perf_counter()
        for i in range(tokens):
            runner.step(17 + i)
        best = min(best, (time.perf_counter() - t) / tokens * 1e3)
    return best


def run_one(model: str, target: str, group: int, method: str, work: Path, reference, tok, text: str,
            max_tokens: int, log, qc=None, tag: str = "", auto: bool = False, calibration: str | None = None) -> dict:
    """One artifact through the product path (auto: `--quant auto`, measured inside the export), scored."""
    from retnet_edge.contract.quant import QuantConfig
    from retnet_edge.contract.request import ExportRequest
    from retnet_edge.exporters import export_artifact
    from retnet_edge.runtimes import load_runner
    from retnet_edge.runtimes.scoring import compare_text

    qc = qc or QuantConfig("int4", group_size=group, int4_method=method)
    out = work / f"{target}-g{group}-{method}{tag}"
    t = time.perf_counter()
    art = export_artifact(ExportRequest(model, target, qc, out, steps=64, calibration=calibration, auto=auto))
    qc = art.manifest.quant_config()
    seconds = time.perf_counter() - t
    worst = art.manifest.worst_check()
    q = compare_text(load_runner(out, threads=2), reference, tok, text, window=512, max_tokens=max_tokens)
    row = {"target": target, "group_size": group, "method": method, "scheme": qc.scheme.value,
           "bytes": art.manifest.size_bytes, "export_seconds": round(seconds, 1), "gate_passed": art.manifest.validated,
           "gate_worst_kl": worst["kl"], "gate_rounding_kl": worst.get("rounding_kl"),
           "fallbacks": list(art.manifest.quant_fallbacks), "quant_layers": list(art.manifest.quant_layers),
           "decode_ms_per_token": round(decode_ms(out), 3),
           **{k: q[k] for k in ("tokens", "kl_mean", "kl_p99", "top1", "perplexity", "reference_perplexity",
                                "delta_ppl", "delta_ppl_pct")}}
    log(f"{target} g{group} {method}{tag}: KL {row['kl_mean']:.5f} top-1 {row['top1']:.4f} "
        f"Δppl {row['delta_ppl_pct']:+.2f} % "
        f"{row['bytes'] / 2**20:.2f} MiB export {seconds:.0f} s decode {row['decode_ms_per_token']:.2f} ms")
    if auto:  # the measured mix, as the manifest records it
        row["plan"] = {"max_kl": qc.max_kl, "auto_kl": qc.auto_kl, "embedding": qc.embedding, "lm_head": qc.lm_head,
                       "int8_modules": [m for m in qc.int8_modules.split(",") if m], "calibration": qc.calibration}
    return row


def run_auto(model: str, target: str, group: int, method: str, calibration: str | None, work: Path, reference,
             tok, text: str, max_tokens: int, log) -> dict:
    """all-int8, then `export --quant auto` at --max-kl 1, 2, 4 x `--quant int8`'s eager KL on the text the
    export measures on (each export measures its own mix: what the CLI does)."""
    from retnet_edge.base.paths import resolve_path
    from retnet_edge.checkpoints.streaming import open_weights
    from retnet_edge.contract.quant import QuantConfig
    from retnet_edge.exporters import sensitivity

    weights = open_weights(resolve_path(model))
    qc = QuantConfig("int4", group_size=group, int4_method=method)
    rows = [run_one(model, target, group, method, work, reference, tok, text, max_tokens, log,
                    qc=QuantConfig("int8"), tag="-all-int8")]
    ids, source, _, gptq_source = sensitivity.measurement_ids(weights, tok, calibration, qc)
    int8_kl = sensitivity.int8_eager_kl(weights, target, qc, ids)
    for factor in (1, 2, 4):
        row = run_one(model, target, group, method, work, reference, tok, text, max_tokens, log,
                      qc=dataclasses.replace(qc, max_kl=factor * int8_kl), tag=f"-auto-x{factor}", auto=True,
                      calibration=calibration)
        rows.append({**row, "max_kl_factor": factor})
    return {"calibration": source, "gptq_calibration": gptq_source, "int8_kl_calibration": int8_kl, "rows": rows}


def summary(rows: list[dict]) -> list[dict]:
    """Each non-rtn row against rtn of the same target: at the same group size, and at the same bytes
    (±1 %) where a row of another group size has them."""
    out = []
    rtn = [r for r in rows if r["method"] == "rtn"]
    for r in rows:
        if r["method"] == "rtn":
            continue
        for base in rtn:
            same_group = base["group_size"] == r["group_size"]
            same_size = abs(r["bytes"] / base["bytes"] - 1) <= 0.01
            if base["target"] == r["target"] and (same_group or same_size):
                out.append({"target": r["target"], "method": r["method"], "group_size": r["group_size"],
                            "rtn_group_size": base["group_size"], "size_ratio": round(r["bytes"] / base["bytes"], 4),
                            "kl_ratio": round(r["kl_mean"] / base["kl_mean"], 3),
                            "export_time_ratio": round(r["export_seconds"] / base["export_seconds"], 2),
                            "decode_ratio": round(r["decode_ms_per_token"] / base["decode_ms_per_token"], 2)})
    return out


def main() -> None:
    import onnxruntime
    import torch
    import torchao

    from retnet_edge.app.cached_reference import CachedReference
    from retnet_edge.base.paths import resolve_path
    from retnet_edge.base.tokenizer import load_tokenizer
    from retnet_edge.contract import tokenizer_file
    from retnet_edge.runtimes import load_runner

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo")
    ap.add_argument("--out", required=True)
    ap.add_argument("--targets", default="onnx,executorch")
    ap.add_argument("--groups", default="32,128")
    ap.add_argument("--methods", default="rtn,hqq,gptq")
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--auto", metavar="CALIBRATION", default=None,
                    help="measure --quant auto on the first target, calibrating on this text file ('heldout': the "
                         "model's held-out text, as the CLI takes it)")
    args = ap.parse_args()
    log = lambda s: print(s, flush=True)  # noqa: E731
    src = resolve_path(args.model)
    tok = load_tokenizer(tokenizer_file(src))
    text = (src / "heldout.txt").read_text(encoding="utf-8")
    reference = CachedReference(load_runner(src, threads=2))
    groups = [int(g) for g in args.groups.split(",")]
    if args.auto:
        target, method = args.targets.split(",")[0], args.methods.split(",")[0]
        t0, load = time.time(), Path("/proc/loadavg").read_text().split()[:3]
        with tempfile.TemporaryDirectory() as work:
            calibration = None if args.auto == "heldout" else args.auto
            doc = run_auto(args.model, target, groups[0], method, calibration, Path(work), reference, tok, text,
                           args.tokens, log)
        doc.update(benchmark="--quant auto (issue 28)", model=args.model, target=target, tokens=args.tokens,
                   machine={**machine(), "loadavg_at_start": load},
                   seconds=round(time.time() - t0))
        Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
        return
    plan = [(t, g, m) for t in args.targets.split(",") for g in groups for m in args.methods.split(",")]
    if "onnx" in args.targets and "hqq" in args.methods and 32 in groups:
        plan.append(("onnx", 64, "hqq"))  # hqq's weights at rtn g32's bytes (a fp32 zero point per group)
    rows, t0 = [], time.time()
    load = Path("/proc/loadavg").read_text().split()[:3]
    with tempfile.TemporaryDirectory() as work:
        for target, group, method in plan:
            rows.append(run_one(args.model, target, group, method, Path(work), reference, tok, text, args.tokens, log))
    doc = {"benchmark": "int4 methods (issue 28)", "model": args.model, "tokens": args.tokens,
           "text": str(src / "heldout.txt"), "machine": {**machine(), "loadavg_at_start": load},
           "versions": {"onnxruntime": onnxruntime.__version__, "torchao": torchao.__version__,
                        "torch": torch.__version__},
           "rows": rows, "summary": summary(rows), "seconds": round(time.time() - t0)}
    Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    for s in doc["summary"]:
        log(json.dumps(s))


if __name__ == "__main__":
    main()
