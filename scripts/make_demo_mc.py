#!/usr/bin/env python3
"""Rebuild `demo-mc`, the demo's multiple-choice task, from the demo's held-out text.

Deterministic (see retnet_edge/app/tasks.py): running it again rewrites the shipped JSONL byte for byte,
and tests/app/test_tasks.py checks that it does.

    python scripts/make_demo_mc.py            # writes retnet_edge/assets/demo/tasks/demo-mc.jsonl
"""
from __future__ import annotations

import argparse
from pathlib import Path

from retnet_edge.app.tasks import DEMO_MC_FILE, MC_ITEMS, build_demo_mc, demo_mc_jsonl
from retnet_edge.base.paths import DEMO_DIR


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--text", type=Path, default=DEMO_DIR / "heldout.txt")
    ap.add_argument("--items", type=int, default=MC_ITEMS)
    ap.add_argument("-o", "--output", type=Path, default=DEMO_MC_FILE)
    args = ap.parse_args()
    items = build_demo_mc(args.text.read_text(encoding="utf-8"), args.items)
    args.output.write_text(demo_mc_jsonl(items), encoding="utf-8")
    print(f"wrote {args.output}: {len(items)} items")


if __name__ == "__main__":
    main()
