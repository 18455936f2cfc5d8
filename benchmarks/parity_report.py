#!/usr/bin/env python3
"""Form-equivalence numbers behind the tests: max |Δlogits| / max |logits| of chunkwise and recurrent vs
parallel, fp32, seeded models (std 0.05), over the test matrix. Writes benchmarks/results/parity.json."""
from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "benchmarks")]
from common import write_result  # noqa: E402
from helpers import make_model  # noqa: E402


def main() -> None:
    worst: dict[str, float] = {}
    with torch.no_grad():
        for rotary in ("torchscale", "fla"):
            for batch in (1, 3):
                m = make_model(rotary=rotary, embed_scale=8.0)
                for T in (1, 7, 64, 513):
                    ids = torch.randint(0, 101, (batch, T), generator=torch.Generator().manual_seed(T))
                    ref = m(ids)
                    scale = ref.abs().max()
                    for chunk in (1, 16, 64):
                        x = ids if not (T == 513 and chunk == 1) else ids[:, :130]
                        d = ((m.forward_chunkwise(x, chunk) - ref[:, : x.shape[1]]).abs().max() / scale).item()
                        worst[f"chunkwise/{rotary}"] = max(worst.get(f"chunkwise/{rotary}", 0.0), d)
                    d = ((m.forward_recurrent(ids) - ref).abs().max() / scale).item()
                    worst[f"recurrent/{rotary}"] = max(worst.get(f"recurrent/{rotary}", 0.0), d)
    worst = {k: float(f"{v:.3e}") for k, v in worst.items()}
    print(worst)
    write_result("parity", {"metric": "max |dlogits| / max |logits| vs parallel, fp32", "worst": worst})


if __name__ == "__main__":
    main()
