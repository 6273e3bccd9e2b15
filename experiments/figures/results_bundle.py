#!/usr/bin/env python3
"""A sweep's compact results file: one JSON file that travels in the repository instead of the raw run files.

usage: results_bundle.py INDEX.h5 [--out NAME.json] [--max-rows 60] [--merge OLD.json]
       results_bundle.py --missing NAME.json     (the indices of its points not yet completed or diverged,
                                                   comma-separated, for `mue sweep SPEC --only`)

For every point of the sweep index (mue sweep -> out_dir/NAME-index.h5) it keeps the point's axis values,
status, resolved config, device, commit and times, the final numbers of the /summary table, the validation
curve (every row) and the training curve (at most --max-rows rows, evenly spaced, the last row always kept), and
the point's wall time, median tokens/s and, where the run file has it, its /timing (seconds per phase). The figure and table scripts read such a file exactly as they read
the index (sweep_index.Summary). A point whose run file is missing keeps its summary row and no curves.
With --merge, a point that the index has not finished (missing, failed, running) is taken from OLD.json where
it finished there: a sweep continued in a later session with `--only` (its earlier run files gone) ends in one
results file. OLD.json must come from the same spec.
"""
import argparse
import json
import math
import os

import h5py
import numpy as np

from sweep_index import Summary

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


DONE = ("completed", "diverged")


def merge(new, old):
    """Points of `new` not finished there, taken from `old` where they are finished."""
    # What decides the points' results; a reworded comment, a new time estimate or --parallel do not.
    def decisive(spec):
        return {k: v for k, v in (spec or {}).items() if k not in ("comment", "expected_h100_minutes", "parallel")}

    if decisive(old.get("spec")) != decisive(new.get("spec")):
        raise SystemExit(f"--merge: the old results file comes from another spec than {new['name']}'s index")
    by_name = {p["name"]: p for p in old["points"]}
    taken = 0
    for i, p in enumerate(new["points"]):
        o = by_name.get(p["name"])
        if p["status"] not in DONE and o is not None and o["status"] in DONE:
            new["points"][i] = o
            taken += 1
    return taken


def missing(path):
    try:
        with open(path) as f:
            b = json.load(f)
        return [p["index"] for p in b["points"] if p["status"] not in DONE]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"{path}: not a readable results file ({e.__class__.__name__}: {e})")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("index", nargs="?", help="sweep index file, out_dir/NAME-index.h5")
    ap.add_argument("--out", default=None, help="output file (default: NAME.json next to the index)")
    ap.add_argument("--max-rows", type=int, default=60, help="training-curve rows kept per point (0: all)")
    ap.add_argument("--merge", default=None, help="earlier results file of the same spec")
    ap.add_argument("--missing", default=None, metavar="RESULTS", help="print the unfinished point indices")
    a = ap.parse_args()
    if a.missing:
        print(",".join(str(i) for i in missing(a.missing)))
        return
    if not a.index:
        ap.error("give a sweep index (or --missing RESULTS)")
    b = bundle(a.index, a.max_rows)
    taken = 0
    if a.merge:
        with open(a.merge) as f:
            taken = merge(b, json.load(f))
    out = a.out or os.path.join(os.path.dirname(a.index), b["name"] + ".json")
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(b, f, separators=(",", ":"))
        f.write("\n")
    os.replace(tmp, out)
    done = sum(p["status"] == "completed" for p in b["points"])
    merged = f", {taken} of them from {a.merge}" if a.merge else ""
    print(f"wrote {out}: {len(b['points'])} points ({done} completed{merged}), {os.path.getsize(out) // 1024} KB")


if __name__ == "__main__":
    main()
