"""Fixtures' helpers for the session tests (snapshots, prefix cache, chat, serve): a tiny model with a real
byte-level tokenizer, exported to ONNX once per test session, and a Python preamble that blocks torch."""
from __future__ import annotations

import os
import pty
import signal
import socket
import subprocess
from pathlib import Path

from helpers import make_model
from pexpect import fdpexpect

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


class PtyChild(fdpexpect.fdspawn):
    """pexpect on a pseudo-terminal whose process subprocess starts (vfork/posix_spawn + exec).

    pexpect.spawn forks this pytest process and runs Python in the child before exec; with onnxruntime's
    and torch's worker threads alive here, a lock one of them held at the fork stays locked in the child
    forever (seen: the child asleep on a futex, the test waiting on it). subprocess never runs Python
    between fork and exec. The child leads its own session, so Ctrl-C is SIGINT to its process group, as
    a terminal sends it; Ctrl-D is the terminal's EOF character."""

    def __init__(self, argv: list[str], timeout: float = 60):
        master, slave = pty.openpty()
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
                                     close_fds=True)
        os.close(slave)  # the child holds the only copy: its exit is EOF here
        super().__init__(master, encoding="utf-8", timeout=timeout)
        self.exitstatus: int | None = None

    def sendintr(self) -> None:
        os.killpg(self.proc.pid, signal.SIGINT)

    def sendeof(self) -> None:
        self.send("\x04")

    def close(self) -> None:
        try:
            self.exitstatus = self.proc.wait(timeout=30)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            super().close()
