"""Reading a sweep index file (mue sweep -> out_dir/NAME-index.h5) for the figure and table scripts.

The index holds attributes name, spec, axes (JSON list of axis keys) and a /summary table with one row per point:
index, name, one column per axis, status, final_train_loss, final_val_loss, best_val_loss, steps
(experiments/sweep.h documents it).
"""
import argparse
import json
import math
import os
from collections import OrderedDict

import h5py
import numpy as np

from outputs import ArgumentParser, is_results, output_path

METRICS = ["final_val_loss", "best_val_loss", "final_train_loss"]


def read_column(group, key):
    """A /summary column as a list of str (string datasets) or float."""
    ds = group[key]
    if h5py.check_string_dtype(ds.dtype) is not None:
        return [str(x) for x in ds.asstr()[:]]
    return [float(x) for x in ds[:]]


def _text_attr(f, key):
    v = f.attrs[key]
    return v.decode() if isinstance(v, bytes) else str(v)


def fmt(v):
    """An axis value as a short label."""
    return f"{v:g}" if isinstance(v, float) else str(v)


class Summary:
    """The /summary table of one sweep, rows in sweep order (first axis slowest), read from a sweep index
    (NAME-index.h5) or from a compact results file (NAME.json, results_bundle.py). A results file also gives
    each point's curves and config in `points` (None for an index)."""

    def __init__(self, path):
        self.path = path
        self.points = None
        if os.path.isdir(path):
            raise SystemExit(f"{path}: is a folder; give a sweep index (out_dir/NAME-index.h5) or a results file")
        if not os.path.isfile(path):
            raise SystemExit(f"{path}: no such file (a sweep writes out_dir/NAME-index.h5)")
        if path.endswith(".json"):
            self._read_results(path)
        else:
            self._read_index(path)
        self.status = self.columns["status"]
        if not self.status:  # a sweep's index and results always list every point of its grid
            raise SystemExit(f"{path}: lists no points (a sweep's index or results file lists every point of its grid)")

    def _read_index(self, path):
        try:
            with h5py.File(path, "r") as f:
                self.name = _text_attr(f, "name")
                self.axes = json.loads(_text_attr(f, "axes"))
                self.spec = json.loads(_text_attr(f, "spec"))
                group = f["summary"]
                self.columns = {k: read_column(group, k) for k in group.keys()}
        except (OSError, KeyError) as e:
            raise SystemExit(f"{path}: not a sweep index file ({e})")

    def _read_results(self, path):
        try:
            with open(path) as f:
                b = json.load(f)
            if not is_results(b):
                raise KeyError("format")
            self.name, self.axes, self.spec, self.points = b["name"], b["axes"], b["spec"], b["points"]
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:  # e.g. a JSON list, or a config
            raise SystemExit(f"{path}: not a sweep results file ({type(e).__name__}: {e})")

        def value(p, k):
            v = p["coords"][k] if k in self.axes else p.get(k)
            if isinstance(v, str):
                return v
            return float("nan") if v is None else float(v)

        keys = ["index", "name", *self.axes, "status", "final_train_loss", "final_val_loss", "best_val_loss", "steps"]
        self.columns = {k: [value(p, k) for p in self.points] for k in keys}

    def __len__(self):
        return len(self.status)

    def require_axis(self, key):
        if key not in self.axes:
            raise SystemExit(f"{self.path}: no '{key}' axis (axes: {', '.join(self.axes)})")

    def column(self, key):
        if key not in self.columns:
            raise SystemExit(f"{self.path}: no summary column '{key}' (columns: {', '.join(sorted(self.columns))})")
        return self.columns[key]

    def loss(self, metric):
        return np.array(self.column(metric), dtype=float)

    def completed(self, metric):
        """True for rows that completed with a finite metric; diverged/failed/missing rows are left off figures."""
        return np.array([st == "completed" and math.isfinite(x) for st, x in zip(self.status, self.loss(metric))])

    def values(self, key):
        """The distinct values of a column in order of first appearance (= the spec's order for an axis)."""
        return list(OrderedDict.fromkeys(self.column(key)))

    def rows_by(self, keys):
        """OrderedDict: tuple of the values of `keys` -> list of row indices, in sweep order."""
        cols = [self.column(k) for k in keys]
        out = OrderedDict()
        for i in range(len(self)):
            out.setdefault(tuple(c[i] for c in cols), []).append(i)
        return out


def pyplot():
    """matplotlib.pyplot on the Agg backend (PNG files, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def mark_edges(ax, x, y, sides, colour, ms, offset):
    """A triangle `offset` below (above) the point (x, y) for each grid edge in `sides` ('low', 'high', comma-
    separated: transfer_table.edge_sides) at which a best LR sits, pointing where the optimum may lie."""
    for side in sides.split(",") if sides else []:
        low = side == "low"
        ax.plot([x], [y - offset if low else y + offset], marker="v" if low else "^", ms=ms, color=colour, ls="none")


def save_figure(fig, path):
    """Writes fig as a 150-dpi PNG, closes it and says where it went."""
    fig.savefig(output_path(path, ".png"), dpi=150)
    pyplot().close(fig)
    print("wrote", path)


def figure_arguments(doc):
    """The arguments every figure script takes: INDEX.h5, --out PREFIX, --metric."""
    ap = ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("index", help="sweep index file (out_dir/NAME-index.h5) or results file (NAME.json)")
    ap.add_argument("--out", default=None, help="output prefix (default: the index path without .h5)")
    ap.add_argument("--metric", default="final_val_loss", choices=METRICS)
    return ap


def label(keys, values, default=""):
    return ", ".join(f"{k}={fmt(v)}" for k, v in zip(keys, values)) or default


def output_prefix(index_path, out):
    """--out if given, else the index (or results) path without .h5 (.json)."""
    if out:
        return out
    for ext in (".h5", ".json"):
        if index_path.endswith(ext):
            return index_path[: -len(ext)]
    return index_path
