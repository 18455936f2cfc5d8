"""demo-mc's data: the JSONL beside this file, as lm-eval's `custom_dataset` (works from any directory, offline)."""
from __future__ import annotations

import json
from pathlib import Path


def load(**_metadata):
    """{"test": the items}; lm-eval passes its task metadata, which the items do not depend on."""
    import datasets  # lm-eval's own dependency: imported when the task loads, not with the package

    path = Path(__file__).with_name("demo-mc.jsonl")
    items = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(items)})
