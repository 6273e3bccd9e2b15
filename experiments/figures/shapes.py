"""MoE shape labels (ffn.shape "64e8a": N = 64 experts, a = 8 active) and the split of a sweep's shapes into the
paper's two axes: total experts N at a fixed a, activated experts a at a fixed N. Pure Python (tested by ctest)."""
import re
from collections import Counter

_SHAPE = re.compile(r"^(\d+)e(\d+)a$")


def parse_moe_shape(s):
    """(N, a) of a label like "64e8a", else None."""
    m = _SHAPE.match(str(s))
    return (int(m.group(1)), int(m.group(2))) if m else None


def moe_axes(shapes):
    """The shapes along each MoE axis, as a list of (title, x_label, [(shape, x value)]) in the order given:
    the total-experts axis (the shapes sharing the most common a, x = N) and the activated-experts axis (the shapes
    sharing the most common N, x = a), each kept where it has two or more shapes. None where a label is not an
    MoE shape or one of the two axes is missing (the caller then draws the shapes in their given order)."""
    parsed = [parse_moe_shape(s) for s in shapes]
    if not shapes or any(p is None for p in parsed):
        return None

    def most_common(values):
        counts = Counter(values)
        best = max(counts.values())
        return min(v for v, c in counts.items() if c == best)  # ties: the smallest

    a0 = most_common([a for _, a in parsed])
    n0 = most_common([n for n, _ in parsed])
    along_n = [(s, n) for s, (n, a) in zip(shapes, parsed) if a == a0]
    along_a = [(s, a) for s, (n, a) in zip(shapes, parsed) if n == n0]
    axes = []
    if len(along_n) >= 2:
        axes.append((f"total experts N at a = {a0}", "total experts N", sorted(along_n, key=lambda p: p[1])))
    if len(along_a) >= 2:
        axes.append((f"activated experts a at N = {n0}", "activated experts a", sorted(along_a, key=lambda p: p[1])))
    return axes if len(axes) == 2 else None
