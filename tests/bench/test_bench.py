"""`retnet-edge bench` on a tiny model: the JSON document, real context fills, the baseline's growing cache."""
from __future__ import annotations

import json

import numpy as np

import pytest
from click.testing import CliRunner

from retnet_edge.bench import BenchConfig
from retnet_edge.bench.baseline import kv_cache_bytes
from retnet_edge.bench.roof import measure_read_bandwidth
from retnet_edge.cli import main
from retnet_edge.errors import ArtifactError, ConfigError

RECORD_KEYS = {"model", "runtime", "quant", "threads", "context", "ms_per_token_median", "ms_per_token_p90",
               "tokens_per_s", "prefill_tokens_per_s", "rss_peak_mb", "rss_anon_mb", "rss_file_mb", "state_bytes",
               "bytes_per_token", "roof_fraction"}


@pytest.fixture(scope="module")
def bench_doc(tiny_onnx, tmp_path_factory):
    model, art = tiny_onnx
    out = tmp_path_factory.mktemp("bench")
    res = CliRunner().invoke(main, ["bench", str(art.path), "--contexts", "0,96", "--tokens", "4", "--repeat", "2",
                                    "--threads", "1", "-o", str(out / "r.json"), "--plot", str(out / "plots"),
                                    "--work-dir", str(out / "work"), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert json.loads((out / "r.json").read_text()) == doc
    return model, doc, out


def test_document_schema(bench_doc, tiny_onnx):
    _, doc, out = bench_doc
    assert sorted(p.name for p in tiny_onnx[1].path.parent.iterdir()) == ["art", "model"]  # nothing left beside it
    assert {"cpu", "flags", "cores", "load_average", "load_average_after", "read_bandwidth"} <= set(doc["machine"])
    assert doc["machine"]["read_bandwidth"]["gb_per_s"]["1"] > 0.5
    assert {"python", "onnxruntime", "numpy"} <= set(doc["versions"])
    assert len(doc["results"]) == 4  # (retnet, transformer) x 2 contexts x 1 thread count
    for r in doc["results"]:
        assert RECORD_KEYS <= set(r), RECORD_KEYS - set(r)
        assert r["runtime"] == "onnxruntime" and r["quant"] == "fp32" and r["threads"] == 1
        # a tiny model's weights sit in the caches: its "roof fraction" of DRAM bandwidth may pass 1 by far
        assert 0 < r["ms_per_token_median"] <= r["ms_per_token_p90"] and 0 < r["roof_fraction"] < 100
        assert r["bytes_per_token"] > r["state_bytes"] > 0
    assert sorted(p.name for p in (out / "plots").iterdir()) == ["latency_vs_context.png", "memory_vs_context.png"]
    for r in doc["results"]:  # under 60 % of the roof, a RetNet ONNX record says where its kernel time goes
        if r["model"] == "retnet" and r["roof_fraction"] < 0.6:
            assert abs(sum(r["profile"]["share_of_node_time"].values()) - 1) < 0.01


def test_contexts_are_really_advanced(bench_doc):
    model, doc, _ = bench_doc
    retnet = sorted((r for r in doc["results"] if r["model"] == "retnet"), key=lambda r: r["context"])
    assert retnet[0]["state_fingerprint"] == 0.0  # depth 0: the zero state
    assert retnet[1]["state_fingerprint"] > 0.0  # depth 96: the state the prefill graph left
    assert retnet[1]["positions"][0] == 96
    # the fill to each depth is timed from empty: the prompt rate at that depth (none at depth 0)
    for r in doc["results"]:
        if r["context"] == 0:
            assert r["fill_tokens_per_s"] is None and r["fill_ms"] is None
        else:
            assert r["fill_ms"] > 0 and r["fill_tokens_per_s"] == pytest.approx(96 / r["fill_ms"] * 1e3, rel=0.01)


def test_baseline_cache_grows_while_the_retnet_state_does_not(bench_doc):
    model, doc, _ = bench_doc
    by = {(r["model"], r["context"]): r for r in doc["results"]}
    assert by["retnet", 0]["state_bytes"] == by["retnet", 96]["state_bytes"] == model.cfg.state_bytes(1)
    # the cache as measured: depth + the warm-up token + the timed tokens of one repetition
    assert by["transformer", 96]["state_bytes"] == kv_cache_bytes(model.cfg, 96 + 1 + 4)
    assert by["transformer", 0]["state_bytes"] == kv_cache_bytes(model.cfg, 1 + 4)
    assert doc["summary"]["speedup_vs_baseline"]


def test_read_bandwidth_kernel_names_itself():
    bw = measure_read_bandwidth([1])
    assert bw["gb_per_s"][1] > 0.5 and ("stream_read" in bw["kernel"] or "ReduceSum" in bw["kernel"])


@pytest.mark.parametrize("kwargs", [dict(contexts=[-1]), dict(threads=[0]), dict(threads=[100000]),
                                    dict(tokens=0), dict(repeat=0), dict(runtime="gpu"), dict(baselines=("mamba",))])
def test_absurd_settings_are_refused(kwargs):
    with pytest.raises(ConfigError):
        BenchConfig(**kwargs)


def test_bench_cli_bad_input_is_one_line(tmp_path):
    for args in (["/nope"], ["demo", "--contexts", "0,x"], ["demo", "--threads", "-1"]):
        res = CliRunner().invoke(main, ["bench", *args])
        assert res.exit_code == 1 and len(res.stderr.strip().splitlines()) == 1, res.output


@pytest.mark.parametrize("graph", ["fused", "chain"])
def test_profiler_drives_the_step_graph_the_runner_uses(tiny_onnx, graph):
    """`ort_profile` decodes with the runner's step graph, bound as the runner binds it (fused: past and
    present in one buffer): kernel shares sum to 1 and name the state update's ops."""
    from retnet_edge.bench.measure import ort_profile

    prof = ort_profile(str(tiny_onnx[1].path), threads=1, steps=4, step_graph=graph)
    assert prof["graph"] == ("model_fused.onnx" if graph == "fused" else "model.onnx") and prof["steps"] == 4
    shares = prof["share_of_node_time"]
    assert abs(sum(shares.values()) - 1) < 0.01 and prof["profiled_ms_per_step"] > 0
    assert (graph == "fused") == any("LinearAttention" in k for k in shares), shares


def test_the_onnx_baseline_is_the_gqa_graph_people_deploy_and_it_is_right(tmp_path):
    """The ONNX Transformer baseline: GroupQueryAttention with one KV buffer per layer shared by past and present
    (no concatenation), the prompt and each step equal to eager causal attention over the same weights, a
    rewind costs nothing and the cache in use is what a token reads."""
    import onnx
    import torch

    from retnet_edge.bench.baseline import HEAD_DIM, _random_baseline, baseline_heads, export_baseline_onnx
    from retnet_edge.bench.kv_onnx import GQARunner
    from retnet_edge.contract.quant import QuantConfig
    from retnet_edge.core.config import RetNetConfig
    from retnet_edge.core.ops import rotary_cos_sin, rotate_half_split

    cfg = RetNetConfig(vocab_size=300, d_model=128, n_layers=2, n_heads=2, ffn_dim=256)
    export_baseline_onnx(cfg, QuantConfig("fp32"), tmp_path / "b")
    ops = [n.op_type for n in onnx.load(str(tmp_path / "b" / "model.onnx"), load_external_data=False).graph.node]
    assert ops.count("GroupQueryAttention") == 2 and "Concat" not in ops
    m, H, ids = _random_baseline(cfg, 0), baseline_heads(cfg), [5, 17, 42, 99, 7, 3, 250, 11]
    with torch.no_grad():
        x, T = m.embed(torch.tensor([ids])), len(ids)
        cos, sin = rotary_cos_sin(torch.arange(T)[None], m.freqs)
        for layer in m.layers:
            a, h = layer.attn, layer.attn_norm(x)
            q, k = (rotate_half_split(p(h).view(1, T, H, HEAD_DIM), cos, sin).transpose(1, 2) for p in (a.q_proj, a.k_proj))
            v = a.v_proj(h).view(1, T, H, HEAD_DIM).transpose(1, 2)
            o = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + a.o_proj(o.transpose(1, 2).reshape(1, T, H * HEAD_DIM))
            f, hh = layer.ffn, layer.ffn_norm(x)
            x = x + f.fc2(torch.nn.functional.silu(f.fc1(hh)) * f.gate(hh))
        ref = m.lm_head(m.norm(x))[0].numpy()
    r = GQARunner(tmp_path / "b", 1, max_len=16)
    assert np.abs(r.prefill(ids[:5])[-1] - ref[4]).max() < 1e-5 * np.abs(ref).max()
    for t in range(5, 8):
        assert np.abs(r.step(ids[t]) - ref[t]).max() < 1e-5 * np.abs(ref).max()
    assert r.state_bytes == 2 * cfg.n_layers * 8 * H * HEAD_DIM * 4
    r.restore(5)
    assert np.abs(r.step(ids[5]) - ref[5]).max() < 1e-5 * np.abs(ref).max()  # rewound: the same token, the same logits
    with pytest.raises(ArtifactError, match="holds 16"):
        r.prefill(list(range(3, 20)))


def test_an_int4_artifact_is_timed_with_derived_and_stored_prompt_weights(demo_export, tmp_path):
    """One run gives the int8-derived prompt and the stored int4 one, and what opening each graph cost."""
    art = demo_export("onnx", "int4")
    res = CliRunner().invoke(main, ["bench", str(art.path), "--baseline", "none", "--contexts", "0", "--tokens", "4",
                                    "--repeat", "1", "--threads", "1", "-o", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    assert "int4 prompt weights: int8 derived at load vs stored int4" in res.stdout
    (r,) = json.loads((tmp_path / "r.json").read_text())["results"]
    assert r["prompt_weights"].startswith("int8 derived at load (48 linears")
    assert r["prompt_open_s"] > 0 and r["stored_prompt"]["prompt_open_s"] > 0
    assert r["prefill_tokens_per_s"] > 0 and r["stored_prompt"]["prefill_tokens_per_s"] > 0
