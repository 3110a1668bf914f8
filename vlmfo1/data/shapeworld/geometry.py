"""Box arithmetic and the spatial relations that ShapeWorld's language uses.

Boxes are ``(x1, y1, x2, y2)`` in pixels with exclusive right/bottom edges. "A left of B" holds when
A's box lies wholly left of B's (touching counts). Generated questions use a relation only when it
is clearly true or clearly false (the gap is at least `margin` pixels either way), so every answer
is true of the pixels, not a judgement call.
"""
from __future__ import annotations

from typing import Sequence

Box = Sequence[float]

RELATIONS = ("left of", "right of", "above", "below")


def area(box: Box) -> float:
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


def intersection(a: Box, b: Box) -> float:
    return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))


def iou(a: Box, b: Box) -> float:
    inter = intersection(a, b)
    union = area(a) + area(b) - inter
    return inter / union if union > 0 else 0.0


def relation_gap(a: Box, b: Box, relation: str) -> float:
    """Signed gap between `a` and `b` in the relation's direction: >= 0 when `a` lies wholly
    `relation` `b` (e.g. wholly left of it), < 0 when their extents overlap on that axis."""
    if relation == "left of":
        return b[0] - a[2]
    if relation == "right of":
        return a[0] - b[2]
    if relation == "above":
        return b[1] - a[3]
    if relation == "below":
        return a[1] - b[3]
    raise ValueError(f"unknown relation {relation!r}; relations are {RELATIONS}")


def holds(a: Box, b: Box, relation: str) -> bool:
    """`a` is `relation` `b`: its box lies wholly on that side of `b`'s box (touching counts)."""
    return relation_gap(a, b, relation) >= 0


def is_clear(a: Box, b: Box, relation: str, margin: float) -> bool:
    """The relation is clearly true or clearly false: the gap is not within `margin` of zero."""
    return abs(relation_gap(a, b, relation)) >= margin
