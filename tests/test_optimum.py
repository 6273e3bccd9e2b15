#!/usr/bin/env python3
"""experiments/figures/optimum.py: the fitted optimum every figure and table uses (run by ctest)."""
import contextlib
import importlib.util
import io
import json
import math
import os
import subprocess
import sys
import tempfile
import types
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "experiments", "figures"))
from optimum import fit_optimum, interpolate_log2, parabola_vertex  # noqa: E402
from proxy_rules import proxy_rule  # noqa: E402
from shapes import moe_axes, parse_moe_shape  # noqa: E402
from wd_table import best_curves, wd_optima, wd_summary, wd_table  # noqa: E402
import regrid  # noqa: E402
from verdict import transfer_verdict  # noqa: E402

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


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


class CardMix(unittest.TestCase):
    """cards.py: the kinds of card a results file's points ran on, the table rows (configurations) that mix them,
    and the list scripts/campaign.sh compares with its own card."""
    def results(self, devices):
        pts = []
        for i, (shape, seed, lr) in enumerate((a, s, lr) for a in ("8e2a", "8e8a") for s in (1, 2)
                                              for lr in (2 ** -9, 2 ** -8, 2 ** -7)):
            pts.append({"index": i, "name": f"p{i}", "status": "diverged" if i == 11 else "completed",
                        "coords": {"ffn.shape": shape, "seed": seed, "hp.lr": lr}, "device": devices[i]})
        return types.SimpleNamespace(axes=["ffn.shape", "seed", "hp.lr"], points=pts)  # as sweep_index.Summary

    def test_cards(self):
        from cards import card_mix, cards_line, devices
        one = self.results(["H100"] * 12)
        self.assertEqual(card_mix(one, "hp.lr"), ({"H100": 11}, 0, 2))
        self.assertEqual(cards_line(*card_mix(one, "hp.lr")), "")
        # 8e2a: seed 2 on another card (seeds are averaged in a row: the row mixes); 8e8a: the H200 point is the
        # diverged last one, which does not count
        two = self.results(["H100"] * 3 + ["H200"] * 3 + ["H100"] * 5 + ["H200"])
        self.assertEqual(card_mix(two, "hp.lr"), ({"H100": 8, "H200": 3}, 1, 2))
        self.assertTrue(cards_line(*card_mix(two, "hp.lr")).startswith(
            "Points by card: H100 8, H200 3; 1 of 2 configurations mix cards"))
        self.assertEqual(card_mix(types.SimpleNamespace(axes=["hp.lr"], points=None), "hp.lr"), ({}, 0, 0))
        with tempfile.TemporaryDirectory() as d:  # the list campaign.sh reads: first appearance first
            path = os.path.join(d, "r.json")
            with open(path, "w") as f:
                json.dump({"format": "mue-sweep-results/1", "points": two.points}, f)
            self.assertEqual(devices(path), ["H100", "H200"])
            for bad in ({"format": "mue-sweep-results/1", "points": {"not": "a list"}}, two.points,
                        {"model": {"d_model": 64}}):
                with open(path, "w") as f:
                    json.dump(bad, f)
                with self.assertRaises(ValueError):
                    devices(path)


class Outputs(unittest.TestCase):
    """outputs.py: a script writes only files of its own kind, never over another sweep's results, and bad input
    ends in one line and exit status 2."""
    def test_paths(self):
        from outputs import output_path, results_output
        with tempfile.TemporaryDirectory() as d:
            md, res = os.path.join(d, "t.md"), os.path.join(d, "s.json")
            self.assertEqual(output_path(md, ".md"), md)
            for path, suffix, words in ((res, ".md", "must be a Markdown table"), (d + "/x.md/", ".md", "must be"),
                                        (os.path.join(d, "no", "t.md"), ".md", "no folder"),
                                        (os.path.join(d, "t.png"), ".md", "ending in .md")):
                with self.assertRaises(SystemExit) as e:
                    output_path(path, suffix)
                self.assertIn(words, str(e.exception))
            os.mkdir(os.path.join(d, "f.png"))
            with self.assertRaises(SystemExit) as e:
                output_path(os.path.join(d, "f.png"), ".png")
            self.assertIn("is a folder", str(e.exception))
            self.assertEqual(results_output(res, "s"), res)  # nothing there yet
            with open(res, "w") as f:
                json.dump({"format": "mue-sweep-results/1", "name": "s", "points": []}, f)
            self.assertEqual(results_output(res, "s"), res)  # the same sweep's: written again
            for name, text in (("other", None), ("s", "{not json"), ("s", '{"name": "s"}')):
                if text is not None:
                    with open(res, "w") as f:
                        f.write(text)
                with self.assertRaises(SystemExit) as e:
                    results_output(res, name)
                self.assertIn(f"is not sweep {name}'s results file; not overwritten", str(e.exception))

    def test_run(self):
        from outputs import run
        def bad():
            raise KeyError("name")
        with contextlib.redirect_stderr(io.StringIO()) as err:
            self.assertEqual(run(bad), 2)
        self.assertEqual(err.getvalue().count("\n"), 1)
        self.assertIn("error: KeyError: 'name'", err.getvalue())
        self.assertEqual(run(lambda: 0), 0)
        from outputs import ArgumentParser
        ap = ArgumentParser(prog="t.py")
        ap.add_argument("sweep")
        with contextlib.redirect_stderr(io.StringIO()) as err, self.assertRaises(SystemExit) as e:
            ap.parse_args([])
        self.assertEqual(e.exception.code, 2)
        self.assertEqual(err.getvalue(), "t.py: error: the following arguments are required: sweep "
                                         "(--help shows the usage)\n")


@unittest.skipUnless(importlib.util.find_spec("h5py") and importlib.util.find_spec("numpy"),
                     "sweep_index.py needs numpy and h5py (scripts/setup.sh --python)")
class EmptySweep(unittest.TestCase):
    """A results file that lists no points is refused with one line (a sweep's results list every grid point),
    not read as an empty table."""
    def test_no_points(self):
        from sweep_index import Summary
        with tempfile.TemporaryDirectory() as d:
            res = os.path.join(d, "s.json")
            with open(res, "w") as f:
                json.dump({"format": "mue-sweep-results/1", "name": "s", "axes": ["hp.lr"], "spec": {},
                           "points": []}, f)
            with self.assertRaises(SystemExit) as e:
                Summary(res)
            self.assertEqual(str(e.exception), f"{res}: lists no points (a sweep's index or results file lists "
                                               "every point of its grid)")


class Verdict(unittest.TestCase):
    """REPRODUCTION.md's rule, mechanically (verdict.py)."""
    def test_words(self):
        c = lambda label, m, lo=None, hi=None, edge="": (label, m, m if lo is None else lo, m if hi is None else hi, edge)
        self.assertEqual(transfer_verdict([c("a", 0.2), c("b", -0.5)])[0], "transfers")  # the band is closed
        word, why = transfer_verdict([c("a", 0.2), c("b", -0.62, -0.81, -0.44)])
        self.assertEqual((word, why), ("inconclusive", "outside +-1/2: b -0.62"))
        self.assertEqual(transfer_verdict([c("a", 0.1), c("b", 0.3, edge="low")]),
                         ("inconclusive", "b at the low edge"))
        self.assertEqual(transfer_verdict([c("a", 0.1)], whole=False)[0], "inconclusive")
        # Drift: a span beyond one octave plus the largest seed spread, an edge or not; not before the grid is whole.
        self.assertEqual(transfer_verdict([c("a", 0.62), c("b", -2.71, edge="low")])[0], "drifts")
        self.assertEqual(transfer_verdict([c("a", 0.62), c("b", -2.71)], whole=False)[0], "inconclusive")
        self.assertEqual(transfer_verdict([c("a", 0.7, 0.0, 1.4), c("b", -0.9)])[0], "inconclusive")  # 1.6 < 1 + 1.4
        self.assertEqual(transfer_verdict([])[0], "inconclusive")


class Regrid(unittest.TestCase):
    """A grown grid keeps the points an earlier results file holds (regrid.py, results_bundle.py)."""
    OLD_SPEC = {"name": "s", "comment": "one seed", "overrides": ["model.d_model=128"], "out_dir": "runs/s",
                "axes": {"rule": ["complete-mue", "mup"], "hp.lr": [2 ** -9, 2 ** -8]}, "parallel": 4}

    def old_results(self):
        # The index stores numbers as floats; a point's config says its seed (train.seed = train.data_seed = 1).
        pts = []
        for i, c in regrid.grid(self.OLD_SPEC):
            status = "running" if i == 3 else ("diverged" if i == 1 else "completed")
            pts.append({"index": i, "name": f"s-{i:04d}", "status": status, "final_val_loss": 3.0 + i,
                        "coords": {"rule": c["rule"], "hp.lr": float(c["hp.lr"])},
                        "config": {"rule": c["rule"], "hp": {"lr": c["hp.lr"]}, "train": {"seed": 1, "data_seed": 1}}})
        return {"name": "s", "axes": ["rule", "hp.lr"], "spec": self.OLD_SPEC, "points": pts}

    def grown(self, **axes):
        spec = json.loads(json.dumps(self.OLD_SPEC))
        spec.update(comment="two seeds", parallel=8, expected_h100_minutes=3)
        spec["axes"] = axes
        return spec

    def test_grid_order(self):
        g = regrid.grid({"axes": {"a": [1, 2], "b": ["x", "y", "z"]}})
        self.assertEqual([i for i, _ in g], list(range(6)))
        self.assertEqual(g[1][1], {"a": 1, "b": "y"})  # first axis slowest
        self.assertEqual(g[3][1], {"a": 2, "b": "x"})

    def test_same_spec(self):
        old = self.old_results()
        self.assertEqual(regrid.missing(self.OLD_SPEC, old), [3])  # diverged is finished, running is not
        self.assertEqual(regrid.missing(self.grown(**self.OLD_SPEC["axes"]), old), [3])  # comment etc. don't count

    def test_seed_axis_added(self):
        spec = self.grown(seed=[1, 2], rule=["complete-mue", "mup"], **{"hp.lr": [2 ** -9, 2 ** -8]})
        have = regrid.match(spec, self.old_results())
        self.assertEqual(sorted(have), [0, 1, 2])  # seed 1's points but the unfinished one
        self.assertEqual([have[i]["name"] for i in (0, 1, 2)], ["s-0000", "s-0001", "s-0002"])
        self.assertEqual(regrid.missing(spec, self.old_results()), [3, 4, 5, 6, 7])
        # Seed 2 first: the old points land on the second half of the grid.
        spec = self.grown(seed=[2, 1], rule=["complete-mue", "mup"], **{"hp.lr": [2 ** -9, 2 ** -8]})
        self.assertEqual(sorted(regrid.match(spec, self.old_results())), [4, 5, 6])

    def test_seed_only_where_data_seed_agrees(self):
        old = self.old_results()
        old["points"][0]["config"]["train"]["data_seed"] = 7  # not a run the seed axis would make
        spec = self.grown(seed=[1, 2], rule=["complete-mue", "mup"], **{"hp.lr": [2 ** -9, 2 ** -8]})
        self.assertEqual(sorted(regrid.match(spec, old)), [1, 2])

    def test_more_values_and_new_axis_from_config(self):
        # A new LR, and the rule order swapped: matched by value, not by index.
        spec = self.grown(rule=["mup", "complete-mue"], **{"hp.lr": [2 ** -10, 2 ** -9, 2 ** -8]})
        have = regrid.match(spec, self.old_results())
        self.assertEqual({i: p["name"] for i, p in have.items()}, {1: "s-0002", 4: "s-0000", 5: "s-0001"})
        # A new axis over a key the old grid did not sweep: the old points' value comes from their config.
        spec = self.grown(rule=["complete-mue"], **{"hp.lr": [2 ** -9]})
        spec["axes"]["train.seed"] = [1, 3]
        self.assertEqual(sorted(regrid.match(spec, self.old_results())), [0])

    def test_mixed_axis_is_text(self):
        # An axis of numbers and strings is text in the index ("4", "fit"); its number 4 still matches.
        spec = {"name": "m", "axes": {"gate": [4, "fit"]}}
        old = {"spec": spec, "points": [{"status": "completed", "name": "m-0", "coords": {"gate": "4"}},
                                        {"status": "completed", "name": "m-1", "coords": {"gate": "fit"}}]}
        self.assertEqual(regrid.missing(spec, old), [])
        grown = {"name": "m", "axes": {"gate": [4, 8, "fit"]}}
        self.assertEqual(regrid.missing(grown, old), [1])

    def test_refusals(self):
        spec = self.grown(rule=["complete-mue", "mup"], **{"hp.lr": [2 ** -9]})
        spec["overrides"] = ["model.d_model=256"]
        with self.assertRaises(SystemExit) as e:
            regrid.match(spec, self.old_results())
        self.assertIn("differ beyond their axes", str(e.exception))
        with self.assertRaises(SystemExit) as e:  # a swept key fixed now: its points are not this grid's
            regrid.match(self.grown(**{"hp.lr": [2 ** -9]}), self.old_results())
        self.assertIn("swept rule, which the spec no longer does", str(e.exception))

    def test_merge_into_grown_grid(self):
        import results_bundle
        spec = self.grown(seed=[1, 2], rule=["complete-mue", "mup"], **{"hp.lr": [2 ** -9, 2 ** -8]})
        new = {"name": "s", "spec": spec, "points": []}
        for i, c in regrid.grid(spec):  # this call ran seed 2's first point and seed 1's unfinished one
            name = f"s-{i:04d}-seed-{c['seed']}"
            status = "completed" if i in (3, 4) else "missing"
            new["points"].append({"index": i, "name": name, "status": status, "coords": c, "final_val_loss": 9.0})
        self.assertEqual(results_bundle.merge(new, self.old_results()), 3)
        pts = new["points"]
        self.assertEqual([p["status"] for p in pts], ["completed", "diverged", "completed", "completed",
                                                      "completed", "missing", "missing", "missing"])
        self.assertEqual([p["index"] for p in pts], list(range(8)))
        self.assertEqual(pts[1]["name"], "s-0001-seed-1")
        self.assertEqual(pts[1]["run_name"], "s-0001")
        self.assertEqual(pts[1]["coords"]["seed"], 1)
        self.assertEqual(pts[1]["final_val_loss"], 4.0)
        self.assertEqual(pts[3]["final_val_loss"], 9.0)  # this call's own run is kept
        with tempfile.TemporaryDirectory() as d:
            res, sp = os.path.join(d, "s.json"), os.path.join(d, "spec.json")
            with open(res, "w") as f:
                json.dump(self.old_results(), f)
            with open(sp, "w") as f:
                json.dump(spec, f)
            self.assertEqual(results_bundle.missing(res, sp), [3, 4, 5, 6, 7])
            self.assertEqual(results_bundle.missing(res), [3])
            with self.assertRaises(SystemExit) as e:  # a spec that cannot be read: one line naming it
                results_bundle.missing(res, os.path.join(d, "no-such-spec.json"))
            self.assertIn("no-such-spec.json: not a readable sweep spec", str(e.exception))

    def test_campaign_status(self):
        import campaign_status
        with tempfile.TemporaryDirectory() as d:
            specs, results = os.path.join(d, "specs"), os.path.join(d, "results")
            os.makedirs(specs), os.makedirs(results)
            grown = self.grown(seed=[1, 2], rule=["complete-mue", "mup"], **{"hp.lr": [2 ** -9, 2 ** -8]})
            grown["expected_h100_minutes"] = 8
            for name, spec in (("s", grown), ("t", dict(self.OLD_SPEC, name="t"))):
                with open(os.path.join(specs, name + ".json"), "w") as f:
                    json.dump(spec, f)
            with open(os.path.join(results, "s.json"), "w") as f:
                json.dump(self.old_results(), f)
            self.assertEqual(campaign_status.status(os.path.join(specs, "s.json"), results), ("s", 8, 3, 5, 5.0, ""))
            self.assertEqual(campaign_status.status(os.path.join(specs, "t.json"), results),
                             ("t", 4, 0, 4, None, "no results file"))
            with open(os.path.join(results, "t.json"), "w") as f:  # another spec's results under t's name
                json.dump(dict(self.old_results(), spec=dict(self.OLD_SPEC, overrides=[])), f)
            self.assertIn("refused", campaign_status.status(os.path.join(specs, "t.json"), results)[5])
            with open(os.path.join(results, "t.json"), "w") as f:
                f.write("{not json")
            self.assertIn("unreadable", campaign_status.status(os.path.join(specs, "t.json"), results)[5])
            # a mistyped folder is an error, never an empty (or unstarted) campaign
            os.makedirs(os.path.join(d, "empty"))
            for args, words in ((["--specs", os.path.join(d, "nope")], "no such folder"),
                                (["--specs", os.path.join(d, "empty")], "no sweep specs"),
                                (["--specs", specs, "--results", os.path.join(d, "nope")], "no such folder")):
                r = subprocess.run([sys.executable, os.path.join(REPO, "experiments", "figures", "campaign_status.py"),
                                    *args], capture_output=True, text=True)
                self.assertNotEqual(r.returncode, 0)
                self.assertIn(words, r.stderr)

    def test_grid_is_mue_sweeps(self):
        """Every committed spec's grid in regrid.py's order is the one `mue sweep --dry-run` lists (ctest passes
        the binary as MUE_BIN)."""
        mue = os.environ.get("MUE_BIN")
        if not mue:
            self.skipTest("MUE_BIN not set (ctest sets it)")
        folder = os.path.join(REPO, "experiments", "sweeps")
        for fname in sorted(os.listdir(folder)):
            if not fname.endswith(".json"):
                continue
            with open(os.path.join(folder, fname)) as f:
                spec = json.load(f)
            out = subprocess.run([mue, "sweep", os.path.join(folder, fname), "--dry-run"], cwd=REPO,
                                 capture_output=True, text=True)
            self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
            listed = [line.split() for line in out.stdout.splitlines() if line[:4].isdigit()]
            g = regrid.grid(spec)
            self.assertEqual(len(listed), len(g), fname)
            for words, (i, coords) in zip(listed, g):
                self.assertEqual(int(words[0]), i)
                shown = dict(w.split("=", 1) for w in words[1:1 + len(coords)])
                self.assertEqual(list(shown), list(coords), fname)
                for k, v in coords.items():
                    self.assertEqual(regrid._norm(v), regrid._norm(float(shown[k]) if isinstance(v, (int, float))
                                                                  and not isinstance(v, bool) else shown[k]),
                                     f"{fname} point {i} {k}")


if __name__ == "__main__":
    unittest.main()
