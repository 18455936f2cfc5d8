"""Meta-test: every (target x quant scheme) and every checkpoint format has a test that exercises it."""
from __future__ import annotations

import re
from pathlib import Path

from retnet_edge.exporters import TARGETS
from retnet_edge.loader import FORMATS
from retnet_edge.quant import QuantScheme

TESTS = Path(__file__).parent
# where each pair is exercised: (file, a regex that must occur in it)
EXPORT_COVERAGE = {
    ("onnx", "fp32"): ("test_onnx.py", r'QuantConfig\("fp32"\)'),
    ("onnx", "int8"): ("test_onnx.py", r'\("int8", "Q8"'),
    ("onnx", "int4"): ("test_onnx.py", r'\("int4", "Q8"'),
    ("executorch", "fp32"): ("test_executorch.py", r'QuantConfig\("fp32"\)'),
    ("executorch", "int8"): ("test_executorch.py", r'\("int8", 0\.'),
    ("executorch", "int4"): ("test_executorch.py", r'\("int4", 0\.'),
}
FORMAT_COVERAGE = {
    "native": ("test_native.py", r"save_pretrained"),
    "torchscale": ("test_checkpoints.py", r'format"\] == "torchscale"'),
    "fairseq": ("test_checkpoints.py", r'format"\] == "fairseq"'),
    "syncdoth": ("test_checkpoints.py", r'format"\] == "syncdoth"'),
    "fla": ("test_checkpoints.py", r'format"\] == "fla"'),
}


def test_every_target_and_scheme_is_tested():
    wanted = {(t, s.value) for t in TARGETS for s in QuantScheme}
    assert wanted == set(EXPORT_COVERAGE), wanted ^ set(EXPORT_COVERAGE)
    for pair, (fname, pattern) in EXPORT_COVERAGE.items():
        assert re.search(pattern, (TESTS / fname).read_text()), pair


def test_every_checkpoint_format_is_tested():
    assert set(FORMATS) == set(FORMAT_COVERAGE)
    for fmt, (fname, pattern) in FORMAT_COVERAGE.items():
        assert re.search(pattern, (TESTS / fname).read_text()), fmt
