"""Native format round trip, config validation and malformed-file errors."""
from __future__ import annotations

import json

import pytest
import torch
from helpers import make_model
from safetensors.torch import save_file

import retnet_edge
from retnet_edge import CheckpointError, ConfigError, RetNetConfig, save_pretrained


def test_round_trip_is_exact(tmp_path):
    model = make_model(tie_embeddings=True, embed_norm=True, rotary="fla", group_norm_affine="shared")
    save_pretrained(model, tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["format"] == "retnet-edge" and cfg["format_version"] == 1
    loaded = retnet_edge.load(tmp_path / "m")
    assert loaded.lm_head.weight is loaded.embed.weight
    ids = torch.randint(0, 101, (2, 9))
    with torch.no_grad():
        assert torch.equal(loaded(ids), model(ids))


def test_fp16_save_loads_as_fp32(tmp_path):
    model = make_model()
    save_pretrained(model, tmp_path / "m", dtype="fp16")
    loaded = retnet_edge.load(tmp_path / "m")
    assert loaded.embed.weight.dtype == torch.float32
    assert torch.allclose(loaded.embed.weight, model.embed.weight, atol=1e-3)


def test_refuses_to_overwrite_without_force(tmp_path, tiny_model):
    save_pretrained(tiny_model, tmp_path / "m")
    with pytest.raises(retnet_edge.RetNetEdgeError, match="already exists"):
        save_pretrained(tiny_model, tmp_path / "m")
    save_pretrained(tiny_model, tmp_path / "m", force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temp dirs left behind


@pytest.mark.parametrize("kwargs, message", [
    (dict(d_model=65, n_heads=4), "not divisible"),
    (dict(value_dim=130, n_heads=4), "value_dim=130"),
    (dict(d_model=12, n_heads=4), "even key head dim"),
    (dict(rotary="xpos"), "rotary"),
    (dict(activation="relu"), "activation"),
    (dict(bos_id=1000), "bos_id"),
])
def test_config_validation(kwargs, message):
    base = dict(vocab_size=101, d_model=64, n_layers=2, n_heads=4)
    base.update(kwargs)
    with pytest.raises(ConfigError, match=message):
        RetNetConfig(**base)


def test_unknown_config_field_is_named():
    with pytest.raises(ConfigError, match="decoder_layers"):
        RetNetConfig.from_dict(dict(vocab_size=5, d_model=8, n_layers=1, n_heads=2, decoder_layers=3))


def _sd(model):
    return {k: v.contiguous() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("damage, message", [
    ("missing", "missing keys: layers.0.ffn.fc1.weight"),
    ("extra", "unexpected keys: surprise"),
    ("shape", "wrong shapes: embed.weight"),
    ("truncated", "not a valid safetensors"),
    ("int", "non-float"),
])
def test_damaged_weights_raise_checkpoint_error(saved_tiny, tiny_model, damage, message):
    weights = saved_tiny / "model.safetensors"
    sd = _sd(tiny_model)
    if damage == "missing":
        del sd["layers.0.ffn.fc1.weight"]
    elif damage == "extra":
        sd["surprise"] = torch.zeros(2)
    elif damage == "shape":
        sd["embed.weight"] = torch.zeros(100, 64)
    elif damage == "int":
        sd["norm.weight"] = torch.zeros(64, dtype=torch.int32)
    if damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:-100])
    else:
        save_file(sd, str(weights))
    with pytest.raises(CheckpointError, match=message):
        retnet_edge.load(saved_tiny)


def test_unknown_directory_names_what_it_found(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="unrecognised checkpoint format.*weights.bin"):
        retnet_edge.load(tmp_path)


def test_aliased_tensor_bytes_are_refused(saved_tiny):
    """Two tensors pointing at the same bytes load one's weights as the other's: refused, like the
    safetensors library itself does (issue 14: `generate` and `convert` used to exit 0 on such files)."""
    import json
    import struct

    weights = saved_tiny / "model.safetensors"
    raw = weights.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    a, b = "layers.0.retention_norm.weight", "layers.0.ffn_norm.weight"  # same shape, same dtype
    header[b]["data_offsets"] = header[a]["data_offsets"]
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    weights.write_bytes(struct.pack("<Q", len(blob)) + blob + raw[8 + n :])  # offsets are relative to the data
    with pytest.raises(CheckpointError, match="share bytes"):
        retnet_edge.load(saved_tiny)
