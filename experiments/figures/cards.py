"""The kinds of GPU a results file's points ran on (results_bundle.py records each point's device). The same run on
two kinds of card (an H100, an H200) ends with different bits (experiments/results/REPRODUCTION.md), so the tables
say where a results file mixes them. Plain Python (no numpy): the tests run without it.

card_mix(sw, lr_key) takes anything with `points` (a results file's list, or None for a sweep index) and `axes`
(sweep_index.Summary).
"""


def card_mix(sw, lr_key):
    """(completed points per kind of card, curves that mix kinds, curves) of a results file's points; ({}, 0, 0)
    for a sweep index, whose rows do not name the card."""
    if not sw.points:
        return {}, 0, 0
    per_card, curves = {}, {}
    keys = [k for k in sw.axes if k != lr_key]
    for p in sw.points:
        if p.get("status") != "completed" or not p.get("device"):
            continue
        per_card[p["device"]] = per_card.get(p["device"], 0) + 1
        curves.setdefault(tuple(str(p["coords"].get(k)) for k in keys), set()).add(p["device"])
    return per_card, sum(len(c) > 1 for c in curves.values()), len(curves)


def cards_line(per_card, mixed, n):
    """One line where the points ran on more than one kind of card, else ''."""
    if len(per_card) < 2:
        return ""
    cards = ", ".join(f"{c} {k}" for c, k in sorted(per_card.items()))
    return (f"Points by card: {cards}; {mixed} of {n} curves mix cards (runs on different kinds of card differ "
            f"in their last bits: REPRODUCTION.md).")


def devices(path):
    """The kinds of card a results file's completed points ran on, in order of first appearance."""
    import json
    with open(path) as f:
        b = json.load(f)
    seen = []
    for p in b.get("points", []) if isinstance(b, dict) else []:
        if p.get("status") == "completed" and p.get("device") and p["device"] not in seen:
            seen.append(p["device"])
    return seen


if __name__ == "__main__":
    # cards.py --devices RESULTS.json: one line per kind of card (scripts/campaign.sh compares them with its own)
    import sys
    if len(sys.argv) != 3 or sys.argv[1] != "--devices":
        raise SystemExit("usage: cards.py --devices RESULTS.json")
    try:
        print("\n".join(devices(sys.argv[2])))
    except (OSError, ValueError) as e:
        raise SystemExit(f"{sys.argv[2]}: not a readable results file ({e})")
