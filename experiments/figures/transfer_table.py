#!/usr/bin/env python3
"""Transfer table of an LR sweep: the fitted optimum per rule and shape, its spread across shapes, the seed
spread, and the loss penalty of using the dense proxy's LR.

usage: transfer_table.py SWEEP [--proxy PROXY] [--lr-key hp.lr] [--metric final_val_loss] [--brief] [--curves]
                         [--md OUT.md]
  SWEEP, PROXY: a sweep index (NAME-index.h5) or results file (NAME.json). PROXY is the dense proxy's LR sweep
  (rules it did not run read the curve of the rule whose table they share at the reference, proxy_rules.py);
  without it the penalty column is left out.

Per rule and configuration (every axis but the rule, the LR and the seed): each seed's grid optimum and fitted
optimum (optimum.py), their mean in log2(LR), the seed spread (largest minus smallest fitted log2 LR, octaves),
the mean best loss, and the penalty: the configuration's loss at the proxy's fitted optimum (linear in log2 LR
between the two grid points around it, seeds averaged) minus its best grid loss (seeds averaged).
Per rule: the spread of the fitted optimum across configurations (max - min of the seed means, octaves), the
largest seed spread, and the largest penalty. `edge` marks a best point at the grid's edge (low, high: extend
the grid) or beside an LR that diverged or is missing (gap); either way the optimum is the grid value, not fitted.

--curves instead: one row per rule and configuration, the proxy's first, with the loss at every LR of the grid
(seeds averaged; the lowest marked *), the fitted optimum (seeds averaged in log2 LR) and its shift from the
proxy's fitted optimum in octaves (the transfer error of the rule for that configuration).
"""
import argparse
import math
import sys
from collections import OrderedDict

import numpy as np

from cards import card_mix, cards_line
from optimum import fit_optimum, interpolate_log2
from outputs import ArgumentParser, output_path, run
from proxy_rules import proxy_rule
from regrid import DONE
from sweep_index import Summary, fmt


def optima(sw, lr_key, metric):
    """OrderedDict rule -> OrderedDict config tuple -> list of (seed, Optimum, lrs, losses) per seed. Only whole
    curves count: every LR of that seed completed or diverged (a diverged point is a gap in the fit)."""
    sw.require_axis(lr_key)
    loss = sw.loss(metric)
    ok = sw.completed(metric)
    seeds = sw.column("seed") if "seed" in sw.axes else [1.0] * len(sw)
    conf_keys = [k for k in sw.axes if k not in ("rule", "seed", lr_key)]
    lrs = np.array(sw.column(lr_key), dtype=float)
    out = OrderedDict()
    groups = sw.rows_by(["rule"]) if "rule" in sw.axes else OrderedDict({("(spec)",): list(range(len(sw)))})
    for (rule,), idx in groups.items():
        by_conf = OrderedDict()
        for i in idx:
            conf = tuple(sw.column(k)[i] for k in conf_keys)
            by_conf.setdefault(conf, OrderedDict()).setdefault(seeds[i], []).append(i)
        out[rule] = OrderedDict()
        for conf, by_seed in by_conf.items():
            per_seed = []
            for seed, rows in by_seed.items():
                if any(sw.status[i] not in DONE for i in rows):
                    continue  # a curve with points not yet run (or failed) gives no optimum
                x = lrs[rows]
                y = np.where(ok[rows], loss[rows], np.nan)
                o = fit_optimum(x, y)
                if o is not None:
                    per_seed.append((seed, o, x, y))
            out[rule][conf] = per_seed
    return conf_keys, out


def edge_sides(per_seed):
    """'low', 'high', 'high,low' or '': the grid edges at which some seed's best LR sits (its optimum may lie
    beyond)."""
    return ",".join(sorted({o.edge for _, o, _, _ in per_seed if o.edge}))


def curve_flags(per_seed):
    """The edge column: 'low' / 'high' where a seed's best point is at the grid's edge (extend the grid), 'gap' where
    a neighbour of it diverged or is missing (no parabola: the optimum is the grid value)."""
    return ",".join(sorted({o.edge or "gap" for _, o, _, _ in per_seed if o.edge or not o.fitted}))


def summarize(conf_keys, table, proxy_lr=None):
    """Rows and per-rule summaries as plain data (also used by the campaign's REPRODUCTION table)."""
    rows, rules = [], OrderedDict()
    for rule, confs in table.items():
        means, spreads, penalties, edges, gaps = [], [], [], 0, 0
        for conf, per_seed in confs.items():
            if not per_seed:
                continue
            fits = [o.log2_x for _, o, _, _ in per_seed]
            mean = float(np.mean(fits))
            spread = max(fits) - min(fits) if len(fits) > 1 else None  # one seed: no spread to report
            best = float(np.mean([o.grid_loss for _, o, _, _ in per_seed]))
            edge = curve_flags(per_seed)
            edges += any(o.edge for _, o, _, _ in per_seed)
            gaps += any(not o.fitted and not o.edge for _, o, _, _ in per_seed)
            pen = None
            plr = (proxy_lr or {}).get(rule)
            if plr is not None:
                at = [interpolate_log2(x, y, plr) for _, _, x, y in per_seed]
                if all(v is not None for v in at):
                    pen = float(np.mean(at)) - best
            means.append(mean)
            if spread is not None:
                spreads.append(spread)
            if pen is not None:
                penalties.append(pen)
            rows.append(dict(rule=rule, conf=conf, seeds=[s for s, _, _, _ in per_seed],
                             grid=[o.grid_x for _, o, _, _ in per_seed], fitted=fits, mean=mean, spread=spread,
                             best=best, edge=edge, penalty=pen))
        if means:
            rules[rule] = dict(spread=max(means) - min(means), seed_spread=max(spreads) if spreads else None,
                               n=len(means), n_seeded=len(spreads),
                               max_penalty=max(penalties) if penalties else None, edges=edges, gaps=gaps,
                               low=min(means), high=max(means))
    return rows, rules


def task_of(sw):
    """'lm' or 'flow' from a results file's first point (None for an index, which keeps no configs)."""
    return (sw.points[0].get("config") or {}).get("task", "lm") if sw.points else None


def proxy_summary(path, sweep=None):
    """The proxy's Summary; with `sweep` (a Summary), refused in one line when the two are of different tasks."""
    px = Summary(path)
    if sweep is not None and task_of(sweep) and task_of(px) and task_of(sweep) != task_of(px):
        raise SystemExit(f"{path}: a proxy of task {task_of(px)}, the sweep {sweep.name} is of task {task_of(sweep)}")
    return px


def proxy_twins(path, rules):
    """{rule: the rule whose proxy run it reads} for the rules the proxy did not run itself (proxy_rules.py)."""
    ran = Summary(path).values("rule")
    return {r: t for r in rules if (t := proxy_rule(r, ran)) not in (None, r)}


def proxy_table(path, rules, lr_key, metric, sweep=None):
    """The proxy's optima (as optima() gives them) for each of `rules`, from its own run or, where the proxy did
    not run it, from the run of the rule with the same table at the reference (proxy_rules.py)."""
    _, ran = optima(proxy_summary(path, sweep), lr_key, metric)
    twins = {rule: proxy_rule(rule, list(ran)) for rule in rules}
    return OrderedDict((rule, ran[twin]) for rule, twin in twins.items() if twin is not None)


def proxy_optima(runs):
    """rule -> the proxy's fitted optimum LR (seeds averaged in log2), from proxy_table's runs."""
    out = {}
    for rule, confs in runs.items():
        fits = [o.log2_x for per_seed in confs.values() for _, o, _, _ in per_seed]
        if fits:
            out[rule] = 2.0 ** float(np.mean(fits))
    return out


def markdown(name, conf_keys, rows, rules, proxy_lr, twins=None):
    conf_label = ", ".join(conf_keys) or "config"
    lines = [f"| rule | {conf_label} | grid optimum per seed | fitted log2 LR per seed | mean | seed spread (oct) "
             f"| best loss | penalty at proxy LR | edge |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        pen = "" if r["penalty"] is None else f"{r['penalty']:+.4f}"
        lines.append(f"| {r['rule']} | {', '.join(fmt(v) for v in r['conf']) or '-'} | "
                     f"{', '.join(f'2^{math.log2(g):.0f}' for g in r['grid'])} | "
                     f"{', '.join(f'{f:.2f}' for f in r['fitted'])} | {r['mean']:.2f} | "
                     f"{'-' if r['spread'] is None else format(r['spread'], '.2f')} | "
                     f"{r['best']:.4f} | {pen} | {r['edge']} |")
    lines.append("")
    for rule, s in rules.items():
        plr = proxy_lr.get(rule)
        extra = f"; proxy's fitted LR 2^{math.log2(plr):.2f}, largest penalty {s['max_penalty']:+.4f}" \
            if plr is not None and s["max_penalty"] is not None else ""
        edge = f"; {s['edges']} at the grid's edge" if s["edges"] else ""
        if s["gaps"]:
            edge += f"; {s['gaps']} with a seed not fitted (a neighbouring LR diverged or is missing: the grid value)"
        seeds = "no configuration has two seeds yet" if s["seed_spread"] is None else \
            f"largest seed spread {s['seed_spread']:.2f} ({s['n_seeded']} of {s['n']} with two or more seeds)"
        lines.append(f"- **{rule}**: fitted optimum spans {s['spread']:.2f} octaves across {s['n']} configurations "
                     f"(log2 LR {s['low']:.2f} ... {s['high']:.2f}); {seeds}{extra}{edge}")
    if proxy_lr and twins:
        lines += ["", "Rules the dense proxy did not run read the proxy run of the rule with the same parameter table "
                  "at the reference (proxy_rules.py): " + ", ".join(f"{r} reads {t}'s" for r, t in twins.items()) + "."]
    return "\n".join(lines)


def lr_label(lr):
    """2^k for a power of two, else the value."""
    k = math.log2(lr)
    return f"2^{k:.0f}" if abs(k - round(k)) < 1e-9 else f"{lr:g}"


def curve_rows(table, proxy_table=None):
    """Rows of the --curves table: dict(rule, conf, curve {lr: mean loss}, fitted, edge, shift); the proxy's
    rows (conf None) first within each rule, then the sweep's configurations. shift is None without a proxy."""
    rows = []
    for rule, confs in table.items():
        proxy = [None] if proxy_table and proxy_table.get(rule) else []
        proxy_fit = None
        for conf in proxy + list(confs):
            per_seed = [p for c in proxy_table[rule].values() for p in c] if conf is None else confs[conf]
            if not per_seed:
                continue
            curve = OrderedDict()
            for lr in sorted({float(x) for _, _, xs, _ in per_seed for x in xs}):
                with np.errstate(all="ignore"):
                    vals = [y[list(xs).index(lr)] for _, _, xs, y in per_seed if lr in list(xs)]
                    curve[lr] = float(np.nanmean(vals)) if np.isfinite(vals).any() else math.nan
            fitted = float(np.mean([o.log2_x for _, o, _, _ in per_seed]))
            if conf is None:
                proxy_fit = fitted
            rows.append(dict(rule=rule, conf=conf, curve=curve, fitted=fitted,
                             edge=curve_flags(per_seed),
                             shift=None if proxy_fit is None else fitted - proxy_fit))
    return rows


def curves_markdown(conf_keys, rows, proxy_name="dense proxy"):
    lrs = sorted({lr for r in rows for lr in r["curve"]})
    lines = [f"| rule | {', '.join(conf_keys) or 'config'} | " + " | ".join(f"LR {lr_label(lr)}" for lr in lrs)
             + " | fitted optimum | shift from proxy |", "|---|---|" + "---|" * (len(lrs) + 2)]
    for r in rows:
        finite = [v for v in r["curve"].values() if math.isfinite(v)]
        best = min(finite) if finite else None

        def cell(lr):
            v = r["curve"].get(lr)
            if v is None:
                return ""
            return "diverged" if not math.isfinite(v) else f"{v:.3f}" + ("*" if v == best else "")

        conf = proxy_name if r["conf"] is None else ", ".join(fmt(v) for v in r["conf"]) or "-"
        flags = [f"{e} edge: extend the grid" if e != "gap" else "a seed not fitted: a neighbour diverged"
                 for e in r["edge"].split(",") if e]
        edge = f" ({'; '.join(flags)})" if flags else ""
        shift = "" if r["shift"] is None else "0 (reference)" if r["conf"] is None else f"{r['shift']:+.2f} octaves"
        lines.append(f"| {r['rule']} | {conf} | " + " | ".join(cell(lr) for lr in lrs)
                     + f" | 2^{r['fitted']:.2f}{edge} | {shift} |")
    return "\n".join(lines)


def main():
    ap = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sweep")
    ap.add_argument("--proxy", default=None)
    ap.add_argument("--lr-key", default="hp.lr")
    ap.add_argument("--metric", default="final_val_loss", choices=["final_val_loss", "best_val_loss", "final_train_loss"])
    ap.add_argument("--brief", action="store_true", help="only the per-rule lines")
    ap.add_argument("--curves", action="store_true", help="loss per LR, fitted optimum and shift from the proxy")
    ap.add_argument("--md", default=None, help="also write the table to this Markdown file")
    a = ap.parse_args()
    sw = Summary(a.sweep)
    conf_keys, table = optima(sw, a.lr_key, a.metric)
    proxy_runs = proxy_table(a.proxy, list(table), a.lr_key, a.metric, sw) if a.proxy else {}
    proxy_lr = proxy_optima(proxy_runs)
    done = sum(s == "completed" for s in sw.status)
    head = f"{sw.name}: {done}/{len(sw)} points completed, metric {a.metric}"
    cards = cards_line(*card_mix(sw, a.lr_key))
    if cards:
        head += "\n\n" + cards
    if a.curves:
        text = curves_markdown(conf_keys, curve_rows(table, proxy_runs or None))
        print(head)
        print(text)
    else:
        rows, rules = summarize(conf_keys, table, proxy_lr)
        text = markdown(sw.name, conf_keys, rows, rules, proxy_lr, proxy_twins(a.proxy, list(table)) if a.proxy else None)
        print(head)
        print("\n".join(l for l in text.splitlines() if l.startswith("- ")) if a.brief else text)
    if a.md:
        with open(output_path(a.md, ".md"), "w") as f:
            f.write(f"{head}\n\n{text}\n")


if __name__ == "__main__":
    sys.exit(run(main))
