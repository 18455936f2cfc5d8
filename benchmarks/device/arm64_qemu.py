"""The ExecuTorch programs on ARM: cross-build the parity harness for linux-aarch64, run it under qemu, and
compare with the x86 build — XNNPACK's arm64 kernels are different code from its x86 ones.

    python benchmarks/device/arm64_qemu.py                       # the demo .pte at fp32, 8da8w, 8da4w
    python benchmarks/device/arm64_qemu.py DIR [DIR ...] --out results.json

Needs Debian's `g++-aarch64-linux-gnu` and `qemu-user` (`apt-get install g++-aarch64-linux-gnu qemu-user`);
the executorch 1.5.1 manylinux aarch64 wheel is fetched from the package index once (it ships the same
`lib/*.so` as the x86 wheel). The device harness `retnet_bench.cpp` is cross-built too and run for a few
steps on each program (it must load and step it on aarch64). Both builds run `retnet_parity.cpp`: the prompt token by token, then greedy
tokens, every step's logits written out. Verdict per program: the same greedy tokens, and the logits
within the export gate's limits of the program's quant mode (max rel / top-1 / KL, x86 as reference).
Timing under emulation says nothing about a phone: it is recorded only as `emulated_ms_per_token`.
Exit 0: every program agrees; 1: one does not; 77: the cross tools are missing (the reason on stderr).
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
ARM = HERE / "build-arm64"
HARNESS_SOURCE = ROOT / "retnet_edge" / "bench" / "retnet_bench.cpp"  # package data: `bench --runtime cpp` builds it too
SYSROOT = Path("/usr/aarch64-linux-gnu")
ET_VERSION = "1.5.1"
LIBS = ["-lexecutorch", "-lexecutorch_backend_xnnpack", "-lexecutorch_kernels_optimized",
        "-lexecutorch_kernels_quantized", "-lexecutorch_threadpool"]
PROMPT = "And God said"
NEW_TOKENS = 24


def missing_tools() -> str | None:
    for tool, pkg in (("aarch64-linux-gnu-g++", "g++-aarch64-linux-gnu"), ("qemu-aarch64", "qemu-user"),
                      ("g++", "g++")):
        if shutil.which(tool) is None:
            return f"{tool} not found (apt-get install {pkg})"
    if not (SYSROOT / "lib").is_dir():
        return f"no aarch64 sysroot at {SYSROOT} (apt-get install g++-aarch64-linux-gnu)"
    return None


def arm_wheel_dir() -> Path:
    """The aarch64 executorch wheel, unpacked (downloaded once from the package index)."""
    unpacked = ARM / "wheel"
    if (unpacked / "executorch" / "lib" / "libexecutorch.so").is_file():
        return unpacked / "executorch"
    ARM.mkdir(parents=True, exist_ok=True)
    py = f"{sys.version_info.major}{sys.version_info.minor}"
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", f"executorch=={ET_VERSION}", "--no-deps",
                    "--only-binary=:all:", "--platform", "manylinux_2_28_aarch64", "--python-version", py,
                    "-d", str(ARM)], check=True)
    wheel = next(ARM.glob(f"executorch-{ET_VERSION}-*aarch64.whl"))
    with zipfile.ZipFile(wheel) as z:
        z.extractall(unpacked)
    return unpacked / "executorch"


def build(compiler: str, et: Path, out: Path, source: Path = HERE / "retnet_parity.cpp") -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([compiler, "-std=c++17", "-O2", str(source), "-o", str(out), "-DET_USE_THREADPOOL=1",
                    f"-I{et / 'include'}", f"-I{et / 'include/executorch/runtime/core/portable_type/c10'}",
                    "-DC10_USING_CUSTOM_GENERATED_MACROS", f"-L{et / 'lib'}", f"-Wl,-rpath,{et / 'lib'}",
                    "-Wl,--no-as-needed", *LIBS, "-Wl,--as-needed", "-lpthread", "-w"], check=True)
    return out


def run(cmd: list[str], pte: Path, ids: list[int], logits_file: Path) -> tuple[dict, np.ndarray, float]:
    t0 = time.perf_counter()
    res = subprocess.run([*cmd, str(pte), ",".join(map(str, ids)), str(NEW_TOKENS), str(logits_file)],
                         capture_output=True, text=True, timeout=900)
    seconds = time.perf_counter() - t0
    if res.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed on {pte}: {res.stderr.strip()[-400:]}")
    doc = json.loads(res.stdout.strip().splitlines()[-1])
    return doc, np.fromfile(logits_file, dtype=np.float32), seconds


def check_program(art: Path, x86: Path, arm: Path, work: Path) -> dict:
    sys.path.insert(0, str(ROOT))
    from retnet_edge.base.tokenizer import load_tokenizer
    from retnet_edge.contract.manifest import read_manifest
    from retnet_edge.contract.quant import QuantConfig
    from retnet_edge.exporters.validate import compare

    m = read_manifest(art)
    vocab = m["config"]["vocab_size"]
    tok = m.get("tokenizer")
    if tok:
        t = load_tokenizer(art / tok)
        ids = ([t.bos_id] if t.bos_id is not None else []) + t.encode(PROMPT)
    else:
        ids = [1 + (7 * i) % (vocab - 1) for i in range(8)]
    qc = QuantConfig(**{k: m["quant"][k] for k in ("scheme", "group_size", "lm_head", "embedding")})
    tol = qc.tolerance
    ref_doc, ref, _ = run([str(x86)], art / "model.pte", ids, work / "x86.bin")
    arm_doc, got, seconds = run(["qemu-aarch64", "-L", str(SYSROOT), str(arm)], art / "model.pte", ids,
                                work / "arm.bin")
    ref, got = ref.reshape(-1, vocab), got.reshape(-1, vocab)
    same = ref_doc["tokens"] == arm_doc["tokens"]
    # rows after the first different greedy token were fed different inputs: compare up to there
    first = next((i for i, (a, b) in enumerate(zip(ref_doc["tokens"], arm_doc["tokens"])) if a != b), None)
    rows = len(ids) + (first if first is not None else NEW_TOKENS)
    c = compare("arm64 vs x86", ref[:rows], got[:rows])  # the export gate's metrics, x86 as reference
    metrics = {"max_rel": c.max_rel, "top1": c.top1, "kl": c.kl}
    within = (metrics["top1"] >= tol.min_top1 and metrics["kl"] <= tol.max_kl
              and (tol.max_rel is None or metrics["max_rel"] <= max(tol.max_rel, 1e-4)))
    bench = subprocess.run(["qemu-aarch64", "-L", str(SYSROOT), str(arm.parent / "retnet_bench"),
                            str(art / "model.pte"), "8", "1", "1"], capture_output=True, text=True, timeout=900)
    harness = json.loads(bench.stdout.strip().splitlines()[-1]) if bench.returncode == 0 else {"error": bench.stderr[-300:]}
    return {"harness_arm64_emulated": harness,
            "artifact": str(art.relative_to(ROOT)) if art.is_relative_to(ROOT) else str(art), "quant": qc.scheme.value, "prompt_tokens": len(ids), "new_tokens": NEW_TOKENS,
            "tokens_x86": ref_doc["tokens"], "tokens_arm64": arm_doc["tokens"], "same_greedy_tokens": same,
            "logits_arm64_vs_x86": metrics, "rows_compared": rows, "within_gate": within,
            "passed": same or within,
            "emulated_ms_per_token": round(1e3 * seconds / (len(ids) + NEW_TOKENS), 1)}


def demo_programs() -> list[Path]:
    """The demo model's .pte at fp32, int8 (8da8w) and int4 (8da4w), exported once under build-arm64/."""
    out = []
    for q in ("fp32", "int8", "int4"):
        d = ARM / f"demo-executorch-{q}"
        if not (d / "manifest.json").is_file():
            subprocess.run([sys.executable, "-m", "retnet_edge", "export", "demo", "--target", "executorch",
                            "--quant", q, "-o", str(d), "--force"], check=True)
        out.append(d)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("artifacts", nargs="*", type=Path, help="ExecuTorch artifact dirs (runner flavour)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "arm64_qemu.json")
    args = ap.parse_args()
    reason = missing_tools()
    if reason:
        print(f"skip: {reason}", file=sys.stderr)
        return 77
    import executorch

    x86 = build("g++", Path(list(executorch.__path__)[0]), HERE / "build" / "retnet_parity")
    arm = build("aarch64-linux-gnu-g++", arm_wheel_dir(), ARM / "retnet_parity")
    build("aarch64-linux-gnu-g++", arm_wheel_dir(), ARM / "retnet_bench", HARNESS_SOURCE)  # the device harness
    work = ARM / "work"
    work.mkdir(parents=True, exist_ok=True)
    results = []
    for art in args.artifacts or demo_programs():
        r = check_program(art, x86, arm, work)
        results.append(r)
        print(f"{art}: {'PASS' if r['passed'] else 'FAIL'} ({r['quant']}) same greedy tokens {r['same_greedy_tokens']}, "
              f"logits max rel {r['logits_arm64_vs_x86']['max_rel']:.2e}, top-1 {r['logits_arm64_vs_x86']['top1']:.3f}, "
              f"KL {r['logits_arm64_vs_x86']['kl']:.2e}", file=sys.stderr)
    doc = {"tool": "benchmarks/device/arm64_qemu.py", "executorch": ET_VERSION,
           "x86": "g++ build against the x86-64 pip wheel, run natively",
           "arm64": "aarch64-linux-gnu-g++ build against the manylinux aarch64 pip wheel, run under qemu-aarch64 "
                    "(user mode); timing under emulation is not a benchmark",
           "qemu": subprocess.run(["qemu-aarch64", "--version"], capture_output=True, text=True).stdout.splitlines()[0],
           "results": results, "passed": all(r["passed"] for r in results)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0 if doc["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
