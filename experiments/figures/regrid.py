"""A sweep grows (a second seed, more LRs, another shape): which points of the grown grid a results file of the
earlier grid already holds, so that only the new points run and the results end in one file.

Plain Python (no h5py), used by results_bundle.py (--missing with --spec, --merge) and tested in ctest.

The grid is the one `mue sweep` expands (experiments/sweep.h): the cartesian product of the spec's axes, first axis
slowest, in the file's order. A point of the earlier file is the grown grid's point whose every axis value it
had: read from its coords where it swept that key, else from its resolved config (an axis `seed` is
train.seed, and counts only where train.data_seed equals it, as the axis sets both). That is the same run, since
the two specs may differ in their axes only (not in base or overrides) and every point of a grid is fixed by its
axis values; a key the earlier grid swept must stay an axis of the grown one. A point whose file has no resolved
config (none in results_bundle.py's files lacks one) cannot be placed on a grown grid and runs again.
"""
import itertools
import json

DONE = ("completed", "diverged")  # a point's statuses that count as finished (a diverged point is a result)

# What decides the points' results beside the axes; a reworded comment, a new time estimate or --parallel do not.
_NOT_DECISIVE = ("comment", "expected_h100_minutes", "parallel")


def decisive(spec, with_axes=True):
    return {k: v for k, v in (spec or {}).items()
            if k not in _NOT_DECISIVE and (with_axes or k != "axes")}


def grid(spec):
    """[(index, {axis: value})] in mue sweep's order."""
    axes = spec.get("axes") or {}
    keys = list(axes)
    return [(i, dict(zip(keys, values))) for i, values in enumerate(itertools.product(*(axes[k] for k in keys)))]


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _norm(v, numeric=True):
    """An axis value as the index stores it: a float where the axis holds numbers only (numeric), else text (a
    string as it is, any other value as JSON spells it: 4, 0.5, true)."""
    if numeric and _is_number(v):
        return float(v)
    if isinstance(v, str):
        return v
    if isinstance(v, float) and v.is_integer():
        v = int(v)  # a number an index stored as 4.0 is the axis value 4
    return json.dumps(v)


def _config_value(config, key):
    if key == "seed":
        train = (config or {}).get("train") or {}
        seed = train.get("seed")
        return seed if seed is not None and train.get("data_seed") == seed else None
    node = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _point_value(point, key):
    coords = point.get("coords") or {}
    return coords[key] if key in coords else _config_value(point.get("config"), key)


def check_growth(new_spec, old_spec):
    """SystemExit with one line where the earlier results cannot be points of the grown grid."""
    if decisive(old_spec, False) != decisive(new_spec, False):
        raise SystemExit(f"the results file comes from another spec than {new_spec.get('name')}'s "
                         "(they differ beyond their axes: base, overrides or out_dir)")
    dropped = [k for k in (old_spec.get("axes") or {}) if k not in (new_spec.get("axes") or {})]
    if dropped:
        raise SystemExit(f"{new_spec.get('name')}: the results file swept {', '.join(dropped)}, which the spec "
                         "no longer does: its points are not points of this grid")


def match(new_spec, old):
    """{index in new_spec's grid: the finished point of results file `old` that is that point}."""
    same = decisive(old.get("spec"), True) == decisive(new_spec, True)
    if not same:
        check_growth(new_spec, old.get("spec") or {})
    axes = new_spec.get("axes") or {}
    keys = list(axes)
    numeric = [all(_is_number(v) for v in axes[k]) for k in keys]
    found = {}
    for p in old.get("points", []):
        if p.get("status") not in DONE:
            continue
        values = [_point_value(p, k) for k in keys]
        if any(v is None for v in values):
            continue
        found[tuple(_norm(v, n) for v, n in zip(values, numeric))] = p
    out = {}
    for i, coords in grid(new_spec):
        p = found.get(tuple(_norm(coords[k], n) for k, n in zip(keys, numeric)))
        if p is not None:
            out[i] = p
    return out


def missing(new_spec, old):
    """Indices of new_spec's grid that `old` has not finished."""
    have = match(new_spec, old)
    return [i for i, _ in grid(new_spec) if i not in have]
