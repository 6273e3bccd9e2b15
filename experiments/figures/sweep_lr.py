#!/usr/bin/env python3
"""LR-transfer figures from a sweep index file (mue sweep -> out_dir/NAME-index.h5).

(a) final val loss vs log2(LR), one curve per combination of the other axes (e.g. ffn.shape x rule), optimum
    marked; (b) optimum LR vs shape (or the first other axis) per rule with a +-1/2-octave band.

usage: sweep_lr.py INDEX.h5 [--out PREFIX] [--lr-key hp.lr] [--x-key ffn.shape] [--group-key rule]
                            [--metric final_val_loss|best_val_loss]
writes PREFIX-loss.png and PREFIX-optimum.png (PREFIX defaults to the index path without .h5).
Needs h5py, numpy and matplotlib.
"""
import argparse
import json
import math
from collections import OrderedDict

import h5py
import numpy as np
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_column(group, key):
    ds = group[key]
    if h5py.check_string_dtype(ds.dtype) is not None:
        return [str(x) for x in ds.asstr()[:]]
    return [float(x) for x in ds[:]]


def fmt(v):
    return f"{v:g}" if isinstance(v, float) else str(v)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("index")
    ap.add_argument("--out", default=None)
    ap.add_argument("--lr-key", default="hp.lr")
    ap.add_argument("--x-key", default=None, help="axis for panel (b)'s x (default ffn.shape, else first other axis)")
    ap.add_argument("--group-key", default=None, help="axis for panel (b)'s curves (default rule if an axis)")
    ap.add_argument("--metric", default="final_val_loss", choices=["final_val_loss", "best_val_loss"])
    a = ap.parse_args()

    with h5py.File(a.index, "r") as f:
        axes = json.loads(f.attrs["axes"])
        name = f.attrs["name"]
        if isinstance(name, bytes):
            name = name.decode()
        s = f["summary"]
        cols = {k: read_column(s, k) for k in axes}
        status = read_column(s, "status")
        loss = np.array(read_column(s, a.metric), dtype=float)
    if a.lr_key not in axes:
        raise SystemExit(f"{a.index}: no '{a.lr_key}' axis (axes: {axes})")
    others = [k for k in axes if k != a.lr_key]
    # Only completed runs count; diverged/failed/missing points are left off the curves.
    ok = np.array([st == "completed" and math.isfinite(l) for st, l in zip(status, loss)])
    lrs = np.array(cols[a.lr_key], dtype=float)

    # Curves: one per combination of the other axes, in the sweep's order.
    curves = OrderedDict()
    for i in range(len(lrs)):
        key = tuple(cols[k][i] for k in others)
        curves.setdefault(key, []).append(i)

    prefix = a.out or (a.index[:-3] if a.index.endswith(".h5") else a.index)

    # (a) loss vs log2 LR.
    fig, ax = plt.subplots(figsize=(7, 4.5))
    optimum = {}  # combination -> (lr at min, min loss)
    for key, idx in curves.items():
        idx = [i for i in sorted(idx, key=lambda i: lrs[i]) if ok[i]]
        if not idx:
            continue
        x = np.log2(lrs[idx])
        y = loss[idx]
        label = ", ".join(f"{k}={fmt(v)}" for k, v in zip(others, key)) or name
        line, = ax.plot(x, y, "o-", ms=3, label=label)
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
    fig.savefig(prefix + "-loss.png", dpi=150)
    plt.close(fig)
    print("wrote", prefix + "-loss.png")

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
    x_values = list(OrderedDict.fromkeys(cols[x_key]))
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
    fig.savefig(prefix + "-optimum.png", dpi=150)
    plt.close(fig)
    print("wrote", prefix + "-optimum.png")


if __name__ == "__main__":
    main()
