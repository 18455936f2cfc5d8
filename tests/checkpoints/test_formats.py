"""Foreign checkpoints: each format loads, converts and matches its reference; bad files exit 1."""
from __future__ import annotations

import json
import pickle

import pytest
import torch
from click.testing import CliRunner
from foreign import (
    fla_reference_logits,
    torchscale_decoder,
    torchscale_logits,
    write_fairseq,
    write_fla,
    write_syncdoth,
    write_torchscale,
)
from safetensors.torch import load_file, save_file

import retnet_edge
from retnet_edge.cli import main

TOL = 1e-4  # max |Δlogits| / max |logits| against the reference implementation
IDS = torch.randint(0, 101, (2, 37), generator=torch.Generator().manual_seed(0))


def rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def convert(src, out, *extra):
    res = CliRunner().invoke(main, ["convert", str(src), "-o", str(out), "--json", *extra])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def check_all_forms(model, ref):
    with torch.no_grad():
        assert rel(model(IDS), ref) <= TOL
        assert rel(model.forward_recurrent(IDS), ref) <= TOL
        assert rel(model.forward_chunkwise(IDS, 16), ref) <= TOL


# --- torchscale / fairseq / syncdoth (oracle: torchscale 0.3.0) -------------------------------------------

@pytest.fixture(scope="module")
def ts():
    pytest.importorskip("torchscale")
    return torchscale_decoder()


def test_torchscale_state_dict(ts, tmp_path):
    dec, fields = ts
    d = write_torchscale(dec, fields, tmp_path / "ts")
    s = convert(d, tmp_path / "out")
    assert s["format"] == "torchscale" and s["config"]["normalize"] == "torchscale"
    model = retnet_edge.load(tmp_path / "out")
    ref_par, ref_rec = torchscale_logits(dec, IDS), torchscale_logits(dec, IDS, recurrent=True)
    check_all_forms(model, ref_par)
    assert rel(model.forward_recurrent(IDS), ref_rec) <= TOL


def test_fairseq_checkpoint_with_namespace_args(ts, tmp_path):
    dec, fields = ts
    write_fairseq(dec, fields, tmp_path / "checkpoint_best.pt")
    s = convert(tmp_path / "checkpoint_best.pt", tmp_path / "out", "--dtype", "fp32")
    assert s["format"] == "fairseq"
    check_all_forms(retnet_edge.load(tmp_path / "out"), torchscale_logits(dec, IDS))


def test_syncdoth_hf_dir(ts, tmp_path):
    dec, fields = ts
    src = write_syncdoth(dec, fields, tmp_path / "sd")
    (src / "modeling_retnet.py").write_text("raise SystemExit('never imported')\n")
    s = convert(src, tmp_path / "out", "--dtype", "fp16")
    assert s["format"] == "syncdoth" and s["dtype"] == "fp16"
    model = retnet_edge.load(src)  # loads directly too
    check_all_forms(model, torchscale_logits(dec, IDS))
    assert model.cfg.bos_id == 1 and model.cfg.eos_id == 2


def test_syncdoth_config_that_contradicts_its_buffers_is_refused(ts, tmp_path):
    dec, fields = ts
    src = write_syncdoth(dec, fields, tmp_path / "sd", use_lm_decay=True)
    res = CliRunner().invoke(main, ["convert", str(src), "-o", str(tmp_path / "x")])
    assert res.exit_code == 1 and "retnet_rel_pos.decay does not match" in res.stderr


# --- fla (oracle: fla's pure-torch reference ops) ---------------------------------------------------------

@pytest.mark.parametrize("fused, tied, shards", [(False, False, 1), (True, False, 2), (False, True, 1)])
def test_fla_formats(tmp_path, fused, tied, shards):
    cfg = write_fla(tmp_path / "fla", fused=fused, tied=tied, shards=shards)
    s = convert(tmp_path / "fla", tmp_path / "out")
    assert s["format"] == "fla" and s["config"]["rotary"] == "fla" and s["config"]["group_norm_affine"] == "shared"
    sd = {}
    for f in sorted((tmp_path / "fla").glob("*.safetensors")):
        sd.update(load_file(str(f)))
    check_all_forms(retnet_edge.load(tmp_path / "out"), fla_reference_logits(sd, cfg, IDS))


def test_fla_bf16_keeps_dtype_and_loads(tmp_path):
    write_fla(tmp_path / "fla", dtype=torch.bfloat16)
    s = convert(tmp_path / "fla", tmp_path / "out")
    assert s["source_dtypes"] == ["bfloat16"]
    assert (tmp_path / "out" / "model.safetensors").stat().st_size < 0.55 * (4 * s["parameters"])
    assert retnet_edge.load(tmp_path / "out").embed.weight.dtype == torch.float32


# --- malformed inputs: one line, exit 1 ------------------------------------------------------------------

class _Payload:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned > /tmp/retnet_edge_pwned",))


def _damage(tmp_path, kind):
    src = tmp_path / "fla"
    if kind == "missing":
        write_fla(src)
        sd = load_file(str(src / "model.safetensors"))
        del sd["model.layers.1.attn.k_proj.weight"]
        save_file(sd, str(src / "model.safetensors"))
    elif kind == "extra":
        write_fla(src, extra_keys={"model.layers.0.attn.decay_proj.weight": (4, 4)})
    elif kind == "shape":
        write_fla(src)
        sd = load_file(str(src / "model.safetensors"))
        sd["model.norm.weight"] = torch.ones(65)
        save_file(sd, str(src / "model.safetensors"))
    elif kind == "dtype":
        write_fla(src)
        sd = load_file(str(src / "model.safetensors"))
        sd["model.norm.weight"] = torch.ones(64, dtype=torch.int32)
        save_file(sd, str(src / "model.safetensors"))
    elif kind == "truncated":
        write_fla(src)
        data = (src / "model.safetensors").read_bytes()
        (src / "model.safetensors").write_bytes(data[: len(data) // 2])
    elif kind == "short_conv":
        write_fla(src, extra_cfg={"use_short_conv": True})
    elif kind == "legacy":
        src.mkdir()
        (src / "config.json").write_text(json.dumps({"model_type": "retnet", "decoder_embed_dim": 64,
                                                     "use_glu": False, "vocab_size": 101}))
        save_file({"model.embed_tokens.weight": torch.zeros(101, 64)}, str(src / "model.safetensors"))
    elif kind == "pickle":
        src = tmp_path / "evil.pt"
        with open(src, "wb") as f:
            pickle.dump({"model": _Payload()}, f)
    elif kind == "bin_pickle":
        src.mkdir()
        (src / "config.json").write_text(json.dumps({"model_type": "retnet", "hidden_size": 64, "num_heads": 4,
                                                     "num_hidden_layers": 1, "vocab_size": 101}))
        torch.save({"model.embeddings.weight": _Payload()}, src / "pytorch_model.bin")  # zipfile format
    return src


@pytest.mark.parametrize("kind, message", [
    ("missing", "missing keys: layers.1.retention.k_proj.weight"),
    ("extra", "unexpected keys: model.layers.0.attn.decay_proj.weight"),
    ("shape", "wrong shapes: norm.weight"),
    ("dtype", "non-float weights: norm.weight"),
    ("truncated", "truncated"),
    ("short_conv", "use_short_conv=True"),
    ("legacy", "use_glu=False"),
    ("pickle", "refused by the safe loader"),
    ("bin_pickle", "refused by the safe loader"),
])
def test_malformed_inputs_exit_1(tmp_path, kind, message):
    src = _damage(tmp_path, kind)
    res = CliRunner().invoke(main, ["convert", str(src), "-o", str(tmp_path / "out")])
    assert res.exit_code == 1, res.output
    assert message in res.stderr, res.stderr
    assert res.stderr.startswith("Error: ") and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
    import os

    assert not os.path.exists("/tmp/retnet_edge_pwned")


def test_unknown_format_name(tmp_path):
    res = CliRunner().invoke(main, ["convert", str(tmp_path), "-o", str(tmp_path / "o"), "--format", "gguf"])
    assert res.exit_code == 2  # click usage error: not one of the choices


def test_conversion_streams_a_large_checkpoint(tmp_path):
    """A 1.3B-width fla checkpoint cut to 2 layers (~420 MB bf16): conversion holds ~one tensor, not the model.

    The full 24-layer 1.3B measurement is benchmarks/convert_rss.py (results in benchmarks/results/).
    """
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from convert_rss import measure

    r = measure(layers=2, work=tmp_path)
    assert r["peak_rss_mib"] <= 1.5 * r["file_mib"], r
    assert r["delta_over_file"] < 0.75, r  # two copies of the file would be >= 2.0
    assert r["output_mib"] == pytest.approx(r["file_mib"], rel=0.01)
