#!/usr/bin/env python3
"""Prompt levers on exported ONNX artifacts: time to first token of a 512-token prompt by prefill chunk size
(128 / 256 / 512) and with the LM head over every position vs the last only (`logits_to_keep`).

    python benchmarks/prompt_levers.py benchmarks/results/prompt_levers_<cpu>.json ART [ART ...]

Best of 3 per cell, 1 and 2 threads, random prompt ids; run on an otherwise idle machine.
"""
import json
import sys
import time

import numpy as np

from retnet_edge.runtimes import load_runner
from retnet_edge.bench.machine import machine_facts
out = {"machine": machine_facts(), "rows": []}
rng = np.random.default_rng(0)
prompt = rng.integers(3, 32000, 512).tolist()
for art in sys.argv[2:]:
    for threads in (1, 2):
        r = load_runner(art, threads=threads, verify_files=False)
        for chunk in (128, 256, 512):
            r.session.prefill_chunk = chunk
            for all_logits in (False, True):
                if all_logits and chunk != 256:
                    continue
                ts = []
                for _ in range(3):
                    r.reset(); t = time.perf_counter(); r.prefill(prompt, all_logits=all_logits); ts.append(time.perf_counter() - t)
                row = {"artifact": art.rstrip("/").split("/")[-1], "threads": threads, "chunk": chunk, "all_logits": all_logits,
                       "ttft_ms": round(min(ts) * 1e3, 1), "pp512_tok_s": round(512 / min(ts), 1)}
                print(json.dumps(row), flush=True); out["rows"].append(row)
        del r
out["machine"]["load_average_after"] = machine_facts()["load_average"]
open(sys.argv[1], "w").write(json.dumps(out, indent=1))
