#!/usr/bin/env python3
"""Draw the classic coordinate-check plot from a `mue coord-check` HDF5 file.

One panel per quantity (attention output, FFN output, block output, logits, router logits), x = width or active
experts (log2), y = RMS (mean over layers), one line per step. Top row: activations; bottom row: their change
since initialisation (what the updates did). Flat lines = the rule keeps coordinates width/shape-independent.

usage: coord_check.py FILE.h5 [--out FIG.png]
"""
import argparse
import json
import sys

import h5py
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from outputs import ArgumentParser, run


def main():
    ap = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("file")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    with h5py.File(args.file, "r") as f:
        rule = f.attrs["rule"]
        labels = json.loads(f.attrs["points"])
        xs = f["coord/points/x"][:]
        quantities = [q for q in ["attn_out", "ffn_out", "block_out", "logits", "router_logits"] if q in f["coord"]]
        fig, axes = plt.subplots(2, len(quantities), figsize=(3.2 * len(quantities), 6), squeeze=False)
        for j, q in enumerate(quantities):
            g = f["coord"][q]
            point, step, rms, delta = g["point"][:], g["step"][:], g["rms"][:], g["delta_rms"][:]
            steps = np.unique(step).astype(int)
            for row, values, title in ((0, rms, q), (1, delta, q + " (update)")):
                ax = axes[row][j]
                if row == 1 and q == "router_logits":
                    ax.axis("off")
                    continue
                for s in steps:
                    if row == 1 and s == 0:
                        continue
                    y = [values[(point == p) & (step == s)].mean() for p in range(len(xs))]
                    ax.plot(xs, y, marker="o", label=f"step {s}", color=plt.cm.viridis(s / max(1, steps[-1])))
                ax.set_xscale("log", base=2)
                ax.set_yscale("log")
                ax.set_xticks(xs)
                ax.set_xticklabels(labels, rotation=45, fontsize=7)
                ax.set_title(title, fontsize=9)
        axes[0][0].legend(fontsize=6)
        fig.suptitle(f"coordinate check: rule {rule}")
        fig.tight_layout()
        out = args.out or args.file.rsplit(".", 1)[0] + ".png"
        fig.savefig(out, dpi=110)
        print(out)


if __name__ == "__main__":
    sys.exit(run(main))
