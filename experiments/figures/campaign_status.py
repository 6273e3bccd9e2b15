#!/usr/bin/env python3
"""Where the campaign stands: for every sweep spec, how many points of its grid (as it is now, grown or not) its
committed results file holds, how many are left, and about how many H100 minutes they need.

usage: campaign_status.py [--specs experiments/sweeps] [--results experiments/results] [--md]

Plain Python (regrid.py). "Left" is the spec's grid less the finished points (completed or diverged) of
RESULTS/NAME.json, matched as scripts/campaign.sh matches them; minutes left are the spec's
expected_h100_minutes times the share left. A results file that is no longer one of the spec's grids says so.
"""
import argparse
import json
import os
import sys

import regrid
from outputs import ArgumentParser, run

HERE = os.path.dirname(os.path.abspath(__file__))


def status(spec_path, results_dir):
    """(name, points, finished, left, minutes left or None, note) for one spec."""
    with open(spec_path) as f:
        spec = json.load(f)
    name = spec.get("name", os.path.splitext(os.path.basename(spec_path))[0])
    total = len(regrid.grid(spec))
    minutes = spec.get("expected_h100_minutes")
    path = os.path.join(results_dir, name + ".json")
    note = ""
    if not os.path.exists(path):
        left, note = total, "no results file"
    else:
        try:
            with open(path) as f:
                old = json.load(f)
            left = len(regrid.missing(spec, old))
        except SystemExit as e:
            return name, total, None, None, None, f"results file refused: {e}"
        except (OSError, ValueError, AttributeError, KeyError, TypeError) as e:
            return name, total, None, None, None, f"results file unreadable ({e.__class__.__name__}: {e})"
    est = minutes * left / total if minutes is not None and total else None
    return name, total, total - left, left, est, note


def main():
    ap = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--specs", default=os.path.join(HERE, "..", "sweeps"))
    ap.add_argument("--results", default=os.path.join(HERE, "..", "results"))
    ap.add_argument("--md", action="store_true", help="a Markdown table instead of aligned text")
    a = ap.parse_args()
    for folder, what in ((a.specs, "--specs"), (a.results, "--results")):  # a typo must not read as a finished campaign
        if not os.path.isdir(folder):
            raise SystemExit(f"{what} {folder}: no such folder")
    specs = sorted(f for f in os.listdir(a.specs) if f.endswith(".json"))
    if not specs:
        raise SystemExit(f"--specs {a.specs}: no sweep specs (*.json) there")
    rows = [status(os.path.join(a.specs, f), a.results) for f in specs]
    head = ("spec", "points", "finished", "left", "H100 min left", "note")
    cells = [(n, str(t), "-" if d is None else str(d), "-" if l is None else str(l),
              "-" if e is None else f"{e:.1f}", note) for n, t, d, l, e, note in rows]
    total_min = sum(e for *_, e, _ in rows if e)
    if a.md:
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for c in cells:
            print("| " + " | ".join(c) + " |")
    else:
        widths = [max(len(r[i]) for r in [head] + cells) for i in range(len(head))]
        for r in [head] + cells:
            print("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())
    refused = [r[0] for r in rows if r[3] is None]
    print(f"\n{sum(r[3] or 0 for r in rows)} points left, about {total_min:.0f} H100 minutes"
          + (f"; not counted: {', '.join(refused)} (results file refused or unreadable)" if refused else ""))
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
