"""onnxruntime-genai's generator vs retnet-edge's runner on the same `--flavor genai` artifact (issue 15).

    python benchmarks/genai_compare.py ARTIFACT [--standard STANDARD_ARTIFACT] -o out.json

Greedy decoding from a random 512-token prompt at 1 thread (genai_config's intra_op_num_threads is set to
1 in a hard-linked copy of the artifact, so the artifact itself is untouched): time to consume the prompt,
then tokens per second over `--tokens` generated tokens (genai: generate_next_token, which includes its
greedy search; ours: Runner.step + argmax). Rounds alternate the two so machine drift hits both alike.
With --standard, retnet-edge's runner on the standard flavour of the same model joins (its step graph).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

PROMPT = 512


def _genai_copy(artifact: Path, threads: int) -> Path:
    """A hard-linked copy of the artifact with genai's thread count set (weights are not copied)."""
    d = Path(tempfile.mkdtemp(prefix="genai-bench-")) / "art"
    d.mkdir()
    for f in artifact.iterdir():
        if f.name != "genai_config.json":
            os.link(f, d / f.name)
    cfg = json.loads((artifact / "genai_config.json").read_text())
    cfg["model"]["decoder"]["session_options"]["intra_op_num_threads"] = threads
    (d / "genai_config.json").write_text(json.dumps(cfg))
    return d


def run_genai(path: Path, prompt: list[int], tokens: int) -> tuple[float, float]:
    import onnxruntime_genai as og

    model = og.Model(str(path))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt) + tokens + 1, do_sample=False)
    gen = og.Generator(model, params)
    t = time.perf_counter()
    gen.append_tokens(np.array(prompt, dtype=np.int32))
    prefill = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(tokens):
        gen.generate_next_token()
    return prefill, tokens / (time.perf_counter() - t)


def run_ours(path: Path, prompt: list[int], tokens: int) -> tuple[float, float]:
    from retnet_edge.runtimes import load_runner

    r = load_runner(path, threads=1)
    t = time.perf_counter()
    logits = r.prefill(prompt, all_logits=False)[-1]
    prefill = time.perf_counter() - t
    r.release_prefill()
    t = time.perf_counter()
    for _ in range(tokens):
        logits = r.step(int(np.argmax(logits)))
    return prefill, tokens / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifact", type=Path)
    ap.add_argument("--standard", type=Path, help="the standard-flavour export of the same model")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("-o", "--output", type=Path)
    a = ap.parse_args()
    import onnxruntime_genai as og

    cfg = json.loads((a.artifact / "manifest.json").read_text())["config"]
    prompt = np.random.default_rng(0).integers(3, cfg["vocab_size"], PROMPT).tolist()
    copy = _genai_copy(a.artifact, 1)
    runs = {"onnxruntime-genai generator": lambda: run_genai(copy, prompt, a.tokens),
            "retnet-edge runner (genai flavour)": lambda: run_ours(a.artifact, prompt, a.tokens)}
    if a.standard:
        runs["retnet-edge runner (standard flavour)"] = lambda: run_ours(a.standard, prompt, a.tokens)
    results: dict[str, list] = {k: [] for k in runs}
    try:
        for _ in range(a.rounds):
            for name, fn in runs.items():
                results[name].append(fn())
    finally:
        shutil.rmtree(copy.parent, ignore_errors=True)
    table = {}
    for name, rs in results.items():
        table[name] = {"prompt_ms": round(statistics.median(r[0] for r in rs) * 1e3, 1),
                       "tok_per_s": round(statistics.median(r[1] for r in rs), 2),
                       "rounds_tok_per_s": [round(r[1], 2) for r in rs]}
        print(f"{name:40s} prompt {PROMPT} tokens {table[name]['prompt_ms']:8.1f} ms   decode "
              f"{table[name]['tok_per_s']:6.2f} tok/s  {table[name]['rounds_tok_per_s']}", flush=True)
    if a.output:
        a.output.write_text(json.dumps({"tool": "benchmarks/genai_compare.py", "artifact": str(a.artifact),
                                        "onnxruntime_genai": og.__version__, "threads": 1, "prompt": PROMPT,
                                        "tokens": a.tokens, "results": table}, indent=2) + "\n")


if __name__ == "__main__":
    main()
