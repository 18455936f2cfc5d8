"""A seeded, deterministic corpus of hostile inputs (issue 14): mutated checkpoints, configs, artifacts and
manifests, and absurd CLI arguments. `cases(...)` yields (category, name, apply) where `apply(dir)` makes
the bad input inside a fresh copy and returns what to run on it.
"""
from __future__ import annotations

import contextlib
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


# --- issue 29: confinement, special files, sizes, outputs, messages, bench --------------------------
#
# Each case builds its hostile input inside a fresh tmp directory (from a saved tiny native model) and
# returns the command line to run; `expect` is the text of the one `Error:` line (exit `code`), or None
# for a case that must succeed. CANARY marks files outside the model: a case that echoes it, or writes an
# output after reading it, read outside its place.

CANARY = "CANARY-29-outside-the-model"
CATCH_ALL = "set RETNET_EDGE_DEBUG=1 for a traceback"  # the CLI's form for an unforeseen exception


@contextlib.contextmanager
def deadline(seconds: float = 60):
    """Fail (TimeoutError) instead of hanging: SIGALRM interrupts a blocked open() of a FIFO; faulthandler
    ends the process if the block is in native code that never returns to Python."""
    import faulthandler
    import signal

    def timeout(signum, frame):
        raise TimeoutError(f"blocked for {seconds} s")

    previous = signal.signal(signal.SIGALRM, timeout)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    faulthandler.dump_traceback_later(seconds + 30, exit=True)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        faulthandler.cancel_dump_traceback_later()


def classify(case, exit_code: int, stdout: str, stderr: str, tmp: Path, before: set[str]) -> tuple[str, str]:
    """(clean | crashed | leaked | silent-wrong, why) for one issue-29 case after it ran in `tmp`."""
    errors = [line for line in stderr.splitlines() if line.startswith("Error:")]
    if exit_code not in (0, 1, 2) or "Traceback" in stdout + stderr or CATCH_ALL in stderr:
        return "crashed", f"exit {exit_code}: {(errors or stderr.splitlines() or [''])[-1][:200]}"
    after = {str(p.relative_to(tmp)) for p in tmp.rglob("*")}
    hidden = sorted(p for p in after if ".retnet-edge-" in p)
    new = sorted(p.split("/")[0] for p in after - before if p.split("/")[0] != case.output)
    if hidden or new or CANARY in stdout + stderr:
        return "leaked", f"left {hidden or new}" if hidden or new else "echoed a file from outside the model"
    if case.expect is None:
        ok = exit_code == case.code and (case.output is None or (tmp / case.output).exists())
        return ("clean", "") if ok else ("crashed", f"exit {exit_code}: {errors[:1]}")
    if exit_code == 0:
        return "silent-wrong", "accepted"
    if exit_code != case.code or len(errors) != 1 or case.expect not in errors[0]:
        return "silent-wrong", f"exit {exit_code}, {errors[:2] or stderr[-200:]!r}"
    return "clean", ""
COMMIT = "0123456789abcdef0123456789abcdef01234567"


class Case:
    """One issue-29 input: build(tmp, tiny) -> (args, hub cache or None); `patch(monkeypatch)` if given."""

    def __init__(self, category, name, build, expect, code=1, patch=None, output=None):
        self.category, self.name, self.build, self.expect, self.code = category, name, build, expect, code
        self.patch, self.output = patch, output

    def __repr__(self) -> str:
        return self.name


def _outside(tmp: Path, tiny: Path) -> Path:
    """A model and a secret outside the model under test: what a confined reader must never reach."""
    import shutil

    out = tmp / "outside"
    if not out.exists():
        shutil.copytree(tiny, out / "victim")
        shutil.copyfile(tiny / "model.safetensors", out / "secret.safetensors")
        (out / "secret.txt").write_text(CANARY)
    return out


def _native(tmp: Path, tiny: Path) -> Path:
    import shutil

    d = tmp / "m"
    shutil.copytree(tiny, d)
    return d


def _fla(tmp: Path, edit=None) -> Path:
    from foreign import write_fla

    d = tmp / "fla"
    write_fla(d, shards=2)
    if edit:
        index = d / "model.safetensors.index.json"
        doc = json.loads(index.read_text())
        edit(d, doc)
        index.write_text(json.dumps(doc))
    return d


def _first_shard(doc: dict, value) -> None:
    doc["weight_map"][sorted(doc["weight_map"])[0]] = value


def _hub(tmp: Path, tiny: Path, ref: bytes | str | None = COMMIT, snapshot_link: bool = False,
         file_link: str | None = None) -> Path:
    """huggingface_hub's cache layout for acme/tiny-retnet (blobs, a snapshot of symlinks, refs/main)."""
    import os

    repo = tmp / "hub" / "models--acme--tiny-retnet"
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    snap = repo / "snapshots" / COMMIT
    if snapshot_link:
        snap.parent.mkdir()
        snap.symlink_to(_outside(tmp, tiny) / "victim")
    else:
        snap.mkdir(parents=True)
        for f in tiny.iterdir():
            blob = repo / "blobs" / f"blob-{f.name}"
            blob.write_bytes(f.read_bytes())
            target = _outside(tmp, tiny) / "victim" / f.name if f.name == file_link else os.path.relpath(blob, snap)
            (snap / f.name).symlink_to(target)
    if isinstance(ref, bytes):
        (repo / "refs" / "main").write_bytes(ref)
    elif ref == "fifo":
        os.mkfifo(repo / "refs" / "main")
    elif ref == "link-out":
        (_outside(tmp, tiny) / "commit.txt").write_text(COMMIT)
        (repo / "refs" / "main").symlink_to(_outside(tmp, tiny) / "commit.txt")
    elif ref is not None:
        (repo / "refs" / "main").write_text(ref)
    return tmp / "hub"


def _hub_case(name, expect, command="inspect", rev="", **hub):
    def build(tmp, tiny):
        cache = _hub(tmp, tiny, **hub)
        args = [command, f"acme/tiny-retnet{rev}"] + (["-o", str(tmp / "out")] if command == "convert" else [])
        return args, cache

    return Case("confinement", name, build, expect)


def _on_fla(name, edit, expect, command="inspect", category="confinement"):
    def build(tmp, tiny):
        _outside(tmp, tiny)
        d = _fla(tmp, edit)
        return [command, str(d)] + (["-o", str(tmp / "out")] if command == "convert" else []), None

    return Case(category, name, build, expect)


def _on_native(name, change, expect, command="inspect", category="special files", extra_args=(), demo=False):
    def build(tmp, tiny):
        if demo:  # a model with its tokenizer, for `generate`
            from retnet_edge.base.paths import DEMO_DIR

            tiny = DEMO_DIR
        d = _native(tmp, tiny)
        change(tmp, tiny, d)
        args = [command, str(d)] + (["-o", str(tmp / "out")] if command == "convert" else [])
        return args + [a.replace("{tmp}", str(tmp)) for a in extra_args], None

    return Case(category, name, build, expect)


def _link_out(name):
    def change(tmp, tiny, d):
        (d / name).unlink()
        (d / name).symlink_to(_outside(tmp, tiny) / "victim" / name)
    return change


def _fifo(name):
    def change(tmp, tiny, d):
        import os

        (d / name).unlink()
        os.mkfifo(d / name)
    return change


def _edit_config(**fields):
    def change(tmp, tiny, d):
        c = json.loads((d / "config.json").read_text())
        c.update(fields)
        (d / "config.json").write_text(json.dumps(c))
    return change


def _args(*args, category="messages", setup=None):
    def build(tmp, tiny):
        if setup:
            setup(tmp, tiny)
        return [a.replace("{tmp}", str(tmp)).replace("{tiny}", str(tiny)) for a in args], None
    return build


def _mkfifo(rel):
    def setup(tmp, tiny):
        import os

        os.mkfifo(tmp / rel)
    return setup


def _write(rel, text):
    def setup(tmp, tiny):
        (tmp / rel).write_text(text)
    return setup


def _empty_tokenizer(tmp, tiny):
    from tokenizers import Tokenizer, models

    Tokenizer(models.BPE()).save(str(tmp / "empty-tokenizer.json"))


def _backup_of_a_killed_run(tmp, tiny):
    import shutil
    import subprocess
    import sys

    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)
    shutil.copytree(tiny, tmp / f".out.retnet-edge-old.{dead}-1.abcd")


def _stale_temp_of_a_reused_pid(tmp, tiny):
    import os

    (tmp / f".out.retnet-edge-tmp.{os.getppid()}-1.abcd").mkdir()  # a live pid, not started at tick 1


def _disk_full(monkeypatch):
    import errno

    import retnet_edge.checkpoints.convert as convert

    def full(path, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(convert, "write_safetensors_streaming", full)


def issue29_cases() -> list[Case]:
    """Issue 29's classes (items 1, 2, 5, 6, 7, 10, 11, 12), each with the line it must be refused with."""
    outside_rel = "../../../outside/victim"  # from <hub>/models--acme--tiny-retnet/snapshots/
    cases = [
        # 1. Hub ids resolve inside their repo's cache folder
        _hub_case("hub-ref-relative-traversal", "does not hold a commit hash", ref=outside_rel),
        _hub_case("hub-ref-relative-traversal-convert", "does not hold a commit hash", "convert", ref=outside_rel),
        Case("confinement", "hub-ref-absolute-path", lambda tmp, tiny: (
            ["inspect", "acme/tiny-retnet"], _hub(tmp, tiny, ref=str(_outside(tmp, tiny) / "victim"))),
            "does not hold a commit hash"),
        Case("confinement", "hub-revision-absolute-path", lambda tmp, tiny: (
            ["inspect", f"acme/tiny-retnet@{_outside(tmp, tiny) / 'victim'}"], _hub(tmp, tiny)), "does not exist"),
        _hub_case("hub-revision-traversal", "does not exist", rev="@../../../outside/victim"),
        _hub_case("hub-snapshot-file-links-outside", "resolves outside", file_link="config.json"),
        _hub_case("hub-snapshot-weights-link-outside-convert", "resolves outside", "convert",
                  file_link="model.safetensors"),
        _hub_case("hub-snapshot-dir-links-outside", "resolves outside", snapshot_link=True),
        _hub_case("hub-ref-binary", "does not hold a commit hash", ref=b"\xff\xfe\x00\x01binary"),
        _hub_case("hub-ref-fifo", "is a named pipe", ref="fifo"),
        _hub_case("hub-ref-links-outside", "resolves outside", ref="link-out"),
        _hub_case("hub-id-trailing-newline", "does not exist", rev="\n"),
        _hub_case("hub-id-invalid-double-dash", "does not exist", rev="--x"),
        Case("confinement", "hub-id-invalid-dot-git", lambda tmp, tiny: (["inspect", "acme/x.git"], _hub(tmp, tiny)),
             "does not exist"),
        # 2. every file a checkpoint names stays inside it, is regular, and is listed once
        _on_fla("shard-relative-traversal", lambda d, doc: _first_shard(doc, "../outside/secret.safetensors"),
                "not a plain relative file name"),
        _on_fla("shard-relative-traversal-convert", lambda d, doc: _first_shard(doc, "../outside/secret.safetensors"),
                "not a plain relative file name", "convert"),
        _on_fla("shard-absolute-path", lambda d, doc: _first_shard(doc, str(d.parent / "outside/secret.safetensors")),
                "not a plain relative file name", "convert"),
        _on_fla("shard-system-file", lambda d, doc: _first_shard(doc, "/etc/passwd"), "not a plain relative file name"),
        _on_fla("shard-symlink-outside", lambda d, doc: (
            (d / "evil.safetensors").symlink_to(d.parent / "outside/secret.safetensors"),
            _first_shard(doc, "evil.safetensors")), "resolves outside", "convert"),
        _on_fla("shard-listed-twice", lambda d, doc: (
            (d / "alias.safetensors").symlink_to(doc["weight_map"][sorted(doc["weight_map"])[0]]),
            _first_shard(doc, "alias.safetensors")), "lists one file twice"),
        _on_fla("shard-name-not-a-string", lambda d, doc: _first_shard(doc, 5), "must map tensor names to shard"),
        _on_fla("shard-name-null", lambda d, doc: _first_shard(doc, None), "must map tensor names to shard"),
        _on_fla("shard-name-list", lambda d, doc: _first_shard(doc, ["a"]), "must map tensor names to shard"),
        _on_fla("weight-map-not-an-object", lambda d, doc: doc.update(weight_map=["x"]), "has no weight_map"),
        _on_native("native-weights-link-outside", _link_out("model.safetensors"), "resolves outside", "convert",
                   "confinement"),
        _on_native("native-config-link-outside", _link_out("config.json"), "resolves outside", "inspect",
                   "confinement"),
        _on_native("tokenizer-link-outside-convert", lambda tmp, tiny, d: (d / "tokenizer.json").symlink_to(
            _outside(tmp, tiny) / "secret.txt"), "resolves outside", "convert", "confinement"),
        # 5. inputs are regular files of bounded size, checked before they are opened
        _on_native("fifo-weights-inspect", _fifo("model.safetensors"), "is a named pipe"),
        _on_native("fifo-weights-convert", _fifo("model.safetensors"), "is a named pipe", "convert"),
        _on_native("fifo-weights-generate", _fifo("model.safetensors"), "is a named pipe", "generate",
                   extra_args=["hello", "-n", "1"], demo=True),
        _on_native("fifo-config", _fifo("config.json"), "is a named pipe"),
        _on_native("directory-as-weights", lambda tmp, tiny, d: ((d / "model.safetensors").unlink(),
                                                                 (d / "model.safetensors").mkdir()), "is a directory"),
        _on_native("huge-sparse-config", lambda tmp, tiny, d: open(d / "config.json", "r+b").truncate(65 * 2**20),
                   "at most"),
        _on_fla("fifo-shard", lambda d, doc: (
            (d / doc["weight_map"][sorted(doc["weight_map"])[0]]).unlink(),
            __import__("os").mkfifo(d / doc["weight_map"][sorted(doc["weight_map"])[0]])), "is a named pipe",
                category="special files"),
        Case("special files", "fifo-pytorch-bin", lambda tmp, tiny: _fifo_bin(tmp), "is a named pipe"),
        _on_native("fifo-tokenizer-in-model-dir", lambda tmp, tiny, d: __import__("os").mkfifo(d / "tokenizer.json"),
                   "is a named pipe", "generate", extra_args=["hello", "-n", "1"]),
        Case("special files", "tokenizer-option-fifo", _args("generate", "demo", "x", "-n", "1", "--tokenizer",
                                                             "{tmp}/tok.json", setup=_mkfifo("tok.json")),
             "is a named pipe"),
        Case("special files", "tokenizer-option-dev-zero", _args("generate", "demo", "x", "-n", "1", "--tokenizer",
                                                                 "/dev/zero"), "is a character device"),
        Case("special files", "train-corpus-fifo", _args("train", "{tmp}/corpus.txt", "-o", "{tmp}/out",
                                                         setup=_mkfifo("corpus.txt")), "is a named pipe"),
        Case("special files", "train-config-fifo", _args(
            "train", "{tmp}/corpus.txt", "-o", "{tmp}/out", "--config", "{tmp}/cfg.json",
            setup=lambda tmp, tiny: (_write("corpus.txt", "a b c.\n\nd e f.\n")(tmp, tiny),
                                     _mkfifo("cfg.json")(tmp, tiny))), "is a named pipe"),
        # 6. a config's free-form field is bounded where the config is validated
        _on_native("extra-1mb-inspect", _edit_config(extra={"blob": "x" * 2**20}), "config field extra holds",
                   category="sizes"),
        _on_native("extra-1mb-convert", _edit_config(extra={"blob": "x" * 2**20}), "config field extra holds",
                   "convert", "sizes"),
        _on_native("extra-not-an-object", _edit_config(extra="x" * 100), "extra must be a JSON object",
                   category="sizes"),
        # 10, 11, 12: outputs
        Case("outputs", "output-under-a-regular-file", _args("convert", "{tiny}", "-o", "{tmp}/file/out",
                                                             setup=_write("file", "x")), "is not a directory"),
        Case("outputs", "output-name-too-long", _args("convert", "{tiny}", "-o", "{tmp}/" + "n" * 300),
             "file name too long"),
        Case("outputs", "output-name-250-bytes", _args("convert", "{tiny}", "-o", "{tmp}/" + "n" * 250), None, 0,
             output="n" * 250),
        Case("outputs", "recovery-keeps-the-backup", _args("convert", "{tiny}", "-o", "{tmp}/out",
                                                           setup=_backup_of_a_killed_run),
             "already exists (restored from an interrupted run)", output="out"),
        Case("outputs", "stale-temp-of-a-reused-pid", _args("convert", "{tiny}", "-o", "{tmp}/out",
                                                            setup=_stale_temp_of_a_reused_pid), None, 0, output="out"),
        Case("outputs", "disk-full", _args("convert", "{tiny}", "-o", "{tmp}/out"), "no space left on the device",
             patch=_disk_full),
        # 12. messages
        Case("messages", "newline-in-a-path", _args("inspect", "{tmp}/no\nsuch"), "no\\nsuch does not exist"),
        _on_native("embed-scale-infinity", _edit_config(embed_scale=float("inf")), "positive finite", "generate",
                   "messages", extra_args=["hello", "-n", "4"], demo=True),
        Case("messages", "tokenizer-empty-vocabulary", _args("generate", "demo", "x", "-n", "1", "--tokenizer",
                                                             "{tmp}/empty-tokenizer.json", setup=_empty_tokenizer),
             "empty vocabulary"),
        # 7. bench: bounded up front, paths checked before measuring, no silent no-ops
        Case("bench", "bench-contexts-1e6-with-baseline", _args("bench", "demo", "--contexts", "0,1000000"),
             "would take about"),
        Case("bench", "bench-output-under-a-file", _args("bench", "demo", "--baseline", "none", "-o",
                                                         "{tmp}/file/r.json", setup=_write("file", "x")),
             "is not a directory"),
        Case("bench", "bench-plot-onto-a-file", _args("bench", "demo", "--baseline", "none", "--plot",
                                                      "{tmp}/plots", setup=_write("plots", "x")),
             "is a file", 2),  # click's own check of the option: a usage error
        Case("bench", "bench-runtime-cpp-on-a-checkpoint", _args("bench", "demo", "--runtime", "cpp"),
             "--runtime cpp runs ExecuTorch programs only"),
        Case("bench", "bench-absurd-run-refused", _args("bench", "demo", "--baseline", "none", "--contexts",
                                                        "1000000", "--tokens", "100000", "--repeat", "1000"),
             "at most 24.0 h"),
    ]
    return cases


def _fifo_bin(tmp: Path):
    import os

    d = _fla(tmp)
    for f in d.glob("*.safetensors*"):
        f.unlink()
    os.mkfifo(d / "pytorch_model.bin")
    return ["inspect", str(d)], None
