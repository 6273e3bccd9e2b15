"""The table of an LR x WD sweep (wd-lm): the fitted WD optimum of every curve (one rule, shape and LR) and how far
it moves across the shapes. sweep_wd.py --md writes it. Plain Python (no numpy), so the test suite runs it.

The paper's WD claim is that the optimum WD carries over across MoE shapes (with the AdamW timescale
tau = 1/(LR * WD) a fixed fraction of the run); tau is given in steps from the base LR and WD.
"""
import math

from optimum import fit_optimum


def wd_optima(points):
    """points: (group, shape, lr, wd, loss) tuples, loss NaN where the point did not complete, wd > 0.
    Returns {(group, shape, lr): Optimum over WD}, in the order the curves first appear (None: no finite loss)."""
    curves = {}
    for g, s, lr, wd, loss in points:
        xs, ys = curves.setdefault((g, s, lr), ([], []))
        xs.append(wd)
        ys.append(loss)
    return {k: fit_optimum(xs, ys) for k, (xs, ys) in curves.items()}


def best_curves(optima):
    """{(group, shape): the key of its curve with the lowest fitted loss} (the LR that suits the shape best)."""
    best = {}
    for k, o in optima.items():
        if o is not None and (k[:2] not in best or o.loss < optima[best[k[:2]]].loss):
            best[k[:2]] = k
    return best


def log2_label(x):
    k = math.log2(x)
    return f"2^{k:g}" if k == round(k) else f"{x:g}"


def wd_summary(optima):
    """One line per group: the fitted log2 WD across shapes at each LR, and at each shape's best LR (lowest fitted
    loss), with the spread in octaves and the curves whose best point is at the WD grid's edge."""
    lines = []
    for g in dict.fromkeys(k[0] for k in optima):
        mine = {k: o for k, o in optima.items() if k[0] == g and o is not None}
        parts = []
        for lr in sorted(dict.fromkeys(k[2] for k in mine)):
            fits = [(k[1], o.log2_x) for k, o in mine.items() if k[2] == lr]
            parts.append(f"at LR {log2_label(lr)} {spread(fits)}")
        best = [k for (bg, _), k in best_curves(optima).items() if bg == g]
        parts.append("at each shape's best LR " + spread([(k[1], optima[k].log2_x) for k in best]))
        edges = [f"{s} at LR {log2_label(lr)} ({o.edge})" for (_, s, lr), o in mine.items() if o.edge]
        line = f"- **{g}**: fitted WD optimum " + "; ".join(parts)
        lines.append(line + ("; at the WD grid's edge: " + ", ".join(edges) if edges else ""))
    return lines


def spread(fits):
    """'spans X octaves (log2 WD a at S1, ...)' over (shape, fitted log2 WD) pairs."""
    xs = [x for _, x in fits]
    return f"spans {max(xs) - min(xs):.2f} octaves (" + ", ".join(f"{x:.2f} at {s}" for s, x in fits) + ")"


def wd_table(optima, steps, metric):
    """Markdown lines: one row per curve, the lower-loss LR of each (group, shape) in bold."""
    lines = [f"| rule | shape | LR | grid optimum WD | fitted log2 WD | {metric} at the optimum | tau = 1/(LR WD) "
             "in steps | edge |", "|---|---|---|---|---|---|---|---|"]
    best = best_curves(optima)
    for k, o in optima.items():
        g, s, lr = k
        if o is None:
            lines.append(f"| {g} | {s} | {log2_label(lr)} | - | - | - | - | no completed point |")
            continue
        tau = 1.0 / (lr * o.x)
        lr_cell = f"**{log2_label(lr)}**" if best.get((g, s)) == k else log2_label(lr)
        tau_cell = f"{tau:.0f}" + (f" ({tau / steps:.2f} of the run)" if steps else "")
        lines.append(f"| {g} | {s} | {lr_cell} | {log2_label(o.grid_x)} | {o.log2_x:.2f} | {o.loss:.4f} | "
                     f"{tau_cell} | {o.edge} |")
    return lines
