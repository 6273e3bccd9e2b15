"""The verdict rule of experiments/results/REPRODUCTION.md, applied mechanically to one rule's transfer shifts.

Plain Python (used by transfer_summary.py --md, tested in ctest). A rule **transfers** where every configuration's
fitted optimum (seeds averaged) lies within +-1/2 octave of its dense proxy's, with the rule's curves whole (every
point of the grid finished) and no optimum at a grid edge; it **drifts** where its optima span more than one
octave by more than the largest seed spread (an optimum at an edge then only widens the span); where points
are missing, or otherwise, it is **inconclusive**, and the reason says which configuration falls out.
"""

BAND = 0.5  # octaves either side of the proxy's optimum
DRIFT = 1.0  # octaves of span beyond the seed spread


def transfer_verdict(confs, whole=True):
    """confs: [(label, mean shift, lowest seed's, highest seed's, edge)] in octaves, edge 'low', 'high' or ''.
    Returns (word, reason): word one of 'transfers', 'drifts', 'inconclusive'."""
    if not confs:
        return "inconclusive", "no configuration has a fitted optimum"
    if not whole:
        return "inconclusive", "points of the grid not yet run"
    means = [m for _, m, _, _, _ in confs]
    span = max(means) - min(means)
    seed_spread = max(h - l for _, _, l, h, _ in confs)
    if span > DRIFT + seed_spread:
        return "drifts", f"span {span:.2f} > {DRIFT:g} + seed spread {seed_spread:.2f}"
    out = [f"{c} {m:+.2f}" for c, m, _, _, _ in confs if abs(m) > BAND]
    edges = [f"{c} at the {e} edge" for c, _, _, _, e in confs if e]
    if out or edges:
        return "inconclusive", "; ".join((["outside +-1/2: " + ", ".join(out)] if out else []) + edges)
    return "transfers", f"every shift within +-{BAND:g} (span {span:.2f})"
