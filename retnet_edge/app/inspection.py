"""`inspect_model(path)`: what `retnet-edge inspect` reports, from the config, headers or manifest alone."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ..checkpoints.loader import check_weights, resolve_path
from ..core.presets import PRESETS, preset_config
from ..contract import MANIFEST_FILE
from ..contract.manifest import Manifest
from ..core.config import RetNetConfig

KV_CONTEXTS = (1024, 8192)


def parameter_count(cfg: RetNetConfig) -> int:
    """Parameters of the canonical model (a tied head counted once)."""
    return cfg.parameter_count()


def same_shape_kv_bytes(cfg: RetNetConfig, context: int, bytes_per_value: int = 2) -> int:
    """KV cache of a same-shape Transformer (the comparison `inspect` shows): 2 (K,V) * L * T * d_model values
    (fp16 by default). The bench's Transformer baseline has its own cache (`bench.baseline`)."""
    return 2 * cfg.n_layers * context * cfg.d_model * bytes_per_value


def inspect_model(path: str) -> dict[str, Any]:
    """Format, config, sizes and state-vs-KV-cache memory for a model path, `demo` or a preset name."""
    artifact = None
    if path in PRESETS and not Path(path).exists():
        fmt, cfg, source, files = "preset", preset_config(path), f"preset {path}", None
    elif (Path(path) / MANIFEST_FILE).is_file():  # an exported artifact: its manifest says everything
        m = Manifest.load(Path(path))
        cfg, source, fmt = m.config, str(path), f"artifact ({m.target})"
        files = {"file_bytes": m.size_bytes, "dtypes": [m.quant.scheme.value]}
        artifact = {"target": m.target, "flavor": m.flavor, "quant": m.quant.to_dict(),
                    "files": {k: dataclasses.asdict(v) for k, v in m.files.items()},
                    "validation": m.validation_status, "validation_passed": m.validated,
                    "source_model": m.source, "unlisted_files": m.unlisted_files(Path(path)),
                    "quant_layers": list(m.quant_layers)}
    else:
        fmt, cfg, files = check_weights(path)
        source = str(resolve_path(path))
    n = parameter_count(cfg)
    state = cfg.state_bytes(1)
    return {
        "source": source,
        "format": fmt,
        "config": cfg.to_dict(),
        "parameters": n,
        "stored": files,
        "weight_bytes": {"fp32": 4 * n, "fp16": 2 * n, "int8": n, "int4": n // 2},
        "state_shape_per_layer": [1, *cfg.state_shape],
        "state_bytes_per_sequence": state,
        "kv_cache_bytes_fp16": {str(t): same_shape_kv_bytes(cfg, t) for t in KV_CONTEXTS},
        "kv_cache_over_state": {str(t): round(same_shape_kv_bytes(cfg, t) / state, 2) for t in KV_CONTEXTS},
        **({"artifact": artifact} if artifact else {}),
    }


def _mib(n: int) -> str:
    return f"{n / 2**20:,.2f} MiB"


def render(report: dict[str, Any]) -> str:
    """Human-readable table of an inspect_model() report."""
    c = report["config"]
    lines = [
        f"source        {report['source']}  (format: {report['format']})",
        f"shape         L={c['n_layers']} d_model={c['d_model']} heads={c['n_heads']} value_dim={c['value_dim']} "
        f"ffn={c['ffn_dim']} vocab={c['vocab_size']}",
        f"math          rotary={c['rotary']} decay={c['decay']} activation={c['activation']} "
        f"normalize={c['normalize']} tie_embeddings={c['tie_embeddings']}",
        f"parameters    {report['parameters']:,}",
        *([f"stored        {_mib(report['stored']['file_bytes'])} ({', '.join(report['stored']['dtypes'])})"]
          if report.get("stored") else []),
        "weights       " + "  ".join(f"{k} {_mib(v)}" for k, v in report["weight_bytes"].items()),
        f"state         {_mib(report['state_bytes_per_sequence'])} per sequence (fp32, L x {report['state_shape_per_layer']}), "
        "constant in context length",
    ]
    if "artifact" in report:
        a = report["artifact"]
        flavor = f" ({a['flavor']} flavour)" if a.get("flavor") else ""
        prompt = (", prompt graph int8" if a["quant"].get("prefill_weights", "same") != "same" else
                  ", prompt graph int8 derived at load" if "prefill_int8.json" in a["files"] else "")
        lines.append(f"artifact      {a['target']}{flavor} {a['quant']['scheme']} (lm_head {a['quant']['lm_head']}, embedding "
                     f"{a['quant']['embedding']}{prompt}), validation {a['validation']}: "
                     + ", ".join(f"{k} {_mib(v['bytes'])}" for k, v in a["files"].items()))
        q = a["quant"]
        if q["scheme"] == "int4":  # how the int4 weights were chosen and rounded (issue 28)
            mixed = [m for m in (q.get("int8_modules") or "").split(",") if m]
            measured = f" (the mix measured {q['auto_kl']:.2e})" if q.get("auto_kl") else ""
            bound = f", chosen under --max-kl {q['max_kl']:g}{measured} on {q.get('calibration') or 'calibration text'}" \
                if q.get("max_kl") else ""
            lines.append(f"int4          {q.get('int4_method', 'rtn')} g{q['group_size']}; "
                         + (f"{len(mixed)} linear(s) kept int8: {', '.join(mixed)}" if mixed else "every body linear int4")
                         + bound)
            if q.get("int4_params"):  # a calibrated method: its parameters, its text, the layers it found hardest
                lines.append(f"              {q['int4_method']} ({q['int4_params']}) on {q.get('calibration')}")
            for x in a.get("quant_layers", []):
                lines.append(f"              {x['module']}: output error {x['error']:.2e} (rtn {x['rtn_error']:.2e})")
    for t, b in report["kv_cache_bytes_fp16"].items():
        lines.append(f"KV cache @{t:>5} {_mib(b)} for a same-shape Transformer (fp16) = "
                     f"{report['kv_cache_over_state'][t]}x the RetNet state")
    return "\n".join(lines)
