"""The figures of ``benchmarks/gpu_check.sh`` as Markdown tables, from what its steps wrote to OUT.

    python benchmarks/gpu_summary.py OUT

Reads ``OUT/detect-*.json`` (benchmarks/detect_efficiency.py --out), ``OUT/train.json``
(benchmarks/train_overhead.py --out) and the export lines of ``OUT/gpu_check.log``.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path


def detect_rows(out: Path) -> list[str]:
    rows = ["| model | decode | images | bare loop images/s | detbatch images/s | ratio | ratio after 1st commit "
            "| GPU busy 1st→last commit | GPU busy, bare loop |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for path in sorted(out.glob("detect-*.json")):
        figures = json.loads(path.read_text())
        for decode, pairs in figures.get("throughput", {}).items():
            for pair in pairs:
                bare, det = pair["bare"], pair["detbatch"]
                busy = det.get("gpu_busy_percent_after_first_commit")
                rows.append(f"| {figures['model']} | {decode} | {det['images']} | {bare['images_per_second']:.1f} "
                            f"| {det['images_per_second']:.1f} | {pair['ratio']:.3f} | {pair['ratio_after_first_commit']:.3f} "
                            f"| {_percent(busy)} | {_percent(bare.get('gpu_busy_percent'))} |")
    return rows


def train_rows(out: Path) -> list[str]:
    path = out / "train.json"
    if not path.exists():
        return []
    t = json.loads(path.read_text())
    bare = (t["bare_1"] + t["bare_1_again"]) / 2
    return ["| training | images/s |", "|---|---:|",
            f"| bare loop ({t['model']}, {t['device']}, AMP on cuda), mean of two | {bare:.1f} |",
            f"| detbatch train, 1 worker | {t['detbatch_1']:.1f} ({t['detbatch_1'] / bare - 1:+.1%}; goal ≥ -10%) |"]


def export_rows(out: Path) -> list[str]:
    log = out / "gpu_check.log"
    text = log.read_text() if log.exists() else ""
    return [line.strip() for line in text.splitlines() if re.match(r"\s*(export: |parity on )", line)]


def _percent(value: float | None) -> str:
    return "-" if value is None or value != value else f"{value:.0f}%"


def main() -> None:
    out = Path(sys.argv[1])
    for block in (detect_rows(out), train_rows(out), export_rows(out)):
        if block:
            print("\n".join(block), end="\n\n")


if __name__ == "__main__":
    main()
