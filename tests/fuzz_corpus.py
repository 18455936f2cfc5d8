"""A seeded, deterministic corpus of hostile inputs (issue 14): mutated checkpoints, configs, artifacts and
manifests, and absurd CLI arguments. `cases(...)` yields (category, name, apply) where `apply(dir)` makes
the bad input inside a fresh copy and returns what to run on it.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

ABSURD_NUMBERS = ["-1", "0", "-0.5", "nan", "inf", "-inf", str(2**40), "1e30", "", "x", "3.5"]
CONFIG_VALUES = [-1, 0, 1e30, 10**12, "x", None, [], {}, float("nan"), True, 2.5, -(2**63)]


def _flip(path: Path, rng: random.Random, lo: int = 0, hi: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    hi = len(data) if hi is None else min(hi, len(data))
    i = rng.randrange(lo, hi)
    data[i] ^= 1 << rng.randrange(8)
    path.write_bytes(bytes(data))


def _truncate(path: Path, rng: random.Random) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: rng.randrange(0, len(data))])


def checkpoint_cases(seed: int = 0, n: int = 80):
    """Mutations of a native checkpoint directory (config.json + model.safetensors)."""
    rng = random.Random(seed)
    for i in range(n):
        kind = ["truncate", "flip_header", "flip_data", "config_value", "config_garbage"][i % 5]

        def apply(d: Path, kind=kind, r=random.Random(rng.random())) -> None:
            st, cfg = d / "model.safetensors", d / "config.json"
            if kind == "truncate":
                _truncate(st, r)
            elif kind == "flip_header":
                _flip(st, r, 0, 8 + int.from_bytes(st.read_bytes()[:8], "little"))
            elif kind == "flip_data":
                _flip(st, r, 8 + int.from_bytes(st.read_bytes()[:8], "little"))
            elif kind == "config_value":
                c = json.loads(cfg.read_text())
                c[r.choice(sorted(c))] = r.choice(CONFIG_VALUES)
                cfg.write_text(json.dumps(c))
            else:
                _flip(cfg, r)

        yield "checkpoint", f"{kind}-{i}", apply


def artifact_cases(seed: int = 1, n: int = 60):
    """Mutations of an exported ONNX artifact: any file of it, or its manifest's fields."""
    rng = random.Random(seed)
    for i in range(n):
        kind = ["flip_weights", "flip_graph", "truncate_weights", "manifest_field", "flip_manifest",
                "delete_file"][i % 6]

        def apply(d: Path, kind=kind, r=random.Random(rng.random())) -> None:
            m = d / "manifest.json"
            if kind == "flip_weights":
                _flip(d / "weights.bin", r)
            elif kind == "flip_graph":
                _flip(d / r.choice(["model.onnx", "model_fused.onnx", "prefill.onnx"]), r)
            elif kind == "truncate_weights":
                _truncate(d / "weights.bin", r)
            elif kind == "manifest_field":
                doc = json.loads(m.read_text())
                key = r.choice(["target", "files", "config", "quant", "validation"])
                doc[key] = r.choice(CONFIG_VALUES)
                m.write_text(json.dumps(doc))
            elif kind == "flip_manifest":
                _flip(m, r)
            else:
                (d / r.choice(["model.onnx", "model_fused.onnx", "prefill.onnx", "weights.bin"])).unlink()

        yield "artifact", f"{kind}-{i}", apply


def argument_cases(seed: int = 2, n: int = 60):
    """Command lines with at least one absurd value (they must fail fast, with one line)."""
    rng = random.Random(seed)
    options = {
        "generate": ["-n", "--temperature", "--top-k", "--top-p", "--seed", "--threads"],
        "eval": ["--window", "--max-tokens", "--threads"],
        "export": ["--steps", "--group-size", "--quant", "--target", "--lm-head", "--embedding"],
        "bench": ["--threads", "--tokens", "--repeat", "--contexts"],
    }
    for i in range(n):
        cmd = rng.choice(sorted(options))
        opt = rng.choice(options[cmd])
        value = rng.choice(ABSURD_NUMBERS)
        # cheap defaults, so that a value that happens to be valid still finishes in a second or two
        base = {"generate": ["generate", "demo", "x", "-n", "2"], "eval": ["eval", "demo", "--text", "{tmp}/t.txt", "--max-tokens", "64"],
                "export": ["export", "demo", "--target", "onnx", "--quant", "fp32", "-o", "{tmp}/out"],
                "bench": ["bench", "demo", "--baseline", "none", "--contexts", "0", "--tokens", "2", "--repeat", "1",
                          "--threads", "1"]}[cmd]
        yield "arguments", f"{cmd}{opt}={value!r}-{i}", base + [opt, value]
