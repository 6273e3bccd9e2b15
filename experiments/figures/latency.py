#!/usr/bin/env python3
"""The paper's Fig 7 type: MoE step latency against activated experts at fixed total experts, beside the dense
model of the same active width, from scripts/latency.sh's table (model, a, active_hidden, ms_per_step, tok_per_s).

Three panels with a shared x (activated experts a, log2): ms per step, tokens per second, and the MoE's cost
relative to its dense twin (MoE ms / dense ms). usage: latency.py TABLE.tsv [--out PNG]
"""
import argparse
import csv
import os
import sys

from outputs import ArgumentParser, run
from sweep_index import pyplot, save_figure

plt = pyplot()


def read_table(path):
    """{model: [(a, active_hidden, ms_per_step, tok_per_s)]} sorted by a; the header comment as the title."""
    rows, title = {}, ""
    with open(path) as f:
        lines = [l for l in f if l.strip()]
    if lines and lines[0].startswith("#"):
        title = lines.pop(0).lstrip("# ").strip()
    for r in csv.DictReader(lines, delimiter="\t"):
        try:
            row = (int(r["a"]), int(r["active_hidden"]), float(r["ms_per_step"]), float(r["tok_per_s"]))
        except (TypeError, ValueError):
            continue  # a bench that failed leaves a row without numbers
        rows.setdefault(r["model"], []).append(row)
    for v in rows.values():
        v.sort()
    return rows, title


def main():
    ap = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("table")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    rows, title = read_table(a.table)
    if "moe" not in rows:
        raise SystemExit(f"{a.table}: no MoE rows")
    fig, (ax, tx, rx) = plt.subplots(1, 3, figsize=(12, 3.4), sharex=True)
    style = {"moe": ("o-", "C0", "MoE (N fixed, a activated)"), "dense": ("s--", "C1", "dense, hidden = a x expert width")}
    for model, pts in rows.items():
        fmt, colour, label = style.get(model, ("x:", "C2", model))
        ax.plot([p[0] for p in pts], [p[2] for p in pts], fmt, color=colour, label=label, ms=4)
        tx.plot([p[0] for p in pts], [p[3] / 1e6 for p in pts], fmt, color=colour, label=label, ms=4)
    ax.set_xscale("log", base=2)
    for axis, ylabel in ((ax, "ms / training step"), (tx, "training tokens / s (millions)")):
        axis.set_xlabel("activated experts a")
        axis.set_ylabel(ylabel)
        axis.grid(alpha=0.3)
    ax.legend(fontsize=7)
    if "dense" in rows:
        dense = {p[0]: p[2] for p in rows["dense"]}
        ratio = [(p[0], p[2] / dense[p[0]]) for p in rows["moe"] if p[0] in dense]
        rx.plot([r[0] for r in ratio], [r[1] for r in ratio], "o-", color="C0", ms=4)
        rx.axhline(1.0, color="k", lw=0.8, ls=":")
    rx.set_xlabel("activated experts a")
    rx.set_ylabel("MoE ms / dense ms")
    rx.grid(alpha=0.3)
    name = os.path.splitext(os.path.basename(a.table))[0]
    fig.suptitle(f"{name}: step latency vs activated experts" + (f"\n{title}" if title else ""), fontsize=9)
    fig.tight_layout()
    save_figure(fig, a.out or os.path.splitext(a.table)[0] + ".png")


if __name__ == "__main__":
    sys.exit(run(main))
