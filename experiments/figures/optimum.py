"""The optimum of a learning-rate (or weight-decay) curve: the grid's best point and a fitted one.

The fitted optimum is the vertex of the parabola in log2(x) through the best grid point and its two neighbours.
When the best point is at the grid's edge, or a neighbour is missing (diverged or not run), no parabola is
fitted: the fitted value is the grid value and the result says why (`edge`: extend the grid that way).
Every figure and table script takes its optima from here.
"""
import math
from dataclasses import dataclass


@dataclass
class Optimum:
    grid_x: float  # the best grid point (e.g. the LR)
    grid_loss: float
    log2_x: float  # fitted optimum, log2 (= log2(grid_x) when not fitted)
    loss: float  # the parabola's value at its vertex (= grid_loss when not fitted)
    fitted: bool
    edge: str  # "" inside the grid, "low" or "high" when the best point is the grid's first or last

    @property
    def x(self):
        return 2.0 ** self.log2_x


def parabola_vertex(p0, p1, p2):
    """(x, y) of the vertex of the parabola through three points with p1 the lowest; p1 if they are collinear."""
    (x0, y0), (x1, y1), (x2, y2) = p0, p1, p2
    den = (x1 - x0) * (y1 - y2) - (x1 - x2) * (y1 - y0)
    if den == 0:
        return x1, y1
    xv = x1 - 0.5 * ((x1 - x0) ** 2 * (y1 - y2) - (x1 - x2) ** 2 * (y1 - y0)) / den
    # Lagrange form, evaluated at the vertex.
    def term(xa, ya, xb, xc):
        return ya * (xv - xb) * (xv - xc) / ((xa - xb) * (xa - xc))
    yv = term(x0, y0, x1, x2) + term(x1, y1, x0, x2) + term(x2, y2, x0, x1)
    return xv, yv


def fit_optimum(xs, losses):
    """Optimum of loss over the grid xs (> 0; any order). Non-finite losses (diverged, missing) are gaps.
    Returns None when no loss is finite."""
    pts = sorted((float(x), float(y)) for x, y in zip(xs, losses))
    ok = [math.isfinite(y) for _, y in pts]
    if not any(ok):
        return None
    j = min((i for i in range(len(pts)) if ok[i]), key=lambda i: pts[i][1])
    gx, gy = pts[j]
    edge = "low" if j == 0 else "high" if j == len(pts) - 1 else ""
    if edge or not (ok[j - 1] and ok[j + 1]):
        return Optimum(gx, gy, math.log2(gx), gy, False, edge)
    lx = [(math.log2(pts[i][0]), pts[i][1]) for i in (j - 1, j, j + 1)]
    xv, yv = parabola_vertex(*lx)
    return Optimum(gx, gy, xv, yv, True, "")


def interpolate_log2(xs, losses, x):
    """Loss at x, linear in log2(x) between the two grid points around it (None outside the finite range)."""
    pts = sorted((math.log2(a), b) for a, b in zip(xs, losses) if math.isfinite(b))
    t = math.log2(x)
    for (a0, b0), (a1, b1) in zip(pts, pts[1:]):
        if a0 <= t <= a1:
            return b0 + (b1 - b0) * (t - a0) / (a1 - a0) if a1 > a0 else b0
    if pts and abs(pts[0][0] - t) < 1e-9:
        return pts[0][1]
    return None
