#!/usr/bin/env python3
"""Markdown results table from a sweep index or results file: final val loss per (rule, shape) x LR, the grid and
fitted optimum LR per row (optimum.py), and how many octaves the fitted optimum moved across shapes under each rule.
With a seed axis each cell is the first seed's point; transfer_table.py averages the seeds.

usage: sweep_table.py INDEX.h5 [--lr-key hp.lr] [--x-key ffn.shape|none] [--group-key rule]
"""
import math
import sys

from optimum import fit_optimum
from outputs import ArgumentParser, run
from sweep_index import Summary, fmt


def main():
    ap = ArgumentParser()
    ap.add_argument("index")
    ap.add_argument("--lr-key", default="hp.lr")
    ap.add_argument("--x-key", default="ffn.shape")
    ap.add_argument("--group-key", default="rule")
    a = ap.parse_args()
    sw = Summary(a.index)
    other = [k for k in sw.axes if k not in (a.lr_key, a.x_key, a.group_key, "seed")]
    if other:  # a cell is one point: another axis would put several in it
        raise SystemExit(f"{a.index}: axes beyond the rows and the LR ({', '.join(other)}); use transfer_table.py "
                         "or sweep_wd.py for this sweep")
    lr, grp = sw.column(a.lr_key), sw.column(a.group_key)
    x = ["-"] * len(lr) if a.x_key == "none" else sw.column(a.x_key)  # none: one row per group
    loss, status = sw.column("final_val_loss"), sw.status
    lrs = sorted(set(lr))
    groups = list(dict.fromkeys(grp))
    xs = list(dict.fromkeys(x))
    print(f"| {a.group_key} | {a.x_key} | " + " | ".join(f"{v:.3g}" for v in lrs) + " | best LR | fitted log2 LR |")
    print("|---|---|" + "---|" * (len(lrs) + 2))
    moved = []
    for g in groups:
        opt = []
        for xv in xs:
            row, best, curve = [], (math.inf, None), []
            for v in lrs:
                k = [i for i in range(len(lr)) if grp[i] == g and x[i] == xv and lr[i] == v]
                if not k:
                    row.append("")
                    continue
                i = k[0]
                if status[i] == "completed" and math.isfinite(loss[i]):
                    row.append(f"{loss[i]:.3f}")
                    best = min(best, (loss[i], v))
                    curve.append((v, loss[i]))
                else:
                    row.append(status[i])
                    curve.append((v, math.nan))
            fit = fit_optimum([c[0] for c in curve], [c[1] for c in curve]) if curve else None
            if fit is not None:
                opt.append(fit.log2_x)
            best_text = f"{best[1]:.3g}" if best[1] is not None else "-"
            fit_text = "-" if fit is None else f"{fit.log2_x:.2f}" + (f" ({fit.edge} edge)" if fit.edge else "")
            print(f"| {g} | {fmt(xv)} | " + " | ".join(row) + f" | {best_text} | {fit_text} |")
        if len(opt) > 1:
            moved.append(f"{g}: fitted optimum LR moved {max(opt) - min(opt):.2f} octaves across {len(opt)} rows")
    if moved:
        print("\n" + "\n".join(f"- {m}" for m in moved))
    if "seed" in sw.axes:
        print("\n(each cell: the first seed's point; transfer_table.py averages the seeds)")


if __name__ == "__main__":
    sys.exit(run(main))
