#!/usr/bin/env python3
"""Fixed-hyperparameter figure (paper Fig 6) from a sweep index or results file: loss vs shape, one curve per
rule (per combination of the other axes), and its table.

x: the shape axis (default ffn.shape, else the first axis that is not rule or an hp.* axis). Where the shapes
are MoE shapes along both of the paper's axes (8e2a … 128e2a and 64e2a … 64e64a), two panels with a shared
y axis: the total experts N at the common a and the activated experts a at the common N, each on a log2 x axis;
otherwise one panel with the values in the spec's order, evenly spaced. Diverged, failed and missing points leave
a gap; the number left off is printed.

usage: sweep_shape.py INDEX.h5|RESULTS.json [--out PREFIX] [--x-key ffn.shape] [--md TABLE.md]
                      [--metric final_val_loss|best_val_loss|final_train_loss]
writes PREFIX-shape.png (PREFIX defaults to the index path without .h5 or .json); --md writes the losses as a
markdown table (curves x shapes). Needs h5py, numpy and matplotlib.
"""

import math
import sys

import numpy as np

from outputs import output_path, run
from shapes import moe_axes
from sweep_index import Summary, figure_arguments, fmt, label, output_prefix, pyplot, save_figure


def fixed_lr(sw):
    """", LR 2^k" where the spec fixes hp.lr in its overrides, else ""."""
    for o in sw.spec.get("overrides", []):
        if o.startswith("hp.lr="):
            lr = float(o.split("=", 1)[1])
            return f", LR 2^{math.log2(lr):g}" if lr > 0 else ""
    return ""


def write_table(path, sw, metric, x_key, x_values, curves):
    """curves: list of (label, {shape: loss or None})."""
    lines = [f"# {sw.name}: {metric.replace('_', ' ')} at fixed hyperparameters{fixed_lr(sw)}", "",
             "| " + " | ".join(["curve"] + [fmt(v) for v in x_values]) + " |",
             "|" + "---|" * (len(x_values) + 1)]
    for name, ys in curves:
        cells = [f"{ys[v]:.4f}" if ys.get(v) is not None else "-" for v in x_values]
        lines.append("| " + " | ".join([name] + cells) + " |")
    lines += ["", f"Axis {x_key}; '-': not completed (diverged, failed or missing). Source: {sw.path}."]
    with open(output_path(path, ".md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("wrote", path)


def main():
    ap = figure_arguments(__doc__)
    ap.add_argument("--x-key", default=None, help="the shape axis (default ffn.shape if an axis)")
    ap.add_argument("--md", default=None, help="also write the table (markdown) here")
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
    x = sw.column(x_key)
    loss = sw.loss(a.metric)
    ok = sw.completed(a.metric)
    curves = []
    for key, idx in sw.rows_by(others).items():
        ys = {x[i]: float(loss[i]) for i in idx if ok[i]}
        curves.append((label(others, key, sw.name), ys))
    left_off = int((~ok).sum())
    if left_off:
        print(f"{left_off} of {len(sw)} points left off (not completed: diverged, failed, running or missing)")

    axes = moe_axes(x_values) if x_key == "ffn.shape" else None
    panels = axes or [(None, f"{x_key} (spec order)", [(v, p) for p, v in enumerate(x_values)])]
    plt = pyplot()
    fig, axs = plt.subplots(1, len(panels), figsize=(5.2 * len(panels) + 1, 4.5), sharey=True, squeeze=False)
    colors = plt.get_cmap("tab10")
    for ax, (title, xlabel, points) in zip(axs[0], panels):
        xs = [p for _, p in points]
        for c, (name, ys) in enumerate(curves):
            y = [ys.get(s, np.nan) for s, _ in points]
            ax.plot(xs, y, "o-", ms=4, color=colors(c % 10), label=name)
        if axes:
            ax.set_xscale("log", base=2)
        ax.set_xticks(xs)
        ax.set_xticklabels([fmt(s) for s, _ in points], rotation=45 if len(points) > 6 else 0)
        ax.minorticks_off()
        ax.set_xlabel(xlabel)
        if title:
            ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axs[0][0].set_ylabel(a.metric.replace("_", " "))
    if others:
        axs[0][-1].legend(fontsize=7, ncol=2 if len(curves) > 8 else 1)
    fig.suptitle(f"{sw.name}: {a.metric.replace('_', ' ')} vs shape at fixed hyperparameters{fixed_lr(sw)}")
    fig.tight_layout()
    prefix = output_prefix(a.index, a.out)
    save_figure(fig, prefix + "-shape.png")
    if a.md:
        write_table(a.md, sw, a.metric, x_key, x_values, curves)


if __name__ == "__main__":
    sys.exit(run(main))
