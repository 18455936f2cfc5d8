"""manifest.json as a type: what an artifact holds (files + sha256), how it was made, how it validated.

`Manifest.load(directory)` reads and checks it once (types, names, hashes); every later stage reads its
fields (`manifest.target`, `manifest.config`, `manifest.quant_config()`, `manifest.flavor`,
`manifest.worst_check()`), never the JSON. Manifests written before the type existed load too: their
fields are the same, a missing optional one takes its old default.

Rules it enforces (issue 14, issue 29): every path it names — a file entry, the tokenizer, each graph —
is a plain file name inside the artifact and listed in `files`; the flavour is the manifest's, never
guessed from files lying beside it (`unlisted_files` names those, and `verify` reports them).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__
from ..base.io_utils import read_json
from ..core.config import RetNetConfig
from ..errors import ArtifactError, RetNetEdgeError
from . import MANIFEST_FILE, TARGET_FLAVORS
from .quant import QuantConfig

HEX = set("0123456789abcdef")
MAX_OPTION_CHARS = 200  # an option's value is a short word (a flavour); a manifest is not a data store


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class FileEntry:
    bytes: int
    sha256: str


def _plain_name(name: Any) -> bool:
    """A file name that stays inside the artifact: no directory part, not the manifest itself."""
    return (isinstance(name, str) and name not in ("", ".", "..", MANIFEST_FILE) and "/" not in name
            and "\\" not in name and "\0" not in name and "\n" not in name)


@dataclass(frozen=True)
class Manifest:
    """An artifact's manifest, checked once where it is read or built."""

    target: str
    config: RetNetConfig
    quant: QuantConfig
    files: dict[str, FileEntry]
    graphs: tuple[str, ...] = ()
    options: dict[str, str] = field(default_factory=dict)  # the target's options (flavor)
    tokenizer: str | None = None  # a file of the artifact
    source: str | None = None  # the model it was exported from (verify's default reference)
    validation: dict | None = None  # the gate's report (ValidationReport.to_dict); None: skipped
    quant_fallbacks: tuple[str, ...] = ()
    export_seconds: float | None = None
    # the int4 linears whose rounding moved their output most on calibration text (a calibrated method
    # measures it): [{"module", "error", "rtn_error"}], relative output error, worst first
    quant_layers: tuple[dict, ...] = ()
    streamed: bool = True
    version: str = __version__
    extra: dict = field(default_factory=dict)  # fields this version does not know (kept, not used)

    def __post_init__(self) -> None:
        # the head's precision as resolved ("auto" -> what it became): what the JSON holds, and what a reader gets
        object.__setattr__(self, "quant", QuantConfig(**self.quant.to_dict()))

    # --- reading ---------------------------------------------------------------------------------------
    @classmethod
    def load(cls, directory: str | Path, check_hashes: bool = True) -> "Manifest":
        """Read and check DIR/manifest.json; with check_hashes every listed file must match its sha256."""
        directory = Path(directory)
        path = directory / MANIFEST_FILE
        if not path.is_file():
            raise ArtifactError(f"{directory} is not an exported artifact (no {MANIFEST_FILE})")
        try:
            manifest = cls.from_dict(read_json(path), path)
        except RetNetEdgeError as exc:
            raise ArtifactError(str(exc)) from exc
        if check_hashes:
            manifest.check_files(directory)
        return manifest

    @classmethod
    def from_dict(cls, d: Any, path: Path | str = MANIFEST_FILE) -> "Manifest":
        """Types and names before anything is used (a bad field raised KeyError/TypeError deep inside, and a
        file entry like `../../bigfile` made `inspect` hash a file outside the artifact)."""
        def bad(why: str) -> ArtifactError:
            return ArtifactError(f"{path}: {why}")

        if not isinstance(d, dict):
            raise bad("not a JSON object")
        if not isinstance(d.get("target"), str) or not d["target"]:
            raise bad("no \"target\" string")
        files = d.get("files")
        if not isinstance(files, dict) or not files:
            raise bad("no \"files\" table")
        entries = {}
        for name, meta in files.items():
            if not _plain_name(name):
                raise bad(f"file entry {str(name)[:80]!r} is not a plain file name in the artifact")
            if not (isinstance(meta, dict) and type(meta.get("bytes")) is int and meta["bytes"] >= 0
                    and isinstance(meta.get("sha256"), str) and len(meta["sha256"]) == 64 and set(meta["sha256"]) <= HEX):
                raise bad(f"file entry {name!r} needs integer bytes and a sha256 hex digest")
            entries[name] = FileEntry(meta["bytes"], meta["sha256"])
        if not isinstance(d.get("config"), dict):
            raise bad("no \"config\" object")
        try:
            config = RetNetConfig.from_dict(d["config"])
        except RetNetEdgeError as exc:
            raise bad(f"its config is invalid ({exc})") from exc
        quant = d.get("quant")
        if not (isinstance(quant, dict) and isinstance(quant.get("scheme"), str)):
            raise bad("no \"quant\" object with a scheme")
        known = {f.name for f in dataclasses.fields(QuantConfig)}
        if not set(quant) <= known or not all(isinstance(v, (str, int, float)) and not isinstance(v, bool)
                                              for v in quant.values()):  # float: --quant auto's max_kl
            raise bad(f"\"quant\" holds fields other than {', '.join(sorted(known))} or values of the wrong type")
        try:
            qc = QuantConfig(**quant)
        except (RetNetEdgeError, TypeError) as exc:
            raise bad(f"its quant is invalid ({exc})") from exc
        tokenizer = d.get("tokenizer")
        if tokenizer is not None and not (_plain_name(tokenizer) and tokenizer in entries):
            raise bad(f"\"tokenizer\" {str(tokenizer)[:80]!r} is not a file listed in the artifact")
        graphs = d.get("graphs", [])
        if not (isinstance(graphs, list) and all(_plain_name(g) and g in entries for g in graphs)):
            raise bad("\"graphs\" must list files of the artifact")
        options = d.get("options") or {}
        if not (isinstance(options, dict) and all(isinstance(k, str) and isinstance(v, str) and len(v) <= MAX_OPTION_CHARS
                                                 for k, v in options.items())):
            raise bad("\"options\" must map names to short strings")
        flavor = options.get("flavor")
        if flavor is not None and flavor not in TARGET_FLAVORS.get(d["target"], (flavor,)):
            raise bad(f"unknown {d['target']} flavor {flavor!r}")
        validation = d.get("validation")
        if validation == "skipped":
            validation = None
        elif not (isinstance(validation, dict) and isinstance(validation.get("passed"), bool)
                  and isinstance(validation.get("checks"), list)
                  and all(isinstance(c, dict) and isinstance(c.get("name"), str) and _is_number(c.get("kl"))
                          for c in validation["checks"])):
            raise bad("\"validation\" must be \"skipped\" or the gate's report (passed, checks)")
        fallbacks = d.get("quant_fallbacks", [])
        if not (isinstance(fallbacks, list) and all(isinstance(f, str) for f in fallbacks)):
            raise bad("\"quant_fallbacks\" must be a list of module names")
        layers = d.get("quant_layers", [])
        if not (isinstance(layers, list) and all(isinstance(x, dict) and isinstance(x.get("module"), str)
                                                 and _is_number(x.get("error")) and _is_number(x.get("rtn_error"))
                                                 for x in layers)):
            raise bad("\"quant_layers\" must be a list of {module, error, rtn_error}")
        seconds = d.get("export_seconds")
        source = d.get("source")
        known_keys = {"tool", "version", "target", "files", "config", "quant", "tokenizer", "graphs", "options",
                      "validation", "quant_fallbacks", "export_seconds", "streamed", "source",
                      "state_bytes_per_sequence", "quant_layers"}
        return cls(target=d["target"], config=config, quant=qc, files=entries, graphs=tuple(graphs),
                   options=dict(options), tokenizer=tokenizer, source=source if isinstance(source, str) else None,
                   validation=validation, quant_fallbacks=tuple(fallbacks), quant_layers=tuple(layers),
                   export_seconds=float(seconds) if _is_number(seconds) else None,
                   streamed=bool(d.get("streamed", False)), version=str(d.get("version", "")),
                   extra={k: v for k, v in d.items() if k not in known_keys})

    def check_files(self, directory: Path) -> None:
        """Every listed file exists, is a regular file inside the artifact and has its recorded sha256."""
        for name, meta in self.files.items():
            f = Path(directory) / name
            if f.is_symlink() or not f.is_file():
                raise ArtifactError(f"{directory}: {name} listed in the manifest is missing (or not a regular file)")
            if f.stat().st_size != meta.bytes or sha256(f) != meta.sha256:
                raise ArtifactError(f"{directory}: {name} does not match its manifest sha256 (modified or corrupt)")

    def unlisted_files(self, directory: Path) -> list[str]:
        """Files in the artifact the manifest does not list: they change nothing, and `verify` names them."""
        return sorted(p.name for p in Path(directory).iterdir() if p.name not in self.files and p.name != MANIFEST_FILE)

    # --- what later stages ask -------------------------------------------------------------------------
    @property
    def flavor(self) -> str | None:
        """The target's flavour (None for a target without flavours)."""
        return self.options.get("flavor", (TARGET_FLAVORS.get(self.target) or (None,))[0])

    def quant_config(self) -> QuantConfig:
        return self.quant

    @property
    def validated(self) -> bool:
        return self.validation is not None and self.validation["passed"]

    @property
    def validation_status(self) -> str:
        """"passed", "FAILED" or "skipped" (exported with --no-validate)."""
        return "skipped" if self.validation is None else "passed" if self.validation["passed"] else "FAILED"

    def worst_check(self) -> dict | None:
        """The gate's check with the largest KL (what a one-line verdict shows); None when skipped."""
        if not self.validation or not self.validation["checks"]:
            return None
        return max(self.validation["checks"], key=lambda c: c["kl"])

    @property
    def size_bytes(self) -> int:
        return sum(f.bytes for f in self.files.values())

    def to_dict(self) -> dict:
        """The JSON form (what manifest.json holds)."""
        return {**self.extra, "tool": "retnet-edge", "version": self.version, "target": self.target,
                "graphs": list(self.graphs), "quant": self.quant.to_dict(), "config": self.config.to_dict(),
                "quant_fallbacks": list(self.quant_fallbacks),
                **({"quant_layers": list(self.quant_layers)} if self.quant_layers else {}),
                "source": self.source, "tokenizer": self.tokenizer,
                "state_bytes_per_sequence": self.config.state_bytes(1),
                "validation": self.validation if self.validation is not None else "skipped",
                "export_seconds": self.export_seconds, "streamed": self.streamed,
                **({"options": self.options} if self.options else {}),
                "files": {k: dataclasses.asdict(v) for k, v in self.files.items()}}

    # --- writing ---------------------------------------------------------------------------------------
    @classmethod
    def write(cls, directory: Path, **fields) -> "Manifest":
        """Hash every file in the directory and write manifest.json beside them (fields as the dataclass's)."""
        files = {p.name: FileEntry(p.stat().st_size, sha256(p))
                 for p in sorted(Path(directory).iterdir()) if p.is_file() and p.name != MANIFEST_FILE}
        manifest = cls(files=files, **fields)
        (Path(directory) / MANIFEST_FILE).write_text(json.dumps(manifest.to_dict(), indent=2, sort_keys=True))
        return manifest


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)
