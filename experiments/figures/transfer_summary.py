#!/usr/bin/env python3
"""The campaign on one figure: how far each MoE configuration's fitted optimum LR lies from its dense proxy's.

One panel per rule (shared y-axis): for every results file given (an LR sweep with a configuration axis), one
group of points, one per configuration, at the shift log2(optimum) - log2(proxy's optimum) in octaves; seeds
averaged, their range as error bars, a grey band of +-1/2 octave (the transfer claim's tolerance). A rule the
proxy did not run reads the proxy run of the rule with its table at the reference (proxy_rules.py). --md also
writes the shifts as a table (rule rows, configuration columns per spec) with each row's verdict by
REPRODUCTION.md's rule (verdict.py).

usage: transfer_summary.py RESULTS.json ... --proxy-lm P.json --proxy-flow P.json --out PREFIX [--md T.md]
                           [--rules complete-mue,mup,...]
writes PREFIX.png; *-flow results read --proxy-flow, the others --proxy-lm. Needs numpy and matplotlib.
"""
import argparse
import math
import os
import sys
from collections import OrderedDict

import numpy as np

from outputs import ArgumentParser, output_path, run
from regrid import DONE
from sweep_index import Summary, fmt, mark_edges, pyplot, save_figure
from transfer_table import edge_sides, optima, proxy_optima, proxy_table
from verdict import transfer_verdict


def shifts(path, proxy_path, lr_key="hp.lr", metric="final_val_loss"):
    """name, OrderedDict rule -> list of (config label, mean shift, low, high, edge) in octaves from the proxy,
    set of the rules whose every point finished."""
    sw = Summary(path)
    conf_keys, table = optima(sw, lr_key, metric)
    proxy = proxy_optima(proxy_table(proxy_path, list(table), lr_key, metric, sw))  # refuses the other task's
    out = OrderedDict()
    for rule, confs in table.items():
        if rule not in proxy:
            continue
        centre = math.log2(proxy[rule])
        for conf, per_seed in confs.items():
            if per_seed:
                fits = [o.log2_x - centre for _, o, _, _ in per_seed]
                out.setdefault(rule, []).append((", ".join(fmt(v) for v in conf), float(np.mean(fits)), min(fits),
                                                 max(fits), edge_sides(per_seed)))
    rules = sw.column("rule") if "rule" in sw.axes else ["(spec)"] * len(sw)
    whole = {r for r in out if all(st in DONE for st, q in zip(sw.status, rules) if q == r)}
    return sw.name, out, whole


def main():
    ap = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="+")
    ap.add_argument("--proxy-lm", required=True)
    ap.add_argument("--proxy-flow", default=None)
    ap.add_argument("--out", required=True)
    ap.add_argument("--md", default=None)
    ap.add_argument("--rules", default=None, help="comma-separated panels in this order (default: every rule seen)")
    a = ap.parse_args()

    specs = []
    for path in a.results:
        proxy = a.proxy_flow if "-flow" in os.path.basename(path) else a.proxy_lm
        if proxy is None:
            raise SystemExit(f"{path}: a diffusion spec needs --proxy-flow")
        specs.append(shifts(path, proxy))
    rules = a.rules.split(",") if a.rules else list(dict.fromkeys(r for _, s, _ in specs for r in s))
    plt = pyplot()
    ncols = min(4, len(rules))
    nrows = (len(rules) + ncols - 1) // ncols
    fig, axs = plt.subplots(nrows, ncols, figsize=(4.4 * ncols, 3.6 * nrows + 0.8), sharey=True, squeeze=False)
    for ax in axs.flat[len(rules):]:
        ax.set_visible(False)
    colours = plt.get_cmap("tab10")
    for ax, rule in zip(axs.flat, rules):
        x, ticks, labels = 0, [], []
        for k, (name, s, _) in enumerate(specs):
            pts = s.get(rule, [])
            if not pts:
                continue
            xs = np.arange(x, x + len(pts))
            m = np.array([p[1] for p in pts])
            lo, hi = m - np.array([p[2] for p in pts]), np.array([p[3] for p in pts]) - m
            ax.errorbar(xs, m, yerr=[lo, hi], fmt="o-", ms=4, capsize=2, color=colours(k % 10), label=name)
            for x, p in zip(xs, pts):
                mark_edges(ax, x, p[1], p[4], colours(k % 10), 6, 0.3)
            ticks += list(xs)
            labels += [p[0] for p in pts]
            x += len(pts) + 1
        ax.axhspan(-0.5, 0.5, color="0.85", zorder=0)
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xticks(ticks)
        ax.set_xticklabels(labels, rotation=90, fontsize=6)
        ax.set_title(rule, fontsize=10)
        ax.grid(alpha=0.3, axis="y")
    for row in axs:
        row[0].set_ylabel("optimum - proxy's (octaves)")
    handles = {}
    for ax in axs.flat:
        for h, l in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(l, h)
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=min(5, len(handles)), fontsize=7)
    fig.suptitle("Transfer from the dense proxy: each configuration's fitted optimum LR against the proxy's\n"
                 "(grey: +-1/2 octave; bars: seed range; a triangle: best LR at the grid's edge, the optimum may lie "
                 "beyond)", fontsize=10)
    fig.tight_layout(rect=(0, 0.7 / (3.6 * nrows + 0.8), 1, 1 - 0.5 / (3.6 * nrows + 0.8)))
    save_figure(fig, a.out + ".png")
    if a.md:
        lines = ["# Shift of each configuration's fitted optimum LR from its dense proxy's (octaves)", "",
                 "Seeds averaged (range in brackets where two ran); a rule the proxy did not run reads the proxy run "
                 "of the rule with its table at the reference (proxy_rules.py). The verdict is REPRODUCTION.md's "
                 "rule applied to the row (verdict.py): **transfers** where every shift is within +-1/2 octave, the "
                 "curves whole and no optimum at a grid edge; **drifts** where the shifts span more than one octave "
                 "beyond the largest seed spread; else **inconclusive**.", ""]
        for name, s, whole in specs:
            lines += [f"## {name}", "", "| rule | shifts | verdict |", "|---|---|---|"]
            for rule, pts in s.items():
                cells = [f"{c}: {m:+.2f}" + (f" [{l:+.2f}, {h:+.2f}]" if h > l else "") + (f" ({e})" if e else "")
                         for c, m, l, h, e in pts]
                word, why = transfer_verdict(pts, rule in whole)
                lines.append(f"| {rule} | {'; '.join(cells)} | **{word}** ({why}) |")
            lines.append("")
        with open(output_path(a.md, ".md"), "w") as f:
            f.write("\n".join(lines))
        print("wrote", a.md)


if __name__ == "__main__":
    sys.exit(run(main))
