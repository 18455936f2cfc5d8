"""Fixtures' helpers for the session tests (snapshots, prefix cache, chat, serve): a tiny model with a real
byte-level tokenizer, exported to ONNX once per test session, and a Python preamble that blocks torch."""
from __future__ import annotations

import socket
from pathlib import Path

from helpers import make_model

from retnet_edge import save_pretrained
from retnet_edge.base.paths import DEMO_DIR
from retnet_edge.base.tokenizer import train_bpe
from retnet_edge.contract.quant import QuantConfig

VOCAB = 384  # a byte-level BPE needs 256 + 3 specials at least
_ARTIFACTS: dict[str, Path] = {}  # scheme -> artifact, shared by every test module of the session


def text_model(root: Path) -> Path:
    """A seeded 2-layer model (vocab 384) with a BPE tokenizer trained on the demo's held-out text."""
    model_dir = root / "model"
    if not (model_dir / "tokenizer.json").is_file():
        save_pretrained(make_model(vocab_size=VOCAB, n_layers=2), model_dir)
        train_bpe((DEMO_DIR / "heldout.txt").read_text()[:20000].splitlines(), VOCAB, model_dir / "tokenizer.json")
    return model_dir


def text_artifact(tmp_path_factory, scheme: str = "fp32") -> Path:
    """The tiny text model as an ONNX artifact (gate skipped: the export tests own parity), made once."""
    from retnet_edge.exporters import export_model

    if scheme not in _ARTIFACTS:
        root = tmp_path_factory.mktemp(f"text-{scheme}")
        art = export_model(str(text_model(root)), "onnx", QuantConfig(scheme), root / "art", validate_artifact=False)
        _ARTIFACTS[scheme] = art.path
    return _ARTIFACTS[scheme]


# prepended to a `python -c` script: the base install's view (no torch, executorch, torchao, onnxscript)
BLOCK_TORCH = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "executorch", "torchao", "onnxscript"):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
sys.meta_path.insert(0, Block())
"""


def free_port() -> int:
    """A free loopback port (the OS picks it; the server binds it right after)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
