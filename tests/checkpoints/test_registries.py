"""Every registry entry is exercised: each checkpoint format loads to the same logits as its source, each
export target x quant scheme passes its gate and scores the held-out text, each runtime matches eager.

Parametrised over the registries themselves, so a new format, target, scheme or runtime is tested (or
fails here, asking for a writer) without editing this file's lists.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from foreign import (
    fla_reference_logits,
    torchscale_decoder,
    torchscale_logits,
    write_fairseq,
    write_fla,
    write_syncdoth,
    write_torchscale,
)
from helpers import make_model

import retnet_edge
from retnet_edge.base.tokenizer import load_tokenizer
from retnet_edge.checkpoints import FORMATS
from retnet_edge.checkpoints.loader import DEMO_DIR, detect_format
from retnet_edge.contract.quant import QuantConfig, QuantScheme
from retnet_edge.exporters import TARGETS
from retnet_edge.runtimes import RUNTIMES, load_runner
from retnet_edge.runtimes.evaluate import evaluate_text

IDS = torch.randint(0, 101, (2, 23), generator=torch.Generator().manual_seed(0))


def _torchscale_family(write):
    def writer(tmp_path):
        pytest.importorskip("torchscale")
        dec, fields = torchscale_decoder()
        return write(dec, fields, tmp_path / "ckpt"), torchscale_logits(dec, IDS)
    return writer


def _native(tmp_path):
    model = make_model()
    with torch.no_grad():
        return retnet_edge.save_pretrained(model, tmp_path / "ckpt"), model(IDS)


def _fla(tmp_path):
    cfg = write_fla(tmp_path / "ckpt")
    from safetensors.torch import load_file

    sd = {k: v for f in sorted((tmp_path / "ckpt").glob("*.safetensors")) for k, v in load_file(str(f)).items()}
    return tmp_path / "ckpt", fla_reference_logits(sd, cfg, IDS)


# format -> writer(tmp_path) -> (checkpoint path, reference logits [2, 23, V])
WRITERS = {"native": _native, "torchscale": _torchscale_family(write_torchscale),
           "fairseq": _torchscale_family(lambda d, f, p: write_fairseq(d, f, p.with_suffix(".pt"))),
           "syncdoth": _torchscale_family(write_syncdoth), "fla": _fla}


@pytest.mark.parametrize("fmt", FORMATS.names())
def test_every_format_is_detected_and_loads_to_its_reference(fmt, tmp_path):
    assert fmt in WRITERS, f"checkpoint format {fmt!r} has no test writer in tests/test_registries.py"
    path, ref = WRITERS[fmt](tmp_path)
    assert detect_format(path).name == fmt
    model = retnet_edge.load(path)
    with torch.no_grad():
        for logits in (model(IDS), model.forward_chunkwise(IDS, 8), model.forward_recurrent(IDS)):
            assert ((logits - ref).abs().max() / ref.abs().max()).item() <= 1e-4


# perplexity on the first held-out tokens through the artifact vs eager on the same tokens (full-text numbers:
# README): 1024 through ONNX; 384 through ExecuTorch's runner programs, which read a text one token per call
MAX_PPL_INCREASE = {"fp32": 1e-4, "int8": 0.01, "int4": 0.03}
PPL_TOKENS = {"onnx": 1024, "executorch": 384}


@pytest.fixture(scope="module")
def eager_ppl():
    text, tok = (DEMO_DIR / "heldout.txt").read_text(), load_tokenizer(DEMO_DIR)
    return {n: evaluate_text(load_runner("demo"), tok, text, max_tokens=n)["perplexity"] for n in set(PPL_TOKENS.values())}


@pytest.mark.parametrize("scheme", [s.value for s in QuantScheme])
@pytest.mark.parametrize("target", TARGETS.names())
def test_every_target_and_scheme_exports_the_demo(target, scheme, demo_export, eager_ppl):
    art = demo_export(target, scheme)
    m = art.manifest
    assert m.target == target and m.quant.scheme.value == scheme
    tol = QuantConfig(scheme).tolerance
    v = m.validation
    assert v["passed"] and min(c["top1"] for c in v["checks"]) >= tol.min_top1
    assert max(c["kl"] for c in v["checks"]) <= tol.max_kl
    text, tok, n = (DEMO_DIR / "heldout.txt").read_text(), load_tokenizer(DEMO_DIR), PPL_TOKENS[target]
    ppl = evaluate_text(load_runner(art.path), tok, text, max_tokens=n)["perplexity"]
    assert abs(ppl / eager_ppl[n] - 1) <= MAX_PPL_INCREASE[scheme], (ppl, eager_ppl[n])


@pytest.mark.parametrize("runtime", RUNTIMES.names())
def test_every_runtime_matches_eager(runtime, demo_export):
    path = "demo" if runtime == "eager" else demo_export(runtime, "fp32").path
    ids = load_tokenizer(DEMO_DIR).encode("And God said, Let there be light", add_bos=True)
    ref, got = load_runner("demo"), load_runner(path)
    a = np.concatenate([ref.prefill(ids[:-3]), np.stack([ref.step(t) for t in ids[-3:]])])
    b = np.concatenate([got.prefill(ids[:-3]), np.stack([got.step(t) for t in ids[-3:]])])
    assert np.abs(a - b).max() / np.abs(a).max() <= 1e-5
