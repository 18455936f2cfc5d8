"""llama.cpp on a same-shape Llama: the baseline a user compares retnet-edge with (`bench --baseline llama.cpp`).

For a RetNet config the baseline is a Llama GGUF of the same d_model, layers, FFN width and vocabulary,
head dim 64 (random weights: speed and memory only), written with the `gguf` package at f16 and quantized
by llama.cpp's own quantizer to the matching bits (`LLAMA_QUANTS`: Q8_0 for int8; Q4_0 and Q4_K_M for int4;
F16 for fp32). It is timed in its own process (`python -m retnet_edge.bench.llamacpp SPEC`) through
llama-cpp-python, by llama-bench's method and the same rules as `measure.py`:

- pp512 / time to first token: a 512-token prompt decoded as one batch into an empty cache, logits for its
  last token (best of two; the first also warms the graph);
- tg at each context depth: the cache filled to the depth from empty (in batches of 512: timed, the prompt
  rate at that depth, llama-bench's pp at depth), then each repetition rewinds to it
  (`n_tokens`; llama-cpp-python's `eval` drops the cache cells past it), one warm-up token and `tokens`
  single-token decodes with logits.

The result has `measure.measure`'s shape, so `suite.flatten` turns it into the same records; the KV cache in
use (f16 K and V) is its `state_bytes_now`.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ..core.config import RetNetConfig
from ..errors import MissingExtraError
from .measure import PROMPT, fill_from_empty, fill_rate, memory_delta, memory_mb, prompt_seconds

HEAD_DIM = 64
LLAMA_QUANTS: dict[str, tuple[str, ...]] = {"int8": ("Q8_0",), "int4": ("Q4_0", "Q4_K_M"), "fp32": ("F16",)}
FIRST_ID = 259  # <unk> <s> </s> and 256 byte tokens come first; timed tokens are ordinary pieces


@dataclass(frozen=True)
class LlamaShape:
    """The Llama that stands beside a RetNet config: same width, depth, FFN and vocabulary; head dim 64."""

    vocab: int
    d_model: int
    layers: int
    heads: int
    ffn: int
    ctx: int

    @classmethod
    def of(cls, cfg: RetNetConfig, ctx: int) -> "LlamaShape":
        return cls(cfg.vocab_size, cfg.d_model, cfg.n_layers, max(1, cfg.d_model // HEAD_DIM), cfg.ffn_dim, ctx)

    def kv_bytes(self, positions: int) -> int:
        """f16 K and V of every layer at `positions` cached tokens (llama.cpp's default cache type)."""
        return 2 * self.layers * positions * self.heads * HEAD_DIM * 2

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


def require() -> None:
    """One line (exit 1) when the `llamacpp` extra is missing, before any work."""
    import importlib.util

    missing = [m for m in ("llama_cpp", "gguf") if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingExtraError(f"--baseline llama.cpp needs {' and '.join(missing)} (llama-cpp-python builds "
                                "llama.cpp from its source for this CPU: ~10-15 min on 2 cores)",
                                hint="pip install 'retnet-edge[llamacpp]'")


def write_gguf(shape: LlamaShape, path: Path, seed: int = 0) -> None:
    """A Llama GGUF at f16 (weights std 0.02, norms 1) with a byte-fallback SentencePiece-style vocabulary."""
    import gguf

    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(shape.ctx)
    w.add_embedding_length(shape.d_model)
    w.add_block_count(shape.layers)
    w.add_feed_forward_length(shape.ffn)
    w.add_head_count(shape.heads)
    w.add_head_count_kv(shape.heads)
    w.add_key_length(HEAD_DIM)  # heads x 64 may differ from d_model (a d_model that is not a multiple of 64)
    w.add_value_length(HEAD_DIM)
    w.add_rope_dimension_count(HEAD_DIM)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    tokens = [b"<unk>", b"<s>", b"</s>", *[f"<0x{i:02X}>".encode() for i in range(256)]]
    tokens += [f"t{i}".encode() for i in range(shape.vocab - len(tokens))]
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * len(tokens))
    w.add_token_types([2, 3, 3, *[6] * 256, *[1] * (len(tokens) - FIRST_ID)])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)

    def rand(*dims: int) -> np.ndarray:
        return (rng.standard_normal(dims, dtype=np.float32) * 0.02).astype(np.float16)

    d, f, hd = shape.d_model, shape.ffn, shape.heads * HEAD_DIM
    w.add_tensor("token_embd.weight", rand(shape.vocab, d))
    for i in range(shape.layers):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(d, np.float32))
        for name, dims in (("attn_q", (hd, d)), ("attn_k", (hd, d)), ("attn_v", (hd, d)), ("attn_output", (d, hd))):
            w.add_tensor(f"blk.{i}.{name}.weight", rand(*dims))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(d, np.float32))
        w.add_tensor(f"blk.{i}.ffn_gate.weight", rand(f, d))
        w.add_tensor(f"blk.{i}.ffn_up.weight", rand(f, d))
        w.add_tensor(f"blk.{i}.ffn_down.weight", rand(d, f))
    w.add_tensor("output_norm.weight", np.ones(d, np.float32))
    w.add_tensor("output.weight", rand(shape.vocab, d))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@contextlib.contextmanager
def _quiet_native() -> Iterator[None]:
    """llama.cpp's C code prints a line per tensor to the process's stdout/stderr: send both to /dev/null."""
    sys.stdout.flush(), sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1), os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved[0], 1), os.dup2(saved[1], 2)
        for fd in (*saved, null):
            os.close(fd)


def quantize(src: Path, dst: Path, quant: str) -> None:
    """llama.cpp's own quantizer (llama_model_quantize) at `quant` (Q8_0, Q4_0, Q4_K_M, F16)."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{quant}")
    tmp = dst.with_name(dst.name + ".partial")
    with _quiet_native():
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), params)
    if rc != 0:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"llama.cpp could not quantize {src.name} to {quant}")
    tmp.replace(dst)


def gguf_for(shape: LlamaShape, quant: str, work: Path, log: Callable[[str], None]) -> Path:
    """The quantized GGUF of `shape` (built once per work dir: the f16 file, then each quant)."""
    work.mkdir(parents=True, exist_ok=True)
    f16 = work / f"llama-{shape.key()}-F16.gguf"
    out = work / f"llama-{shape.key()}-{quant}.gguf"
    if not f16.is_file():
        log(f"writing the same-shape Llama GGUF (d {shape.d_model}, {shape.layers} layers, FFN {shape.ffn}, "
            f"vocab {shape.vocab}) ...")
        tmp = f16.with_name(f16.name + ".partial")
        write_gguf(shape, tmp)
        tmp.replace(f16)
    if quant != "F16" and not out.is_file():
        log(f"quantizing it to {quant} with llama.cpp's quantizer ...")
        quantize(f16, out, quant)
    return f16 if quant == "F16" else out


def weight_bytes(path: Path) -> tuple[int, int]:
    """(bytes of every tensor a decode step reads: all but the token-embedding table, file bytes)."""
    import gguf

    r = gguf.GGUFReader(str(path))
    return int(sum(t.n_bytes for t in r.tensors if t.name != "token_embd.weight")), path.stat().st_size


def system_info() -> dict:
    import llama_cpp

    return {"llama_cpp_python": llama_cpp.__version__,
            "system_info": llama_cpp.llama_print_system_info().decode(errors="replace").strip()}


def measure(spec: dict) -> dict:
    """{path, threads, contexts, tokens, repeat, vocab, shape, seed} -> measure.measure's result shape."""
    import llama_cpp

    base = memory_mb()
    shape = LlamaShape(**spec["shape"])
    deepest = max(spec["contexts"])
    t0 = time.perf_counter()
    llm = llama_cpp.Llama(spec["path"], n_ctx=max(deepest + spec["tokens"] + 16, PROMPT + 16), n_batch=PROMPT,
                          n_ubatch=PROMPT, n_threads=spec["threads"], n_threads_batch=spec["threads"],
                          logits_all=False, verbose=False)
    load_s = time.perf_counter() - t0
    after_load = memory_delta(memory_mb(), base)
    rng = np.random.default_rng(spec.get("seed", 0))

    def ids(n: int) -> list[int]:
        return rng.integers(FIRST_ID, shape.vocab, n).tolist()

    ttft = prompt_seconds(llm.reset, llm.eval, ids(PROMPT))
    after_prefill = memory_delta(memory_mb(), base)
    records = []
    for context in sorted(spec["contexts"]):
        fill_s = fill_from_empty(llm.reset, llm.eval, ids(context))  # pp at this depth: batches of n_batch
        runs = []
        for _ in range(spec["repeat"]):
            llm.n_tokens = context  # rewind: eval drops the cache cells past n_tokens
            llm.eval(ids(1))  # warm-up token
            times = []
            for tok in ids(spec["tokens"]):
                t = time.perf_counter()
                llm.eval([tok])
                times.append((time.perf_counter() - t) * 1e3)
            runs.append(times)
        flat = sorted(x for run in runs for x in run)
        medians = [statistics.median(run) for run in runs]
        records.append({
            "context": context, "positions": [context, llm.n_tokens], "restored_each_repeat": True,
            "ms_per_token_median": round(statistics.median(flat), 4),
            "ms_per_token_p90": round(flat[int(0.9 * (len(flat) - 1))], 4),
            "repeat_medians_ms": [round(m, 4) for m in medians],
            "spread": round((max(medians) - min(medians)) / statistics.median(medians), 4), **fill_rate(context, fill_s),
            "state_bytes_now": shape.kv_bytes(context + 1 + spec["tokens"] // 2), "state_fingerprint": None,
            "memory_mb": memory_delta(memory_mb(), base)})
    return {"load_s": round(load_s, 3), "import_rss_mb": round(base.get("rss", 0.0), 1), "profile": None,
            "torch_imported": "torch" in sys.modules, "memory_after_load_mb": after_load,
            "memory_after_prefill_mb": after_prefill, "prefill_tokens": PROMPT, "ttft_ms": round(ttft * 1e3, 2),
            "prefill_tokens_per_s": round(PROMPT / ttft, 1), "records": records}


def main() -> None:
    print(json.dumps(measure(json.loads(sys.argv[1]))))


if __name__ == "__main__":
    main()
