"""`bench --baseline llama.cpp`: the same-shape Llama GGUF, the ratios a user reads, the missing extra in one line,
and (where llama-cpp-python is installed) a real run beside an ONNX artifact."""
from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from click.testing import CliRunner

from retnet_edge.bench.llamacpp import HEAD_DIM, LlamaShape, write_gguf
from retnet_edge.bench.suite import render_bench_table, summarize
from retnet_edge.cli import main
from retnet_edge.core.config import RetNetConfig

HAVE_LLAMA = importlib.util.find_spec("llama_cpp") is not None


def test_the_gguf_has_the_retnet_configs_shape(tmp_path):
    """d_model, layers, FFN and vocabulary are the RetNet's; heads of 64 (also where d_model is not a multiple of
    64: key/value lengths say so); untied head; f16 weights; norms of ones."""
    gguf = pytest.importorskip("gguf")
    cfg = RetNetConfig(vocab_size=600, d_model=96, n_layers=2, n_heads=2, ffn_dim=160)
    shape = LlamaShape.of(cfg, ctx=1024)
    assert (shape.heads, shape.ffn, shape.vocab) == (1, 160, 600)
    write_gguf(shape, tmp_path / "m.gguf")
    r = gguf.GGUFReader(str(tmp_path / "m.gguf"))
    meta = {f.name: f.contents() for f in r.fields.values() if f.name.startswith("llama.")}
    assert meta["llama.block_count"] == 2 and meta["llama.embedding_length"] == 96
    assert meta["llama.feed_forward_length"] == 160 and meta["llama.attention.key_length"] == HEAD_DIM
    t = {x.name: x for x in r.tensors}
    assert len(t) == 3 + 9 * 2
    assert list(t["blk.1.attn_q.weight"].shape) == [96, HEAD_DIM] and list(t["output.weight"].shape) == [96, 600]
    assert t["blk.0.ffn_down.weight"].tensor_type == gguf.GGMLQuantizationType.F16
    w = np.asarray(t["blk.0.ffn_up.weight"].data, np.float32)
    assert 0.015 < w.std() < 0.025 and np.all(np.asarray(t["output_norm.weight"].data) == 1)


def _rec(model, runtime, quant, thr, ctx, tok_s, pp, ttft, art, fill=None):
    return {"model": model, "runtime": runtime, "quant": quant, "threads": thr, "context": ctx, "artifact": art,
            "tokens_per_s": tok_s, "prefill_tokens_per_s": pp, "ttft_ms": ttft, "ms_per_token_median": 1e3 / tok_s,
            "fill_tokens_per_s": fill,
            "ms_per_token_p90": 1e3 / tok_s, "rss_mb": 100.0, "state_bytes": 2**20, "bytes_per_token": 1e6,
            "effective_gb_per_s": 1.0, "roof_fraction": 0.1}


def test_ratios_pair_each_artifact_with_llama_cpp_at_its_bits_threads_and_context():
    results = [_rec("retnet", "onnxruntime", "int4", 1, 0, 30.0, 120.0, 4266.7, "out/onnx-int4"),
               _rec("retnet", "onnxruntime", "int4", 1, 4096, 29.0, 120.0, 4266.7, "out/onnx-int4", fill=118.0),
               _rec("llama.cpp", "llama.cpp", "int4", 1, 0, 60.0, 200.0, 2560.0, "llama.cpp Q4_0"),
               _rec("llama.cpp", "llama.cpp", "int4", 1, 4096, 6.0, 200.0, 2560.0, "llama.cpp Q4_0", fill=80.0),
               _rec("llama.cpp", "llama.cpp", "int4", 2, 0, 99.0, 300.0, 1700.0, "llama.cpp Q4_0"),
               _rec("llama.cpp", "llama.cpp", "int8", 1, 0, 40.0, 180.0, 2800.0, "llama.cpp Q8_0")]
    v = summarize(results)["vs_llama_cpp"]
    assert [(x["context"], x["llama_cpp"], x["decode_ratio"], x["pp512_ratio"]) for x in v] == \
        [(0, "Q4_0", 0.5, 0.6), (4096, "Q4_0", 4.833, 0.6)]
    doc = {"config": {"contexts": [0, 4096]}, "results": results, "summary": summarize(results),
           "machine": {"read_bandwidth": {"gb_per_s": {1: 12.0}, "kernel": "k"}, "cpu": "AMD EPYC", "flags": ["avx2"],
                       "cores": 2, "load_average": [0.1], "load_average_after": [0.1]}}
    text = render_bench_table(doc)
    assert [x["fill_ratio"] for x in v] == [None, 1.475]  # filling 4096 from empty: 118 vs 80 tok/s
    assert ("vs llama.cpp Q4_0 (int4, 1 thr, context 4096): decode x4.83 (29.0 vs 6.0 tok/s); pp512 x0.60, "
            "TTFT 4266.7 vs 2560.0 ms; filling 4096 tokens x1.48 (118 vs 80 tok/s)") in text
    fill_rows = text.split("prompt tok/s filling each context from empty")[1].splitlines()
    assert "fill@4096" in fill_rows[1] and fill_rows[2].split()[-1] == "118.0"
    assert "CPU AMD EPYC (avx2)" in text and "pp512 tok/s" in text.splitlines()[1]


def test_without_the_extra_it_is_one_line_before_any_work(tiny_onnx, monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llama_cpp" else real(name, *a))
    res = CliRunner().invoke(main, ["bench", str(tiny_onnx[1].path), "--baseline", "llama.cpp", "--work-dir",
                                    str(tmp_path / "w")])
    assert res.exit_code == 1 and "pip install 'retnet-edge[llamacpp]'" in res.output
    assert len(res.output.strip().splitlines()) <= 2 and "Traceback" not in res.output
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("args", [["--baseline", "llama"], ["--baseline", "none,llama.cpp"]])
def test_a_bad_baseline_is_a_usage_error(tiny_onnx, args):
    res = CliRunner().invoke(main, ["bench", str(tiny_onnx[1].path), *args])
    assert res.exit_code == 2 and "--baseline" in res.output


@pytest.mark.skipif(not HAVE_LLAMA, reason="llama-cpp-python is not installed (extra `llamacpp`, built from source)")
def test_llama_cpp_is_timed_beside_the_artifact(demo_export, tmp_path):
    """A real run: the Q8_0 GGUF of the demo's shape, decode at two depths, pp512 and TTFT, the ratios."""
    art = demo_export("onnx", "int8")
    res = CliRunner().invoke(main, ["bench", str(art.path), "--baseline", "llama.cpp", "--contexts", "0,64",
                                    "--tokens", "8", "--repeat", "2", "--threads", "1", "--json",
                                    "--work-dir", str(tmp_path / "w")])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    llama = [r for r in doc["results"] if r["runtime"] == "llama.cpp"]
    assert [(r["artifact"], r["context"]) for r in llama] == [("llama.cpp Q8_0", 0), ("llama.cpp Q8_0", 64)]
    assert all(r["tokens_per_s"] > 0 and r["prefill_tokens_per_s"] > 0 and r["ttft_ms"] > 0 for r in llama)
    assert llama[1]["state_bytes"] > llama[0]["state_bytes"]  # its KV cache grows with the context
    v = doc["summary"]["vs_llama_cpp"]
    assert len(v) == 2 and all(x["decode_ratio"] > 0 and x["pp512_ratio"] > 0 for x in v)
    assert v[0]["fill_ratio"] is None and v[1]["fill_ratio"] > 0 and llama[1]["fill_tokens_per_s"] > 0
    assert "llama_cpp_python" in doc["versions"] and "system_info" in doc["machine"]["llama_cpp"]
    assert list((tmp_path / "w").glob("llama-*-Q8_0.gguf"))
