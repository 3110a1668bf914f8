"""Box arithmetic and the spatial relations that ShapeWorld's language uses.

Boxes are ``(x1, y1, x2, y2)`` in pixels with exclusive right/bottom edges. A relation holds only
with a clear gap or lead (`margin` pixels), and generated questions avoid near-ties altogether, so
every answer is true of the pixels, not a judgement call.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

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


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in `a` (N, 4) with every box in `b` (M, 4)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    width = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    height = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = width * height
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def center(box: Box) -> tuple[float, float]:
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


def relation_gap(a: Box, b: Box, relation: str) -> float:
    """Signed gap between `a` and `b` in the relation's direction: > 0 when `a` lies entirely
    `relation` `b` (e.g. wholly left of it), <= 0 when the boxes' extents overlap or cross."""
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
