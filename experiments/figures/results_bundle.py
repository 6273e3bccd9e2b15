#!/usr/bin/env python3
"""A sweep's compact results file: one JSON file that travels in the repository instead of the raw run files.

usage: results_bundle.py INDEX.h5 [--out NAME.json] [--max-rows 60] [--merge OLD.json]
       results_bundle.py --missing NAME.json [--spec SPEC.json]
                                      (the indices of its points not yet completed or diverged, comma-separated,
                                       for `mue sweep SPEC --only`; with --spec, of SPEC's grid, which may have
                                       grown since NAME.json was made: regrid.py)

For every point of the sweep index (mue sweep -> out_dir/NAME-index.h5) it keeps the point's axis values,
status, resolved config, device, commit and times, the final numbers of the /summary table, the validation
curve (every row) and the training curve (at most --max-rows rows, evenly spaced, the last row always kept), and
the point's wall time, median tokens/s and, where the run file has it, its /timing (seconds per phase). The figure and table scripts read such a file exactly as they read
the index (sweep_index.Summary). A point whose run file is missing keeps its summary row and no curves.
With --merge, a point that the index has not finished (missing, failed, running) is taken from OLD.json where
it finished there: a sweep continued in a later session with `--only` (its earlier run files gone) ends in one
results file. OLD.json must come from the same spec, or from one whose grid has grown since (a second seed, more
LRs; the same base and overrides): its points then land on the grown grid's (regrid.py).
"""
import argparse
import json
import math
import os
import sys

import regrid
from outputs import ArgumentParser, results_output, run

# h5py and numpy are imported where an index or run file is read, so that --missing and --merge's matching need
# only Python (scripts/campaign.sh asks --missing on any machine).

FORMAT = "mue-sweep-results/1"


def _attr(obj, key):
    if key not in obj.attrs:
        return None
    v = obj.attrs[key]
    return v.decode() if isinstance(v, bytes) else (str(v) if not isinstance(v, (int, float)) else v)


def _finite(x):
    """JSON has no NaN: missing numbers are null."""
    x = float(x)
    return x if math.isfinite(x) else None


def _curve(group, keys, max_rows):
    import numpy as np
    if group is None or "step" not in group:
        return None
    n = len(group["step"])
    rows = np.arange(n)
    if max_rows and n > max_rows:
        rows = np.unique(np.append(np.linspace(0, n - 1, max_rows).round().astype(int), n - 1))
    out = {}
    for k in keys:
        if k in group and len(group[k]) == n:
            out[k] = [_finite(v) for v in np.asarray(group[k][:], dtype=float)[rows]]
    return out


def point_record(run_path, max_rows):
    """What the bundle keeps of one run file (None if the file cannot be read)."""
    import h5py
    import numpy as np
    try:
        f = h5py.File(run_path, "r", locking=False)
    except TypeError:  # h5py < 3.5 has no locking argument
        f = h5py.File(run_path, "r")
    except OSError:
        return None
    with f:
        rec = {k: _attr(f, k) for k in ("rule", "status", "git_commit", "device", "started", "finished")}
        cfg = _attr(f, "config")
        rec["config"] = json.loads(cfg) if cfg else None
        train = f.get("train")
        rec["train"] = _curve(train, ["step", "tokens", "loss", "lr", "grad_norm"], max_rows)
        rec["val"] = _curve(f.get("val"), ["step", "loss"], 0)
        if train is not None and "wall_s" in train and len(train["wall_s"]):
            rec["train_wall_s"] = _finite(train["wall_s"][-1])
            tps = np.asarray(train["tok_per_s"][:], dtype=float) if "tok_per_s" in train else np.array([])
            tps = tps[np.isfinite(tps)]
            rec["median_tok_per_s"] = _finite(np.median(tps)) if len(tps) else None
        timing = f.get("timing")  # where the run's wall time went (seconds per phase, counts): mue >= /timing
        if timing is not None:
            rec["timing"] = {k: _finite(v) for k, v in sorted(timing.attrs.items())}
    return rec


def bundle(index_path, max_rows=60):
    from sweep_index import Summary
    sw = Summary(index_path)
    folder = os.path.dirname(os.path.abspath(index_path))
    points = []
    for i in range(len(sw)):
        p = {"index": int(sw.column("index")[i]), "name": sw.column("name")[i],
             "coords": {k: sw.column(k)[i] for k in sw.axes}}
        for k in ("status", "final_train_loss", "final_val_loss", "best_val_loss", "steps"):
            v = sw.column(k)[i]
            p[k] = v if isinstance(v, str) else _finite(v)
        rec = point_record(os.path.join(folder, p["name"] + ".h5"), max_rows)
        if rec:
            rec.pop("status", None)  # the summary's status is the one the index reports
            p.update(rec)
        points.append(p)
    return {"format": FORMAT, "name": sw.name, "axes": sw.axes, "spec": sw.spec, "points": points}




def merge(new, old):
    """Points of `new` not finished there, taken from `old` where they are finished: the same point of the same
    spec, or of a grid that grew since (regrid.py). A point taken from a smaller grid gets the grown grid's index,
    name and coords, and keeps the name of the run that made it as `run_name`."""
    try:
        have = regrid.match(new.get("spec") or {}, old)
    except SystemExit as e:
        raise SystemExit(f"--merge: {e}")
    taken = 0
    for i, p in enumerate(new["points"]):
        o = have.get(p["index"])
        if p["status"] not in regrid.DONE and o is not None:
            o = dict(o)
            if o["name"] != p["name"]:
                o["run_name"] = o.get("run_name", o["name"])
            o.update(index=p["index"], name=p["name"], coords=p["coords"])
            new["points"][i] = o
            taken += 1
    return taken


def missing(path, spec_path=None):
    """The unfinished points of results file `path`; with spec_path, those of that spec's grid (which may have
    grown since the results were made)."""
    try:
        with open(path) as f:
            b = json.load(f)
        if spec_path is None:
            return [p["index"] for p in b["points"] if p["status"] not in regrid.DONE]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"{path}: not a readable results file ({e.__class__.__name__}: {e})")
    try:
        with open(spec_path) as f:
            spec = json.load(f)
    except (OSError, ValueError) as e:
        raise SystemExit(f"{spec_path}: not a readable sweep spec ({e.__class__.__name__}: {e})")
    try:
        return regrid.missing(spec, b)
    except SystemExit as e:
        raise SystemExit(f"{path}: {e}")
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise SystemExit(f"{path} or {spec_path}: not a results file and a sweep spec ({e.__class__.__name__}: {e})")


def main():
    ap = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("index", nargs="?", help="sweep index file, out_dir/NAME-index.h5")
    ap.add_argument("--out", default=None, help="output file (default: NAME.json next to the index)")
    ap.add_argument("--max-rows", type=int, default=60, help="training-curve rows kept per point (0: all)")
    ap.add_argument("--merge", default=None, help="earlier results file of the same spec")
    ap.add_argument("--missing", default=None, metavar="RESULTS", help="print the unfinished point indices")
    ap.add_argument("--spec", default=None, metavar="SPEC.json",
                    help="with --missing: the indices of this spec's grid, which may have grown since RESULTS")
    a = ap.parse_args()
    if a.missing:
        print(",".join(str(i) for i in missing(a.missing, a.spec)))
        return
    if not a.index:
        ap.error("give a sweep index (or --missing RESULTS)")
    b = bundle(a.index, a.max_rows)
    taken = 0
    if a.merge:
        with open(a.merge) as f:
            taken = merge(b, json.load(f))
    out = results_output(a.out or os.path.join(os.path.dirname(a.index), b["name"] + ".json"), b["name"])
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(b, f, separators=(",", ":"))
        f.write("\n")
    os.replace(tmp, out)
    done = sum(p["status"] == "completed" for p in b["points"])
    merged = f", {taken} of them from {a.merge}" if a.merge else ""
    print(f"wrote {out}: {len(b['points'])} points ({done} completed{merged}), {os.path.getsize(out) // 1024} KB")


if __name__ == "__main__":
    sys.exit(run(main))
