#!/usr/bin/env python3
"""experiments/figures/optimum.py: the fitted optimum every figure and table uses (run by ctest)."""
import math
import os
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "experiments", "figures"))
from optimum import fit_optimum, interpolate_log2, parabola_vertex  # noqa: E402
from proxy_rules import proxy_rule  # noqa: E402
from shapes import moe_axes, parse_moe_shape  # noqa: E402
from wd_table import best_curves, wd_optima, wd_summary, wd_table  # noqa: E402


class FitOptimum(unittest.TestCase):
    def test_exact_parabola(self):
        # loss = (log2 lr + 8.3)^2 + 3 on a grid 2^-12 .. 2^-6: the vertex is found exactly from the best three.
        xs = [2.0 ** k for k in range(-12, -5)]
        ys = [(math.log2(x) + 8.3) ** 2 + 3 for x in xs]
        o = fit_optimum(xs, ys)
        self.assertTrue(o.fitted)
        self.assertEqual(o.grid_x, 2.0 ** -8)
        self.assertAlmostEqual(o.log2_x, -8.3, places=12)
        self.assertAlmostEqual(o.loss, 3.0, places=12)
        self.assertEqual(o.edge, "")

    def test_order_and_gaps(self):
        xs = [2.0 ** -6, 2.0 ** -9, 2.0 ** -7, 2.0 ** -8, 2.0 ** -10]
        ys = [float("nan"), 4.0, 3.5, 3.0, 5.0]  # unsorted; the diverged 2^-6 is a gap
        o = fit_optimum(xs, ys)
        self.assertEqual(o.grid_x, 2.0 ** -8)
        self.assertTrue(o.fitted)
        self.assertAlmostEqual(o.log2_x, -8 + 0.5 * (4.0 - 3.5) / (4.0 - 2 * 3.0 + 3.5), places=12)
        # A missing neighbour: no fit, the grid value.
        o = fit_optimum(xs, [4.0, 3.9, float("nan"), 3.0, 5.0])
        self.assertFalse(o.fitted)
        self.assertEqual(o.log2_x, -8)

    def test_edges(self):
        xs = [2.0 ** k for k in range(-12, -5)]
        low = fit_optimum(xs, [1, 2, 3, 4, 5, 6, 7])
        high = fit_optimum(xs, [7, 6, 5, 4, 3, 2, 1])
        self.assertEqual((low.edge, low.fitted, low.log2_x), ("low", False, -12))
        self.assertEqual((high.edge, high.fitted, high.log2_x), ("high", False, -6))
        self.assertIsNone(fit_optimum(xs, [float("nan")] * 7))

    def test_flat_and_collinear(self):
        self.assertEqual(parabola_vertex((0, 1), (1, 1), (2, 1)), (1, 1))
        o = fit_optimum([1, 2, 4], [2.0, 1.0, 2.0])
        self.assertAlmostEqual(o.log2_x, 1.0)

    def test_interpolate(self):
        xs, ys = [0.25, 0.5, 1.0], [3.0, 1.0, 2.0]
        self.assertAlmostEqual(interpolate_log2(xs, ys, 2 ** -1.5), 2.0)
        self.assertAlmostEqual(interpolate_log2(xs, ys, 0.25), 3.0)
        self.assertIsNone(interpolate_log2(xs, ys, 2.0))


class MoeAxes(unittest.TestCase):
    """sweep_shape.py's two panels of paper Fig 6: total experts at the common a, activated at the common N."""

    def test_fig6_shapes(self):
        shapes = ["8e2a", "16e2a", "32e2a", "64e2a", "128e2a", "64e4a", "64e8a", "64e16a", "64e32a", "64e64a"]
        (t1, _, n_axis), (t2, _, a_axis) = moe_axes(shapes)
        self.assertEqual(t1, "total experts N at a = 2")
        self.assertEqual(n_axis, [("8e2a", 8), ("16e2a", 16), ("32e2a", 32), ("64e2a", 64), ("128e2a", 128)])
        self.assertEqual(t2, "activated experts a at N = 64")
        self.assertEqual([x for _, x in a_axis], [2, 4, 8, 16, 32, 64])  # 64e2a is on both axes

    def test_not_two_axes(self):
        self.assertEqual(parse_moe_shape("128e32a"), (128, 32))
        self.assertIsNone(parse_moe_shape("dense"))
        self.assertIsNone(moe_axes(["64e2a", "64e8a", "64e64a"]))  # one axis only: the caller's single panel
        self.assertIsNone(moe_axes(["64e2a", "dense"]))
        self.assertIsNone(moe_axes([]))


class ProxyRule(unittest.TestCase):
    """proxy_rules.py: the proxy run a rule reads (families as tests/test_rules.cpp checks them at the reference)."""

    def test_families(self):
        ran = ["complete-mue", "mup"]  # what dense-proxy-lm and dense-proxy-flow run
        self.assertEqual(proxy_rule("mup", ran), "mup")
        for rule in ("sp", "completep", "jiang-dmft", "mup-moe"):
            self.assertEqual(proxy_rule(rule, ran), "mup")
        for rule in ("mup-total-width", "mup-no-route-scale"):
            self.assertEqual(proxy_rule(rule, ran), "complete-mue")
        self.assertEqual(proxy_rule("sp", ["sp", "mup"]), "sp")  # its own run first
        self.assertIsNone(proxy_rule("mup-moe", ["complete-mue"]))  # no one of its family ran
        self.assertIsNone(proxy_rule("(spec)", ran))


class WdTable(unittest.TestCase):
    """wd_table.py: the fitted WD optimum per (rule, shape, LR) curve of an LR x WD sweep, and its spread."""

    WDS = [2.0 ** k for k in (-7, -5, -3, -1, 1)]  # wd-lm's grid: factors of 4

    def points(self):
        # A parabola in log2 WD per curve: vertex c, floor base. Shape "b" moves the vertex by 0.5 octave at LR 2^-8;
        # the LR with the lower floor is 2^-7 for "a" and 2^-8 for "b". Rule "r2" has one curve that never completed.
        curves = {("r1", "a", 2 ** -8): (-2.0, 3.1), ("r1", "a", 2 ** -7): (-2.25, 3.0),
                  ("r1", "b", 2 ** -8): (-2.5, 2.8), ("r1", "b", 2 ** -7): (-2.25, 2.9),
                  ("r2", "a", 2 ** -8): (-6.8, 3.0), ("r2", "a", 2 ** -7): (None, None)}
        return [(g, s, lr, wd, math.nan if c is None else 0.01 * (math.log2(wd) - c) ** 2 + base)
                for (g, s, lr), (c, base) in curves.items() for wd in self.WDS]

    def test_optima(self):
        o = wd_optima(self.points())
        self.assertEqual(list(o)[:2], [("r1", "a", 2 ** -8), ("r1", "a", 2 ** -7)])  # sweep order kept
        self.assertAlmostEqual(o[("r1", "a", 2 ** -8)].log2_x, -2.0, places=9)
        self.assertAlmostEqual(o[("r1", "b", 2 ** -8)].log2_x, -2.5, places=9)
        self.assertEqual(o[("r2", "a", 2 ** -8)].edge, "low")
        self.assertIsNone(o[("r2", "a", 2 ** -7)])
        self.assertEqual(best_curves(o), {("r1", "a"): ("r1", "a", 2 ** -7), ("r1", "b"): ("r1", "b", 2 ** -8),
                                          ("r2", "a"): ("r2", "a", 2 ** -8)})

    def test_summary_and_table(self):
        o = wd_optima(self.points())
        r1, r2 = wd_summary(o)
        self.assertIn("at LR 2^-8 spans 0.50 octaves (-2.00 at a, -2.50 at b)", r1)
        self.assertIn("at LR 2^-7 spans 0.00 octaves", r1)
        self.assertIn("at each shape's best LR spans 0.25 octaves (-2.25 at a, -2.50 at b)", r1)
        self.assertNotIn("edge", r1)
        self.assertIn("at the WD grid's edge: a at LR 2^-8 (low)", r2)
        rows = wd_table(o, 2000, "loss")[2:]
        self.assertEqual(len(rows), 6)
        self.assertTrue(rows[1].startswith("| r1 | a | **2^-7** | 2^-3 | -2.25 | 3.0000 |"))
        self.assertIn("| 2^-8 |", rows[0])
        # tau = 1 / (LR * WD) at the fitted WD: 2^8 * 2^2.5 steps.
        self.assertIn(f"| {2 ** 10.5:.0f} ({2 ** 10.5 / 2000:.2f} of the run) |", rows[2])
        self.assertIn("no completed point", rows[5])


if __name__ == "__main__":
    unittest.main()
