"""Referring-expression metrics.

Single target (RefCOCO/+/g): **Acc@0.5** = share of expressions whose top-1 box has IoU > 0.5 with
the ground-truth box (SPEC §5); **mIoU** = mean of that IoU. An expression with no predicted box
scores IoU 0.

Multiple targets (HumanRef, following IDEA-Research/RexSeek ``rexseek/metric/recall_precision_densityf1.py``):

* matching at threshold t is greedy and one-to-one, in ground-truth order: each GT box takes the
  unused prediction with the highest IoU, provided IoU >= t (ties go to the earlier prediction);
* recall = matches / #GT, precision = matches / #predictions (both 0 when nothing is predicted);
* DensityF1 = F1 x min(1, #GT / #predictions) (0 when nothing is predicted). The reference divides both
  counts by the number of persons in the image, which cancels;
* each number is computed per expression, at t = 0.5 and averaged over t in ``np.arange(0.5, 1.0, 0.05)``
  (the reference's exact float thresholds), then averaged over expressions;
* the rejection subset (expressions that match nobody) is left out of P/R/DF1 and scored on its own:
  an expression is correctly rejected when no box is predicted.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Sequence

import numpy as np

from vlmfo1.evaluation.box_ops import BoxLike, as_box_array, box_iou, pairwise_iou

REC_IOU_THRESHOLD = 0.5
# Exactly the reference's thresholds (floats such as 0.6000000000000001 included).
HUMANREF_IOU_THRESHOLDS = tuple(float(t) for t in np.arange(0.5, 1.0, 0.05))


def rec_scores(
    predicted_boxes: Sequence[BoxLike | None],
    gt_boxes: Sequence[BoxLike],
    iou_threshold: float = REC_IOU_THRESHOLD,
) -> dict[str, float]:
    """Acc@`iou_threshold` (IoU strictly above it) and mIoU of top-1 boxes; None = no prediction."""
    if len(predicted_boxes) != len(gt_boxes):
        raise ValueError(f"{len(predicted_boxes)} predictions for {len(gt_boxes)} expressions")
    if not gt_boxes:
        raise ValueError("no expressions to score")
    ious = np.array([0.0 if p is None else box_iou(p, g) for p, g in zip(predicted_boxes, gt_boxes)])
    return {"accuracy": float(np.mean(ious > iou_threshold)), "miou": float(ious.mean()), "num_items": len(ious)}


def greedy_match_count(gt_boxes: Sequence[BoxLike], predicted_boxes: Sequence[BoxLike], iou_threshold: float) -> int:
    """Number of GT boxes matched one-to-one, greedily in GT order (see the module docstring)."""
    if len(gt_boxes) == 0 or len(predicted_boxes) == 0:
        return 0
    iou = pairwise_iou(gt_boxes, predicted_boxes)
    used = np.zeros(iou.shape[1], dtype=bool)
    matches = 0
    for row in iou:
        candidates = np.where(used | (row < iou_threshold), -1.0, row)
        best = int(np.argmax(candidates))  # first index among equal IoUs, as the reference's strict ">"
        if candidates[best] > 0:
            used[best] = True
            matches += 1
    return matches


def precision_recall(
    gt_boxes: Sequence[BoxLike], predicted_boxes: Sequence[BoxLike], iou_threshold: float
) -> tuple[float, float]:
    if len(gt_boxes) == 0:
        raise ValueError("precision/recall need at least one ground-truth box (score rejections separately)")
    if len(predicted_boxes) == 0:
        return 0.0, 0.0
    matches = greedy_match_count(gt_boxes, predicted_boxes, iou_threshold)
    return matches / len(predicted_boxes), matches / len(gt_boxes)


def density_f1(precision: float, recall: float, num_gt: int, num_predicted: int) -> float:
    """F1 x min(1, num_gt / num_predicted); 0 when nothing is predicted or P + R = 0."""
    if num_predicted == 0 or precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall) * min(1.0, num_gt / num_predicted)


def multi_target_item_scores(gt_boxes: Sequence[BoxLike], predicted_boxes: Sequence[BoxLike]) -> dict[str, float]:
    """One expression's recall/precision/DensityF1 at IoU 0.5 (``*_50``) and averaged over 0.5:0.95."""
    gt = as_box_array(gt_boxes, "gt_boxes")
    predicted = as_box_array(predicted_boxes, "predicted_boxes")
    per_threshold = []
    for threshold in HUMANREF_IOU_THRESHOLDS:
        precision, recall = precision_recall(gt, predicted, threshold)
        per_threshold.append((precision, recall, density_f1(precision, recall, len(gt), len(predicted))))
    precisions, recalls, f1s = (np.array(column) for column in zip(*per_threshold))
    return {
        "precision_50": float(precisions[0]),
        "recall_50": float(recalls[0]),
        "density_f1_50": float(f1s[0]),
        "precision": float(precisions.mean()),
        "recall": float(recalls.mean()),
        "density_f1": float(f1s.mean()),
    }


def multi_target_scores(
    gt_boxes: Sequence[Sequence[BoxLike]],
    predicted_boxes: Sequence[Sequence[BoxLike]],
    is_rejection: Sequence[bool],
    groups: Sequence[str] | None = None,
) -> dict[str, Any]:
    """HumanRef-style scores over a set of expressions.

    `is_rejection[i]` marks an expression that refers to nobody (HumanRef's ``rejection`` domain).
    `groups` (e.g. the HumanRef domain) adds a ``per_group`` breakdown of the non-rejection items.
    """
    n = len(gt_boxes)
    if not (len(predicted_boxes) == len(is_rejection) == n) or (groups is not None and len(groups) != n):
        raise ValueError("gt_boxes, predicted_boxes, is_rejection (and groups) must have one entry per expression")
    item_scores: list[dict[str, float]] = []
    item_groups: list[str] = []
    rejections = correct_rejections = 0
    for i in range(n):
        if is_rejection[i]:
            rejections += 1
            correct_rejections += len(predicted_boxes[i]) == 0
            continue
        if len(gt_boxes[i]) == 0:
            raise ValueError(f"expression #{i} is not a rejection but has no ground-truth box")
        item_scores.append(multi_target_item_scores(gt_boxes[i], predicted_boxes[i]))
        item_groups.append(groups[i] if groups is not None else "")

    result: dict[str, Any] = _mean_scores(item_scores)
    result["num_items"] = len(item_scores)
    result["num_rejection_items"] = rejections
    result["rejection_correct"] = correct_rejections
    result["rejection_accuracy"] = correct_rejections / rejections if rejections else None
    if groups is not None:
        by_group: dict[str, list[dict[str, float]]] = defaultdict(list)
        for group, scores in zip(item_groups, item_scores):
            by_group[group].append(scores)
        result["per_group"] = {
            group: {**_mean_scores(scores), "num_items": len(scores)} for group, scores in sorted(by_group.items())
        }
    return result


def _mean_scores(item_scores: list[dict[str, float]]) -> dict[str, float | None]:
    keys = ("precision", "recall", "density_f1", "precision_50", "recall_50", "density_f1_50")
    if not item_scores:
        return {key: None for key in keys}
    return {key: float(np.mean([scores[key] for scores in item_scores])) for key in keys}
