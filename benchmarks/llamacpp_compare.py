"""llama.cpp on a same-shape Llama: the decode bandwidth retnet-edge's ONNX step is judged against (issue 11).

Runs in its own environment, because llama-cpp-python builds from its sdist (~7 min on 2 cores here) and
is not a dependency of retnet-edge:

    python3 -m venv /tmp/llvenv && /tmp/llvenv/bin/pip install llama-cpp-python gguf numpy
    /tmp/llvenv/bin/python benchmarks/llamacpp_compare.py -o benchmarks/results/llamacpp_small.json

It writes a random-weight Llama GGUF of the `small` preset's shape (d 1024, 12 layers, ffn 2816, vocab
32000, untied head: 216M parameters; the RetNet `small` has 270M because of its wider value/gate
projections), quantizes it to Q8_0 and Q4_0 with llama.cpp's own quantizer, and times single-token
decode (llama_decode of one token, logits for it) at a given context depth, like `retnet-edge bench`.
Effective bandwidth = bytes a token reads (every weight tensor except the token-embedding table, plus
the KV cache in use) x tokens per second.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

SHAPE = dict(vocab=32000, d=1024, layers=12, heads=16, ffn=2816, ctx=8192)


def write_gguf(path: Path, seed: int = 0) -> None:
    """A Llama GGUF (f16 weights, std 0.02) with a byte-fallback SentencePiece-style vocabulary."""
    import gguf

    s, rng = SHAPE, np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(s["ctx"])
    w.add_embedding_length(s["d"])
    w.add_block_count(s["layers"])
    w.add_feed_forward_length(s["ffn"])
    w.add_head_count(s["heads"])
    w.add_head_count_kv(s["heads"])
    w.add_rope_dimension_count(s["d"] // s["heads"])
    w.add_layer_norm_rms_eps(1e-6)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    tokens = [b"<unk>", b"<s>", b"</s>", *[f"<0x{i:02X}>".encode() for i in range(256)]]
    tokens += [f"t{i}".encode() for i in range(s["vocab"] - len(tokens))]
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * len(tokens))
    w.add_token_types([2, 3, 3, *[6] * 256, *[1] * (len(tokens) - 259)])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)

    def rand(*shape):
        return (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float16)

    d, f = s["d"], s["ffn"]
    w.add_tensor("token_embd.weight", rand(s["vocab"], d))
    for i in range(s["layers"]):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(d, np.float32))
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            w.add_tensor(f"blk.{i}.{name}.weight", rand(d, d))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(d, np.float32))
        w.add_tensor(f"blk.{i}.ffn_gate.weight", rand(f, d))
        w.add_tensor(f"blk.{i}.ffn_up.weight", rand(f, d))
        w.add_tensor(f"blk.{i}.ffn_down.weight", rand(d, f))
    w.add_tensor("output_norm.weight", np.ones(d, np.float32))
    w.add_tensor("output.weight", rand(s["vocab"], d))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def quantize(src: Path, dst: Path, ftype: int) -> None:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    if llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params) != 0:
        raise SystemExit(f"llama_model_quantize failed for {dst}")


def weight_bytes(path: Path) -> int:
    """Bytes of every tensor a decode step reads: all but the token-embedding table (one row is gathered)."""
    import gguf

    r = gguf.GGUFReader(str(path))
    return int(sum(t.n_bytes for t in r.tensors if t.name != "token_embd.weight"))


def decode_ms(path: Path, threads: int, context: int, tokens: int, repeat: int) -> list[float]:
    """Median ms per single-token decode, per repetition, after a prompt of `context` tokens."""
    import llama_cpp

    llm = llama_cpp.Llama(str(path), n_ctx=context + tokens + 8, n_threads=threads, n_threads_batch=threads,
                          n_batch=512, verbose=False, logits_all=False)
    rng = np.random.default_rng(0)
    out = []
    for _ in range(repeat):
        llm.reset()
        if context:
            llm.eval(rng.integers(300, SHAPE["vocab"], context).tolist())
        llm.eval([int(rng.integers(300, SHAPE["vocab"]))])  # warm-up token
        times = []
        for _ in range(tokens):
            tok = int(rng.integers(300, SHAPE["vocab"]))
            t = time.perf_counter()
            llm.eval([tok])
            times.append((time.perf_counter() - t) * 1e3)
        out.append(statistics.median(times))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--output", required=True)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--contexts", default="0,4096")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--work-dir", default=None, help="keep the GGUF files here (default: a temp dir)")
    a = ap.parse_args()
    import llama_cpp

    work = Path(a.work_dir or tempfile.mkdtemp(prefix="llamacpp-"))
    work.mkdir(parents=True, exist_ok=True)
    f16 = work / "llama-small-f16.gguf"
    if not f16.exists():
        write_gguf(f16)
    records = []
    for quant, ftype in (("Q8_0", llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0), ("Q4_0", llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0)):
        q = work / f"llama-small-{quant}.gguf"
        if not q.exists():
            quantize(f16, q, ftype)
        wb = weight_bytes(q)
        for threads in map(int, a.threads.split(",")):
            for context in map(int, a.contexts.split(",")):
                meds = decode_ms(q, threads, context, a.tokens, a.repeat)
                ms = statistics.median(meds)
                kv = 2 * SHAPE["layers"] * context * SHAPE["d"] * 2  # f16 K and V
                rec = {"quant": quant, "threads": threads, "context": context, "ms_per_token_median": round(ms, 3),
                       "tok_per_s": round(1e3 / ms, 1), "weight_bytes_per_token": wb, "kv_bytes": kv,
                       "effective_gb_s": round((wb + kv) / ms / 1e6, 2), "repeat_medians_ms": [round(m, 3) for m in meds]}
                records.append(rec)
                print(json.dumps(rec), flush=True)
    Path(a.output).write_text(json.dumps({
        "tool": "benchmarks/llamacpp_compare.py", "llama_cpp_python": llama_cpp.__version__,
        "system_info": llama_cpp.llama_print_system_info().decode().strip(), "machine": platform.processor() or
        platform.machine(), "shape": SHAPE, "records": records}, indent=2) + "\n")


if __name__ == "__main__":
    main()
