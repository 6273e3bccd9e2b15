#!/usr/bin/env python3
"""LR-transfer figures from a sweep index file (mue sweep -> out_dir/NAME-index.h5).

(a) final val loss vs log2(LR), one curve per combination of the other axes (e.g. ffn.shape x rule), optimum
    marked; (b) optimum LR vs shape (or the first other axis) per rule with a +-1/2-octave band.

usage: sweep_lr.py INDEX.h5 [--out PREFIX] [--lr-key hp.lr] [--x-key ffn.shape] [--group-key rule]
                            [--metric final_val_loss|best_val_loss]
writes PREFIX-loss.png and PREFIX-optimum.png (PREFIX defaults to the index path without .h5).
Needs h5py, numpy and matplotlib.
"""
import math
from collections import OrderedDict

import numpy as np

from sweep_index import Summary, figure_arguments, fmt, label, output_prefix, pyplot, save_figure

plt = pyplot()


def main():
    ap = figure_arguments(__doc__)
    ap.add_argument("--lr-key", default="hp.lr")
    ap.add_argument("--x-key", default=None, help="axis for panel (b)'s x (default ffn.shape, else first other axis)")
    ap.add_argument("--group-key", default=None, help="axis for panel (b)'s curves (default rule if an axis)")
    a = ap.parse_args()

    sw = Summary(a.index)
    sw.require_axis(a.lr_key)
    axes, name = sw.axes, sw.name
    cols = {k: sw.column(k) for k in axes}
    loss = sw.loss(a.metric)
    others = [k for k in axes if k != a.lr_key]
    ok = sw.completed(a.metric)
    lrs = np.array(cols[a.lr_key], dtype=float)

    # Curves: one per combination of the other axes, in the sweep's order.
    curves = sw.rows_by(others)

    prefix = output_prefix(a.index, a.out)

    # (a) loss vs log2 LR.
    fig, ax = plt.subplots(figsize=(7, 4.5))
    optimum = {}  # combination -> (lr at min, min loss)
    for key, idx in curves.items():
        idx = [i for i in sorted(idx, key=lambda i: lrs[i]) if ok[i]]
        if not idx:
            continue
        x = np.log2(lrs[idx])
        y = loss[idx]
        line, = ax.plot(x, y, "o-", ms=3, label=label(others, key, name))
        j = int(np.argmin(y))
        optimum[key] = (lrs[idx][j], y[j])
        ax.plot([x[j]], [y[j]], marker="*", ms=12, color=line.get_color(), markeredgecolor="k")
    ax.set_xlabel(f"log2 {a.lr_key}")
    ax.set_ylabel(a.metric.replace("_", " "))
    ax.set_title(f"{name}: {a.metric.replace('_', ' ')} vs learning rate (* = optimum)")
    ax.grid(alpha=0.3)
    if len(curves) > 1:
        ax.legend(fontsize=7, ncol=2 if len(curves) > 8 else 1)
    fig.tight_layout()
    save_figure(fig, prefix + "-loss.png")

    # (b) optimum LR vs x axis, one curve per group (rule), +-1/2 octave band.
    if not others or not optimum:
        return
    x_key = a.x_key or ("ffn.shape" if "ffn.shape" in others else [k for k in others if k != "rule"][:1] or [None])
    if isinstance(x_key, list):
        x_key = x_key[0]
    if x_key is None:  # only a rule axis: x is the rule itself
        x_key = others[0]
    group_key = a.group_key or ("rule" if "rule" in others and x_key != "rule" else None)
    xi = others.index(x_key)
    gi = others.index(group_key) if group_key else None
    # Other axes beyond x and group (e.g. seeds) are averaged in log2 space.
    x_values = sw.values(x_key)
    groups = OrderedDict()
    for key, (lr, _) in optimum.items():
        g = key[gi] if gi is not None else ""
        groups.setdefault(g, {}).setdefault(key[xi], []).append(math.log2(lr))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    numeric_x = all(isinstance(v, float) for v in x_values)
    pos = {v: (v if numeric_x else p) for p, v in enumerate(x_values)}
    for g, by_x in groups.items():
        xs = [v for v in x_values if v in by_x]
        px = np.array([pos[v] for v in xs], dtype=float)
        py = np.array([np.mean(by_x[v]) for v in xs])
        line, = ax.plot(px, py, "o-", label=f"{group_key}={fmt(g)}" if group_key else name)
        ax.fill_between(px, py - 0.5, py + 0.5, color=line.get_color(), alpha=0.15)
    if numeric_x:
        ax.set_xscale("log", base=2)
    else:
        ax.set_xticks(range(len(x_values)))
        ax.set_xticklabels([fmt(v) for v in x_values])
    ax.set_xlabel(x_key)
    ax.set_ylabel(f"log2 optimal {a.lr_key}")
    ax.set_title(f"{name}: optimal LR (band: +-1/2 octave)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, prefix + "-optimum.png")


if __name__ == "__main__":
    main()
