#!/usr/bin/env python3
"""LR-transfer figures from a sweep index (NAME-index.h5) or results file (NAME.json), in the paper's style.

(a) PREFIX-loss.png: one panel per rule with a shared y-axis; one curve per configuration (the axes other than
    the rule, the LR and the seed), coloured in the spec's order on a sequential colormap; seeds averaged, their
    range as error bars; each curve's fitted optimum (optimum.py) marked with a star; with --proxy, the dense
    proxy's curve too (black, dashed), so that each star can be read against the proxy's.
(b) PREFIX-optimum.png: the fitted optimum LR against the configuration axis, one curve per rule, a +-1/2-octave
    band around the dense proxy's fitted optimum with --proxy (a dashed line), else around the rule's mean; seed
    range as error bars.

usage: sweep_lr.py SWEEP [--proxy PROXY] [--out PREFIX] [--lr-key hp.lr] [--x-key ffn.shape]
                         [--metric final_val_loss|best_val_loss|final_train_loss]
Needs numpy and matplotlib (h5py for index files).
"""
import math
import sys

import warnings

import numpy as np

from outputs import run
from sweep_index import Summary, figure_arguments, fmt, mark_edges, output_prefix, pyplot, save_figure
from transfer_table import edge_sides, optima, proxy_optima, proxy_table, proxy_twins

plt = pyplot()


def main():
    ap = figure_arguments(__doc__)
    ap.add_argument("--lr-key", default="hp.lr")
    ap.add_argument("--x-key", default=None, help="configuration axis for panel (b)'s x (default: the first)")
    ap.add_argument("--proxy", default=None, help="the dense proxy's sweep (index or results file)")
    a = ap.parse_args()

    sw = Summary(a.index)
    conf_keys, table = optima(sw, a.lr_key, a.metric)
    prefix = output_prefix(a.index, a.out)
    rules = list(table)
    confs = list(dict.fromkeys(c for r in rules for c in table[r]))
    cmap = plt.get_cmap("viridis")
    colour = {c: cmap(i / max(1, len(confs) - 1) * 0.9) for i, c in enumerate(confs)}
    metric = a.metric.replace("_", " ")
    if a.x_key and a.x_key not in conf_keys:  # before any file is written
        raise SystemExit(f"--x-key {a.x_key}: not a configuration axis ({', '.join(conf_keys)})")
    proxy_runs = proxy_table(a.proxy, list(table), a.lr_key, a.metric, sw) if a.proxy else {}

    # (a) loss vs log2 LR, one panel per rule.
    # At least 6 inches wide, so that one panel has room for the title.
    fig, axs = plt.subplots(1, len(rules), figsize=(max(6.0, 3.6 * len(rules) + 1.2), 3.6), sharey=True, squeeze=False)
    star_losses = []
    for ax, rule in zip(axs[0], rules):
        proxy_curves = [("dense proxy", p) for p in proxy_runs.get(rule, {}).values()]
        for conf, per_seed in proxy_curves + list(table[rule].items()):
            if not per_seed:
                continue
            is_proxy = conf == "dense proxy"
            xs = np.log2(per_seed[0][2])
            ys = np.array([y for _, _, _, y in per_seed])
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # an LR where every seed diverged: left as a gap
                mean = np.nanmean(ys, axis=0) if len(ys) > 1 else ys[0]
                lo, hi = np.nanmin(ys, axis=0), np.nanmax(ys, axis=0)
            lab = conf if is_proxy else ", ".join(fmt(v) for v in conf) or sw.name
            c = "k" if is_proxy else colour[conf]
            ax.errorbar(xs, mean, yerr=[mean - lo, hi - mean] if len(ys) > 1 else None, fmt="o--" if is_proxy else "o-",
                        ms=3, lw=1.2, capsize=2, color=c, label=lab)
            fx = np.mean([o.log2_x for _, o, _, _ in per_seed])
            fy = np.mean([o.loss for _, o, _, _ in per_seed])
            ax.plot([fx], [fy], marker="*", ms=11, color=c, markeredgecolor="k", zorder=5)
            star_losses.append(fy)
        ax.set_title(rule)
        ax.set_xlabel(f"log2 {a.lr_key}")
        ax.grid(alpha=0.3)
    axs[0][0].set_ylabel(metric)
    finite = sw.loss(a.metric)[sw.completed(a.metric)]
    if a.proxy:
        proxy_sw = Summary(a.proxy)
        finite = np.concatenate([finite, proxy_sw.loss(a.metric)[proxy_sw.completed(a.metric)]])
    if len(finite):  # the interesting part: from the best loss to a little above the median
        top = min(np.nanmax(finite), np.nanmedian(finite) + 2 * (np.nanmedian(finite) - np.nanmin(finite)) + 0.05)
        axs[0][0].set_ylim(min([np.nanmin(finite), *star_losses]) - 0.02, top)  # a fitted vertex can lie below the grid
    axs[0][0].legend(fontsize=7, title=", ".join(conf_keys) or None, title_fontsize=7)
    # seeds with a whole curve somewhere (a sweep cut short may have run one of its seeds only)
    seeds = len({s for confs in table.values() for per_seed in confs.values() for s, _, _, _ in per_seed}) or 1
    fig.suptitle(f"{sw.name}: {metric} vs learning rate (* fitted optimum; {seeds} seed{'s' * (seeds > 1)})", fontsize=10)
    fig.tight_layout()
    save_figure(fig, prefix + "-loss.png")

    # (b) fitted optimum vs the configuration axis, one curve per rule.
    if not conf_keys:
        return
    x_key = a.x_key or conf_keys[0]
    if x_key not in conf_keys:
        raise SystemExit(f"--x-key {x_key}: not a configuration axis ({', '.join(conf_keys)})")
    xi = conf_keys.index(x_key)
    x_values = sw.values(x_key)
    numeric = all(isinstance(v, float) for v in x_values)
    pos = {v: (v if numeric else p) for p, v in enumerate(x_values)}
    proxy = proxy_optima(proxy_runs)
    twins = proxy_twins(a.proxy, rules) if a.proxy else {}  # the proxy run each rule reads, where not its own
    rule_colours = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(6.5, 4))
    edge_marked = False
    for k, rule in enumerate(rules):
        xs, ys, lo, hi, edges = [], [], [], [], []
        for conf, per_seed in table[rule].items():
            if not per_seed:
                continue
            fits = [o.log2_x for _, o, _, _ in per_seed]
            xs.append(pos[conf[xi]]), ys.append(np.mean(fits)), lo.append(min(fits)), hi.append(max(fits))
            edges.append(edge_sides(per_seed))
        if not xs:
            continue
        order = np.argsort(xs)
        edges = [edges[i] for i in order]
        xs, ys, lo, hi = (np.array(v, dtype=float)[order] for v in (xs, ys, lo, hi))
        c = rule_colours(k % 10)
        ax.errorbar(xs, ys, yerr=[ys - lo, hi - ys], fmt="o-", capsize=3, color=c, label=rule)
        # A best LR at the grid's edge: the optimum may lie beyond it (a triangle pointing that way).
        for x, y, e in zip(xs, ys, edges):
            mark_edges(ax, x, y, e, c, 8, 0.25)
        edge_marked = edge_marked or any(edges)
        # The transfer claim's tolerance: +-1/2 octave around the dense proxy's optimum (else the rule's mean).
        centre = math.log2(proxy[rule]) if rule in proxy else float(np.mean(ys))
        ax.fill_between([xs[0], xs[-1]], centre - 0.5, centre + 0.5, color=c, alpha=0.12)
        if rule in proxy:
            ax.axhline(centre, color=c, ls="--", lw=1,
                       label=f"{rule}: dense proxy" + (f" ({twins[rule]}'s run)" if rule in twins else ""))
    if edge_marked:
        ax.plot([], [], marker="v", color="0.3", ls="none", label="best LR at the grid's edge (optimum beyond)")
    if numeric:
        ax.set_xscale("log", base=2)
    else:
        ax.set_xticks(range(len(x_values)))
        ax.set_xticklabels([fmt(v) for v in x_values])
    ax.set_xlabel(x_key)
    ax.set_ylabel(f"log2 fitted optimal {a.lr_key}")
    band = "the dense proxy's optimum (else the rule's mean)" if proxy else "the rule's mean"
    ax.set_title(f"{sw.name}: fitted optimum\nband: +-1/2 octave around {band}\nbars: seed range", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, prefix + "-optimum.png")


if __name__ == "__main__":
    sys.exit(run(main))
