"""The kinds of GPU a results file's points ran on (results_bundle.py records each point's device). The same run on
two kinds of card (an H100, an H200) ends with different bits (experiments/results/REPRODUCTION.md), so the tables
say where a results file mixes them. Plain Python (no numpy): the tests run without it.

card_mix(sw, lr_key) takes anything with `points` (a results file's list, or None for a sweep index) and `axes`
(sweep_index.Summary).
"""
import json

from outputs import is_results


def completed_devices(points):
    """(point, device) for each completed point that names its device."""
    for p in points or []:
        if isinstance(p, dict) and p.get("status") == "completed" and p.get("device"):
            yield p, p["device"]


def card_mix(sw, lr_key):
    """(completed points per kind of card, configurations that mix kinds, configurations) of a results file's
    points, a configuration being a table row: every axis but the LR and the seed, which the tables average over;
    ({}, 0, 0) for a sweep index, whose rows do not name the card."""
    per_card, confs = {}, {}
    keys = [k for k in sw.axes if k not in (lr_key, "seed")]
    for p, device in completed_devices(sw.points):
        per_card[device] = per_card.get(device, 0) + 1
        confs.setdefault(tuple(str(p.get("coords", {}).get(k)) for k in keys), set()).add(device)
    return per_card, sum(len(c) > 1 for c in confs.values()), len(confs)


def cards_line(per_card, mixed, n):
    """One line where the points ran on more than one kind of card, else ''."""
    if len(per_card) < 2:
        return ""
    cards = ", ".join(f"{c} {k}" for c, k in sorted(per_card.items()))
    return (f"Points by card: {cards}; {mixed} of {n} configurations mix cards (runs on different kinds of card "
            f"differ in their last bits: REPRODUCTION.md).")


def devices(path):
    """The kinds of card a results file's completed points ran on, in order of first appearance."""
    with open(path) as f:
        b = json.load(f)
    if not is_results(b) or not isinstance(b.get("points"), list):
        raise ValueError("no results_bundle.py format field, or no list of points")
    return list(dict.fromkeys(d for _, d in completed_devices(b["points"])))


if __name__ == "__main__":
    # cards.py --devices RESULTS.json: one line per kind of card (scripts/campaign.sh compares them with its own)
    import sys
    if len(sys.argv) != 3 or sys.argv[1] != "--devices":
        raise SystemExit("usage: cards.py --devices RESULTS.json")
    try:
        print("\n".join(devices(sys.argv[2])))
    except (OSError, ValueError) as e:
        raise SystemExit(f"{sys.argv[2]}: not a readable sweep results file ({e})")
