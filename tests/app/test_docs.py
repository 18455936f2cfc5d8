"""The docs' runnable samples run here: docs/onnx.md's plain-onnxruntime loop (≤ 25 lines) on a demo export."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from retnet_edge.cli import main

DOCS = Path(__file__).resolve().parents[2] / "docs"


def _python_blocks(md: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", md.read_text(), flags=re.S)


def test_onnx_md_generation_loop_matches_the_runner(demo_export, tmp_path):
    (loop,) = _python_blocks(DOCS / "onnx.md")
    assert len(loop.strip().splitlines()) <= 25
    script = tmp_path / "loop.py"
    script.write_text(loop)
    art = demo_export("onnx", "int8")
    out = subprocess.run([sys.executable, str(script), str(art.path), "And God said", "12"], capture_output=True,
                         text=True, check=True).stdout.strip()
    res = CliRunner().invoke(main, ["generate", str(art.path), "And God said", "-n", "12", "--temperature", "0",
                                    "--no-stream"])
    assert res.exit_code == 0, res.output
    assert out == res.stdout.strip() and len(out) > len("And God said") + 10


def test_docs_exist_and_name_only_real_files():
    """Every page (docs/, README, ARCHITECTURE, RESULTS) names only files the checkout has (modules move)."""
    for name in ("onnx.md", "formats.md", "deploy-android.md", "deploy-ios.md", "genai.md"):
        assert (DOCS / name).is_file()
    pages = [*DOCS.glob("*.md"), DOCS.parent / "README.md", DOCS.parent / "ARCHITECTURE.md",
             DOCS.parent / "benchmarks" / "RESULTS.md"]
    for page in pages:
        text = page.read_text()
        for path in re.findall(r"`((?:benchmarks|retnet_edge|docs|scripts|tests)/[\w/.-]+\.(?:py|sh|md|cpp|c|json))`", text):
            assert (DOCS.parent / path).is_file(), f"{page.name} names {path}, which does not exist"


def test_results_page_and_readme_figures_come_from_the_bench_json():
    """benchmarks/RESULTS.md and the README's bench block are what results_md.py renders from the newest bench
    JSON per machine: a hand-edited figure or a new run without re-rendering fails here."""
    script = DOCS.parent / "benchmarks" / "results_md.py"
    res = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    readme = (DOCS.parent / "README.md").read_text()
    assert readme.count("<!-- bench:begin") == 1 and readme.count("<!-- bench:end -->") == 1
