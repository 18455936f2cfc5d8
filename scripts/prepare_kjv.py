#!/usr/bin/env python3
"""Rebuild the demo model's corpus: the King James Bible (public domain) from Debian's bible-kjv packages.

Downloads bible-kjv and bible-kjv-text with `apt-get download` (Debian's registry), unpacks them with
dpkg -x, prints every verse with the package's own `bible` tool, and splits by chapter: every 16th
chapter is the held-out evaluation text (never trained on), the rest is the training text. Verse
references are dropped; verses are one per line, chapters separated by a blank line.

    python scripts/prepare_kjv.py -o .data/kjv      # writes train.txt, heldout.txt, SOURCE.txt
"""
from __future__ import annotations

import argparse
import re
import subprocess
import tempfile
from pathlib import Path

HELDOUT_EVERY = 16
REF = re.compile(r"^([1-3]?[A-Za-z]+)(\d+):(\d+) (.*)$")


def fetch_verses(work: Path) -> list[str]:
    for pkg in ("bible-kjv", "bible-kjv-text"):
        subprocess.run(["apt-get", "download", pkg], cwd=work, check=True, capture_output=True)
    root = work / "root"
    for deb in sorted(work.glob("*.deb")):
        subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
    out = subprocess.run([str(root / "usr/bin/bible"), "-p", str(root / "usr/lib"), "-f", "gen1:1-rev22:21"],
                         check=True, capture_output=True, text=True).stdout
    return out.splitlines()


def split_chapters(lines: list[str]) -> list[str]:
    """Group verse lines into chapter texts (one verse per line, references removed)."""
    chapters: list[list[str]] = []
    key = None
    for line in lines:
        m = REF.match(line.strip())
        if not m:
            continue
        book, chap, _, text = m.groups()
        if (book, chap) != key:
            chapters.append([])
            key = (book, chap)
        chapters[-1].append(text.strip())
    return ["\n".join(c) for c in chapters]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-o", "--output", default=".data/kjv")
    args = ap.parse_args()
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        chapters = split_chapters(fetch_verses(Path(tmp)))
    held = [c for i, c in enumerate(chapters) if i % HELDOUT_EVERY == HELDOUT_EVERY - 1]
    train = [c for i, c in enumerate(chapters) if i % HELDOUT_EVERY != HELDOUT_EVERY - 1]
    (out / "train.txt").write_text("\n\n".join(train) + "\n")
    (out / "heldout.txt").write_text("\n\n".join(held) + "\n")
    (out / "SOURCE.txt").write_text(
        "King James Version of the Bible (1611), public domain; text from Debian's bible-kjv-text 4.38 via its "
        f"`bible` tool. Split by chapter: every {HELDOUT_EVERY}th chapter held out ({len(held)} of {len(chapters)}).\n")
    print(f"{len(chapters)} chapters: {len(train)} train, {len(held)} held out -> {out}")


if __name__ == "__main__":
    main()
