"""Detection metrics: COCO bbox mAP (pycocotools) and OVDEval's NMS-AP.

* `coco_bbox_map` is pycocotools' ``COCOeval(iouType="bbox")`` unchanged (IoU 0.50:0.95, area
  ranges, at most 100 detections per image); this module only builds its inputs.
* `ovdeval_nms_filter` + `ovdeval_nms_ap` follow OVDEval's ``eval.py`` (om-ai-lab/OVDEval): for each
  ground-truth box, of all predictions *of any label* in that image whose IoU with it is above 0.5,
  only the best-scoring one is kept; the rest are removed (unless another GT keeps them). COCO AP is
  then computed on what is left. This stops a detector from scoring well by firing every
  hard-negative label on the same box ("inflated AP").

FO1 predictions become COCO results with `detections_to_coco_results` (upstream ``eval_coco.py``:
box = the proposal named by the region index, score = that proposal's score (or another score the
caller chooses), labels that are not category names are dropped).
"""
from __future__ import annotations

import contextlib
import copy
import io
from collections import OrderedDict
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from vlmfo1.evaluation.box_ops import pairwise_iou, xywh_to_xyxy, xyxy_to_xywh

# Order of pycocotools' `COCOeval.stats`.
COCO_STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
OVDEVAL_NMS_IOU = 0.5


def detections_to_coco_results(
    image_id: Any,
    detections: Iterable[tuple[str, Sequence[float], float]],
    category_ids: Mapping[str, int],
) -> tuple[list[dict[str, Any]], list[str]]:
    """One image's FO1 detections as COCO results.

    `detections` are ``(label, xyxy box, score)``: for each region an answer names under a label,
    the box and score of the proposal behind that region. Returns the results and the labels that
    are no category name (dropped, as upstream does).
    """
    results: list[dict[str, Any]] = []
    unknown: list[str] = []
    for label, box, score in detections:
        label = label.strip()
        if label not in category_ids:
            if label not in unknown:
                unknown.append(label)
            continue
        if len(box) != 4:
            raise ValueError(f"box of {label!r} must be [x1, y1, x2, y2], got {box!r}")
        results.append(
            {"image_id": image_id, "category_id": category_ids[label], "bbox": xyxy_to_xywh(box), "score": float(score)}
        )
    return results, unknown


def coco_bbox_map(gt: Mapping[str, Any], results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """COCO bbox AP/AR of `results` (COCO results format) against `gt` (a COCO annotation dict).

    Returns the 12 `COCO_STAT_NAMES` numbers in [0, 1] (None where pycocotools reports -1: no ground
    truth in that area range) and ``per_category`` AP@[.5:.95] keyed by category name (None for a
    category without ground truth). Every result must name an image and a category of `gt`.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    dataset = _complete_gt(gt)
    image_ids = {image["id"] for image in dataset["images"]}
    category_ids = {category["id"] for category in dataset["categories"]}
    results = [_check_result(i, r, image_ids, category_ids) for i, r in enumerate(results)]

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress on stdout
        coco_gt = COCO()
        coco_gt.dataset = dataset
        coco_gt.createIndex()
        if results:
            coco_dt = coco_gt.loadRes(results)
        else:  # loadRes cannot take an empty list; no detections is a valid (all-zero) result
            coco_dt = COCO()
            coco_dt.dataset = {"images": dataset["images"], "categories": dataset["categories"], "annotations": []}
            coco_dt.createIndex()
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()

    metrics: dict[str, Any] = {name: _defined(value) for name, value in zip(COCO_STAT_NAMES, evaluator.stats)}
    # precision: [iou threshold, recall point, category, area range, max dets]; area "all", 100 dets.
    precision = evaluator.eval["precision"][:, :, :, 0, -1]
    names = {category["id"]: category["name"] for category in dataset["categories"]}
    per_category = {}
    for k, category_id in enumerate(evaluator.params.catIds):
        values = precision[:, :, k]
        values = values[values > -1]
        per_category[names[category_id]] = float(values.mean()) if values.size else None
    metrics["per_category"] = per_category
    return metrics


def image_subset_map(
    coco: Mapping[str, Any], detections: Iterable[tuple[Any, Sequence[tuple[str, Sequence[float], float]]]]
) -> dict[str, Any]:
    """COCO bbox AP/AR of FO1 detections on some images of a COCO dataset, scored against those
    images' ground truth only. `detections`: ``(image_id, [(label, xyxy box, score), ...])`` per
    answer. Returns `coco_bbox_map`'s numbers plus ``images``, ``detections`` (kept),
    ``unknown_label_detections`` (dropped: their label is no category) and ``unknown_labels`` (the
    distinct such labels, counted per answer)."""
    category_ids = {category["name"]: category["id"] for category in coco["categories"]}
    results: list[dict[str, Any]] = []
    images, dropped, unknown = set(), 0, 0
    for image_id, labelled in detections:
        labelled = list(labelled)
        found, missing = detections_to_coco_results(image_id, labelled, category_ids)
        results += found
        dropped += len(labelled) - len(found)
        unknown += len(missing)
        images.add(image_id)
    gt = {**coco, "images": [i for i in coco["images"] if i["id"] in images],
          "annotations": [a for a in coco["annotations"] if a["image_id"] in images]}
    return {**coco_bbox_map(gt, results), "images": len(images), "detections": len(results),
            "unknown_label_detections": dropped, "unknown_labels": unknown}


def ovdeval_nms_filter(
    gt_annotations: Sequence[Mapping[str, Any]],
    results: Sequence[Mapping[str, Any]],
    iou_threshold: float = OVDEVAL_NMS_IOU,
) -> list[dict[str, Any]]:
    """OVDEval's NMS against ground truth, label-agnostic (see the module docstring).

    Order is kept as the reference keeps it (images in order of first appearance in `results`,
    predictions in file order), which matters because COCOeval breaks score ties by order. Among
    predictions with equal scores on one GT, the later one is kept (the reference's reversed argsort).
    Predictions on images without ground truth are all kept.
    """
    gt_by_image: dict[Any, list[list[float]]] = {}
    for annotation in gt_annotations:
        gt_by_image.setdefault(annotation["image_id"], []).append(xywh_to_xyxy(annotation["bbox"]))
    results_by_image: OrderedDict[Any, list[Mapping[str, Any]]] = OrderedDict()
    for result in results:
        results_by_image.setdefault(result["image_id"], []).append(result)

    kept_results: list[dict[str, Any]] = []
    for image_id, image_results in results_by_image.items():
        gt_boxes = gt_by_image.get(image_id, [])
        if not gt_boxes:
            kept_results += [dict(r) for r in image_results]
            continue
        boxes = [xywh_to_xyxy(r["bbox"]) for r in image_results]
        scores = np.array([float(r["score"]) for r in image_results])
        iou = pairwise_iou(gt_boxes, boxes)
        keep: set[int] = set()
        remove: set[int] = set()
        for gt_row in iou:
            overlapping = np.flatnonzero(gt_row > iou_threshold)
            if overlapping.size == 0:
                continue
            by_score = overlapping[np.argsort(scores[overlapping], kind="stable")[::-1]]
            keep.add(int(by_score[0]))
            remove.update(int(i) for i in by_score[1:])
        removed = remove - keep
        kept_results += [dict(r) for i, r in enumerate(image_results) if i not in removed]
    return kept_results


def ovdeval_nms_ap(
    gt: Mapping[str, Any], results: Sequence[Mapping[str, Any]], iou_threshold: float = OVDEVAL_NMS_IOU
) -> dict[str, Any]:
    """NMS-AP: `coco_bbox_map` of `ovdeval_nms_filter`'s output. ``AP`` is the NMS-AP OVDEval reports."""
    kept = ovdeval_nms_filter(gt.get("annotations", []), results, iou_threshold)
    metrics = coco_bbox_map(gt, kept)
    metrics["num_predictions_before_nms"] = len(results)
    metrics["num_predictions_after_nms"] = len(kept)
    return metrics


def _defined(value: float) -> float | None:
    return None if value < 0 else float(value)


def _complete_gt(gt: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of `gt` with what COCOeval needs.

    Annotation ids are renumbered 1..N in file order: pycocotools records a match by the matched
    annotation's id and reads 0 as "unmatched", so a file whose ids start at 0 (OVDEval's do) would
    silently lose that object's match; repeated ids would overwrite each other. The ids appear in no
    metric. Hand-made files often lack ``area`` or ``iscrowd``; they get the box area and 0.
    """
    for key in ("images", "categories"):
        if key not in gt:
            raise ValueError(f"the COCO ground truth has no {key!r} list")
    dataset = {
        "images": copy.deepcopy(list(gt["images"])),
        "categories": copy.deepcopy(list(gt["categories"])),
        "annotations": copy.deepcopy(list(gt.get("annotations", []))),
    }
    for number, annotation in enumerate(dataset["annotations"], start=1):
        for key in ("image_id", "category_id", "bbox"):
            if key not in annotation:
                raise ValueError(f"ground-truth annotation {annotation!r} has no {key!r}")
        annotation.setdefault("area", float(annotation["bbox"][2]) * float(annotation["bbox"][3]))
        annotation.setdefault("iscrowd", 0)
        annotation["id"] = number
    return dataset


def _check_result(position: int, result: Mapping[str, Any], image_ids: set, category_ids: set) -> dict[str, Any]:
    for key in ("image_id", "category_id", "bbox", "score"):
        if key not in result:
            raise ValueError(f"prediction #{position} has no {key!r}: {dict(result)!r}")
    if result["image_id"] not in image_ids:
        raise ValueError(f"prediction #{position} is for image_id {result['image_id']!r}, which the ground truth lacks")
    if result["category_id"] not in category_ids:
        raise ValueError(
            f"prediction #{position} has category_id {result['category_id']!r}, which the ground truth lacks"
        )
    if len(result["bbox"]) != 4:
        raise ValueError(f"prediction #{position} bbox must be [x, y, width, height], got {result['bbox']!r}")
    return {
        "image_id": result["image_id"],
        "category_id": result["category_id"],
        "bbox": [float(v) for v in result["bbox"]],
        "score": float(result["score"]),
    }
