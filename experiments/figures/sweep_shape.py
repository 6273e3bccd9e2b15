#!/usr/bin/env python3
"""Fixed-hyperparameter figure (d) from a sweep index file (mue sweep -> out_dir/NAME-index.h5): loss vs shape.

x: the shape axis (default ffn.shape, else the first axis that is not rule or an hp.* axis), its values in the
spec's order, evenly spaced; one curve per combination of the other axes (e.g. one per rule, or per rule and LR).
Diverged, failed and missing points leave a gap; the number left off is printed.

usage: sweep_shape.py INDEX.h5 [--out PREFIX] [--x-key ffn.shape]
                               [--metric final_val_loss|best_val_loss|final_train_loss]
writes PREFIX-shape.png (PREFIX defaults to the index path without .h5). Needs h5py, numpy and matplotlib.
"""

import numpy as np

from sweep_index import Summary, figure_arguments, fmt, label, output_prefix, pyplot, save_figure

plt = pyplot()


def main():
    ap = figure_arguments(__doc__)
    ap.add_argument("--x-key", default=None, help="the shape axis (default ffn.shape if an axis)")
    a = ap.parse_args()

    sw = Summary(a.index)
    if a.x_key:
        sw.require_axis(a.x_key)
        x_key = a.x_key
    elif "ffn.shape" in sw.axes:
        x_key = "ffn.shape"
    else:
        shape_axes = [k for k in sw.axes if k != "rule" and not k.startswith("hp.")]
        if not shape_axes:
            raise SystemExit(f"{a.index}: no shape axis (axes: {', '.join(sw.axes)}); name one with --x-key")
        x_key = shape_axes[0]
    others = [k for k in sw.axes if k != x_key]

    x_values = sw.values(x_key)
    pos = {v: p for p, v in enumerate(x_values)}
    x = sw.column(x_key)
    loss = sw.loss(a.metric)
    ok = sw.completed(a.metric)

    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(x_values) + 3), 4.5))
    for key, idx in sw.rows_by(others).items():
        y = np.full(len(x_values), np.nan)
        for i in idx:
            if ok[i]:
                y[pos[x[i]]] = loss[i]
        ax.plot(range(len(x_values)), y, "o-", ms=4, label=label(others, key, sw.name))
    left_off = int((~ok).sum())
    if left_off:
        print(f"{left_off} of {len(sw)} points left off (not completed: diverged, failed, running or missing)")
    ax.set_xticks(range(len(x_values)))
    ax.set_xticklabels([fmt(v) for v in x_values], rotation=45 if len(x_values) > 6 else 0)
    ax.set_xlabel(f"{x_key} (spec order)")
    ax.set_ylabel(a.metric.replace("_", " "))
    ax.set_title(f"{sw.name}: {a.metric.replace('_', ' ')} vs shape at fixed hyperparameters")
    ax.grid(alpha=0.3)
    if others:
        ax.legend(fontsize=7, ncol=2 if len(ax.get_lines()) > 8 else 1)
    fig.tight_layout()
    prefix = output_prefix(a.index, a.out)
    save_figure(fig, prefix + "-shape.png")


if __name__ == "__main__":
    main()
