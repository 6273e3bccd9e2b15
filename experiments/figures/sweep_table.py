#!/usr/bin/env python3
"""Markdown results table from a sweep index: final val loss per (rule, shape) x LR, the optimum LR per row,
and how many octaves the optimum moved across shapes under each rule.

usage: sweep_table.py INDEX.h5 [--lr-key hp.lr] [--x-key ffn.shape|none] [--group-key rule]
"""
import argparse
import math

from sweep_index import Summary


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("index")
    ap.add_argument("--lr-key", default="hp.lr")
    ap.add_argument("--x-key", default="ffn.shape")
    ap.add_argument("--group-key", default="rule")
    a = ap.parse_args()
    sw = Summary(a.index)
    lr, grp = sw.column(a.lr_key), sw.column(a.group_key)
    x = ["-"] * len(lr) if a.x_key == "none" else sw.column(a.x_key)  # none: one row per group
    loss, status = sw.column("final_val_loss"), sw.status
    lrs = sorted(set(lr))
    groups = list(dict.fromkeys(grp))
    xs = list(dict.fromkeys(x))
    print(f"| {a.group_key} | {a.x_key} | " + " | ".join(f"{v:.3g}" for v in lrs) + " | best LR |")
    print("|---|---|" + "---|" * (len(lrs) + 1))
    for g in groups:
        opt = []
        for xv in xs:
            row, best = [], (math.inf, None)
            for v in lrs:
                k = [i for i in range(len(lr)) if grp[i] == g and x[i] == xv and lr[i] == v]
                if not k:
                    row.append("")
                    continue
                i = k[0]
                if status[i] == "completed" and math.isfinite(loss[i]):
                    row.append(f"{loss[i]:.3f}")
                    best = min(best, (loss[i], v))
                else:
                    row.append(status[i])
            if best[1] is not None:
                opt.append(best[1])
            best_text = f"{best[1]:.3g}" if best[1] is not None else "-"
            print(f"| {g} | {xv} | " + " | ".join(row) + f" | {best_text} |")
        if len(opt) > 1:
            spread = math.log2(max(opt)) - math.log2(min(opt))
            print(f"\n{g}: optimum LR moved {spread:.1f} octaves across {len(opt)} shapes\n")


if __name__ == "__main__":
    main()
