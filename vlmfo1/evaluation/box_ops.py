"""Axis-aligned box helpers shared by the metrics (the package's one IoU implementation).

Boxes are ``[x1, y1, x2, y2]`` in pixels (continuous coordinates, no "+1" pixel convention),
except where a name says ``xywh`` (COCO's ``[x, y, width, height]``).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

BoxLike = Sequence[float]


def xywh_to_xyxy(box: BoxLike) -> list[float]:
    x, y, w, h = (float(v) for v in box)
    return [x, y, x + w, y + h]


def xyxy_to_xywh(box: BoxLike) -> list[float]:
    x1, y1, x2, y2 = (float(v) for v in box)
    return [x1, y1, x2 - x1, y2 - y1]


def as_box_array(boxes: Sequence[BoxLike] | np.ndarray, name: str = "boxes") -> np.ndarray:
    """(N, 4) float64 array; raises on anything that is not a list of 4-number boxes."""
    array = np.asarray(boxes, dtype=np.float64)
    if array.size == 0:
        return np.zeros((0, 4), dtype=np.float64)
    if array.ndim != 2 or array.shape[1] != 4:
        raise ValueError(f"{name} must be a list of [x1, y1, x2, y2] boxes, got shape {array.shape}")
    return array


def box_iou(box_a: BoxLike, box_b: BoxLike) -> float:
    """IoU of two xyxy boxes; 0 when they do not overlap or the union is empty."""
    return float(pairwise_iou([box_a], [box_b])[0, 0])


def pairwise_iou(boxes_a: Sequence[BoxLike] | np.ndarray, boxes_b: Sequence[BoxLike] | np.ndarray) -> np.ndarray:
    """(len(a), len(b)) IoU matrix of xyxy boxes. Inverted boxes count as empty (area 0)."""
    a = as_box_array(boxes_a, "boxes_a")
    b = as_box_array(boxes_b, "boxes_b")
    width_a = np.clip(a[:, 2] - a[:, 0], 0, None)
    height_a = np.clip(a[:, 3] - a[:, 1], 0, None)
    width_b = np.clip(b[:, 2] - b[:, 0], 0, None)
    height_b = np.clip(b[:, 3] - b[:, 1], 0, None)
    area_a = width_a * height_a
    area_b = width_b * height_b
    inter_w = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    inter_h = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    intersection = inter_w * inter_h
    union = area_a[:, None] + area_b[None, :] - intersection
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, intersection / np.where(union > 0, union, 1.0), 0.0)
    return iou
