#!/usr/bin/env python3
"""Table and plot of the privacy comparison (docs/privacy.md) from `fedlora compare` outputs.

Usage: privacy_table.py PREFIX SVG_OUT
Reads PREFIX-inf, PREFIX-8, PREFIX-3, PREFIX-1 (each a `fedlora compare --out` directory; a
missing one is left out), prints a Markdown table of final accuracy per method and epsilon
(with the largest epsilon any worker spent), and writes accuracy against epsilon as SVG.
Standard library only.
"""
import json
import os
import sys

EPSILONS = ["inf", "8", "3", "1"]
COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]


def load(prefix):
    table = {}  # method -> eps -> (accuracy, worker epsilon max, versions)
    methods = []
    for eps in EPSILONS:
        path = f"{prefix}-{eps}/results.json"
        if not os.path.exists(path):
            continue
        for r in json.load(open(path))["methods"]:
            m = r["method"]
            if m not in methods:
                methods.append(m)
            spent = None
            summary = f"{prefix}-{eps}/runs/{m}/summary.json"
            if os.path.exists(summary):
                privacy = json.load(open(summary)).get("privacy")
                if privacy:
                    spent = privacy.get("worker_epsilon_max")
            table.setdefault(m, {})[eps] = (r["final_accuracy"], spent, r.get("versions"))
    return methods, table


def svg(methods, table, out):
    w, h, left, right, top, bottom = 560, 330, 60, 110, 20, 45
    lo, hi = 0.3, 0.85
    xs = {eps: left + i * (w - left - right) / (len(EPSILONS) - 1) for i, eps in enumerate(EPSILONS)}
    y = lambda a: top + (hi - a) / (hi - lo) * (h - top - bottom)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">',
             f'<rect width="{w}" height="{h}" fill="white"/>']
    for k in range(0, 12):
        a = lo + 0.05 * k
        if a > hi + 1e-9:
            break
        parts.append(f'<line x1="{left}" y1="{y(a):.1f}" x2="{w - right}" y2="{y(a):.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{left - 6}" y="{y(a) + 4:.1f}" text-anchor="end">{a:.2f}</text>')
    for eps, x in xs.items():
        label = "no DP" if eps == "inf" else f"eps {eps}"
        parts.append(f'<text x="{x:.1f}" y="{h - bottom + 16}" text-anchor="middle">{label}</text>')
    parts.append(f'<text x="{(left + w - right) / 2:.1f}" y="{h - 8}" text-anchor="middle">'
                 'record-level DP-SGD budget per worker (delta 1e-5)</text>')
    parts.append(f'<text x="14" y="{(top + h - bottom) / 2:.1f}" transform="rotate(-90 14 {(top + h - bottom) / 2:.1f})" '
                 'text-anchor="middle">final test accuracy</text>')
    for i, m in enumerate(methods):
        c = COLORS[i % len(COLORS)]
        pts = [(xs[e], y(table[m][e][0])) for e in EPSILONS if e in table[m]]
        parts.append('<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>'
                     % (c, " ".join(f"{px:.1f},{py:.1f}" for px, py in pts)))
        for px, py in pts:
            parts.append(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3" fill="{c}"/>')
        ly = top + 14 + 16 * i
        parts.append(f'<line x1="{w - right + 10}" y1="{ly - 4}" x2="{w - right + 30}" y2="{ly - 4}" stroke="{c}" stroke-width="2"/>')
        parts.append(f'<text x="{w - right + 35}" y="{ly}">{m}</text>')
    parts.append("</svg>")
    with open(out, "w") as f:
        f.write("\n".join(parts) + "\n")


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    methods, table = load(sys.argv[1])
    if not methods:
        sys.exit(f"no results under {sys.argv[1]}-{{inf,8,3,1}}")
    present = [e for e in EPSILONS if any(e in table[m] for m in methods)]
    print("| method | " + " | ".join("no DP" if e == "inf" else f"eps {e}" for e in present) + " |")
    print("| --- | " + " | ".join("---" for _ in present) + " |")
    for m in methods:
        cells = []
        for e in present:
            if e not in table[m]:
                cells.append("-")
                continue
            acc, spent, versions = table[m][e]
            note = f" ({versions} v" + (f", spent {spent:.2f})" if spent is not None else ")")
            cells.append(f"{acc:.4f}{note}")
        print(f"| {m} | " + " | ".join(cells) + " |")
    svg(methods, table, sys.argv[2])


if __name__ == "__main__":
    main()
