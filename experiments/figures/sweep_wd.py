#!/usr/bin/env python3
"""Weight-decay figure (c) from a sweep index file (mue sweep -> out_dir/NAME-index.h5) with an LR and a WD axis.

One panel per combination of the other axes: rows by --group-key (default: rule, if an axis), columns by the rest
(e.g. ffn.shape). In each panel: final val loss vs log2(WD), one curve per LR, the fitted WD optimum on the best
LR's curve (optimum.py) marked with a star. The optimum of every panel is printed too. WD values <= 0 cannot go on a log axis and are left off.

usage: sweep_wd.py INDEX.h5|RESULTS.json [--out PREFIX] [--lr-key hp.lr] [--wd-key hp.wd] [--group-key rule]
                            [--metric final_val_loss|best_val_loss|final_train_loss] [--md TABLE.md]
writes PREFIX-wd.png (PREFIX defaults to the index path without .h5 or .json); --md writes the fitted WD optimum of
every curve and its spread across shapes (wd_table.py). Needs h5py, numpy and matplotlib.
"""
import math
import sys

import numpy as np

from optimum import fit_optimum
from outputs import output_path, run
from sweep_index import Summary, figure_arguments, fmt, label, output_prefix, pyplot, save_figure
from wd_table import wd_optima, wd_summary, wd_table


def main():
    ap = figure_arguments(__doc__)
    ap.add_argument("--lr-key", default="hp.lr")
    ap.add_argument("--wd-key", default="hp.wd")
    ap.add_argument("--group-key", default=None, help="axis for the panel rows (default rule if an axis)")
    ap.add_argument("--md", default=None, help="also write the table (markdown) here")
    a = ap.parse_args()
    plt = pyplot()

    sw = Summary(a.index)
    sw.require_axis(a.wd_key)
    lr_key = a.lr_key if a.lr_key in sw.axes else None  # a WD-only sweep draws one curve per panel
    others = [k for k in sw.axes if k not in (a.wd_key, lr_key)]
    group_key = a.group_key or ("rule" if "rule" in others else None)
    if group_key is not None and group_key not in others:
        raise SystemExit(f"{a.index}: --group-key '{group_key}' is not one of the other axes ({', '.join(others)})")
    col_keys = [k for k in others if k != group_key]

    loss = sw.loss(a.metric)
    wd = np.array(sw.column(a.wd_key), dtype=float)
    ok = sw.completed(a.metric) & (wd > 0)
    lr = np.array(sw.column(lr_key), dtype=float) if lr_key else np.ones(len(sw))
    if not (wd > 0).any():
        raise SystemExit(f"{a.index}: no '{a.wd_key}' value is > 0, nothing to put on a log axis")
    if (wd <= 0).any():
        print(f"{int((wd <= 0).sum())} points with {a.wd_key} <= 0 left off (log axis)")

    rows = sw.values(group_key) if group_key else [None]
    cols = list(sw.rows_by(col_keys).keys())
    fig, axs = plt.subplots(len(rows), len(cols), figsize=(4.2 * len(cols), 3.3 * len(rows)), squeeze=False,
                            sharex=True)
    lr_values = sorted(set(lr.tolist()))
    colors = plt.get_cmap("viridis")(np.linspace(0, 0.9, max(1, len(lr_values))))
    for r, g in enumerate(rows):
        for c, ck in enumerate(cols):
            ax = axs[r][c]
            in_panel = [i for i in range(len(sw)) if ok[i]
                        and (group_key is None or sw.column(group_key)[i] == g)
                        and tuple(sw.column(k)[i] for k in col_keys) == ck]
            title = label(([group_key] if group_key else []) + col_keys, ([g] if group_key else []) + list(ck),
                          sw.name)
            ax.set_title(title, fontsize=8)
            ax.grid(alpha=0.3)
            if not in_panel:
                ax.text(0.5, 0.5, "no completed runs", ha="center", va="center", transform=ax.transAxes)
                continue
            for li, v in enumerate(lr_values):
                idx = sorted((i for i in in_panel if lr[i] == v), key=lambda i: wd[i])
                if idx:
                    ax.plot(np.log2(wd[idx]), loss[idx], "o-", ms=3, color=colors[li],
                            label=f"{lr_key}={fmt(v)}" if lr_key else None)
            best = min(in_panel, key=lambda i: loss[i])
            # The fitted WD optimum on the best LR's curve (optimum.py: parabola in log2 WD, or the grid at an edge).
            on_curve = [i for i in in_panel if not lr_key or lr[i] == lr[best]]
            fit = fit_optimum([wd[i] for i in on_curve], [loss[i] for i in on_curve])
            ax.plot([fit.log2_x], [fit.loss], marker="*", ms=13, color="gold", markeredgecolor="k")
            print(f"{title}: optimum {a.wd_key}={fmt(float(wd[best]))}"
                  + (f" {lr_key}={fmt(float(lr[best]))}" if lr_key else "") + f", {a.metric} {loss[best]:.4f}; "
                  + f"fitted log2 {a.wd_key} {fit.log2_x:.2f}" + (f" (at the grid's {fit.edge} edge)" if fit.edge else ""))
            if r == len(rows) - 1:
                ax.set_xlabel(f"log2 {a.wd_key}")
            if c == 0:
                ax.set_ylabel(a.metric.replace("_", " "))
    if lr_key:
        handles, labels = axs[0][0].get_legend_handles_labels()
        for ax in axs.flat:
            if len(ax.get_legend_handles_labels()[0]) > len(handles):
                handles, labels = ax.get_legend_handles_labels()
        fig.legend(handles, labels, loc="upper right", fontsize=7)
    fig.suptitle(f"{sw.name}: {a.metric.replace('_', ' ')} vs weight decay (* = optimum of the panel)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.88 if lr_key else 1, 0.95))
    prefix = output_prefix(a.index, a.out)
    save_figure(fig, prefix + "-wd.png")
    if a.md:
        write_table(a.md, sw, a.metric, a.wd_key, lr_key, group_key, col_keys, ok)


def write_table(path, sw, metric, wd_key, lr_key, group_key, col_keys, ok):
    """The fitted WD optimum of every (group, shape, LR) curve and its spread across shapes, as markdown."""
    loss = sw.loss(metric)
    wd, n = sw.column(wd_key), len(sw)
    points = [(sw.column(group_key)[i] if group_key else sw.name,
               ", ".join(fmt(sw.column(k)[i]) for k in col_keys) or "-",
               sw.column(lr_key)[i] if lr_key else 1.0, wd[i], float(loss[i]) if ok[i] else math.nan)
              for i in range(n) if wd[i] > 0]
    optima = wd_optima(points)
    steps = next((int(o.split("=", 1)[1]) for o in sw.spec.get("overrides", []) if o.startswith("train.steps=")), 0)
    done = int(ok.sum())
    lines = [f"# {sw.name}: the optimum weight decay per shape", "",
             f"{done} of {n} points completed; {metric}. The fitted optimum is the vertex of the parabola in log2 WD "
             "through the best grid point and its two neighbours (optimum.py); the bold LR is the one with the lower "
             "loss for that shape.", "", *wd_table(optima, steps, metric.replace("_", " ")), "",
             *wd_summary(optima), "", f"Source: {sw.path}."]
    with open(output_path(path, ".md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(wd_summary(optima)))
    print("wrote", path)


if __name__ == "__main__":
    sys.exit(run(main))
