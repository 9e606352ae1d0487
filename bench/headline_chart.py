"""The README's chart: bench/results/quantization.md's committed table, drawn by the report's own plot.

    .venv/bin/python bench/headline_chart.py        # -> docs/quantization.png

It re-draws measured numbers only (no model runs). That table was measured when the static per-tensor
scheme was still called W4A8 (smooth-then-quant 0.1); it is labelled W4A8-static here, its name since 0.2.
"""
from __future__ import annotations

import re
from pathlib import Path

from smooth_then_quant.report.quantization import STATE_LABEL, plot_quantization

HERE = Path(__file__).resolve().parent
RENAMED = {"W4A8": "W4A8-static"}  # the 0.1 name of the static scheme


def rows_of(md: str) -> list[dict]:
    """The '| scheme | smoothing | offline PPL (ΔPPL) |' table of a report.md-style file."""
    label_state = {v: k for k, v in STATE_LABEL.items()}
    rows = []
    for line in md.splitlines():
        m = re.match(r"\| (\S+) \| ([^|]+?) \| ([0-9.]+) \(", line)
        if m and m.group(2) in label_state:
            rows.append({"scheme": RENAMED.get(m.group(1), m.group(1)), "state": label_state[m.group(2)],
                         "ppl": {"offline": float(m.group(3))}})
    return rows


def main() -> None:
    rows = rows_of((HERE / "results" / "quantization.md").read_text(encoding="utf-8"))
    out = HERE.parent / "docs" / "quantization.png"
    out.parent.mkdir(exist_ok=True)
    plot_quantization({"datasets": ["offline"], "rows": rows}, out)
    print(f"{out}: {len(rows)} cells")


if __name__ == "__main__":
    main()
