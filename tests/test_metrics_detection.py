"""COCO mAP (pycocotools wrapper) and OVDEval NMS-AP, on cases whose answers are known."""
import contextlib
import copy
import io

import numpy as np
import pytest

pytest.importorskip("pycocotools")
from pycocotools.coco import COCO  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402

from vlmfo1.evaluation.metrics.detection import (  # noqa: E402
    COCO_STAT_NAMES,
    coco_bbox_map,
    detections_to_coco_results,
    ovdeval_nms_ap,
    ovdeval_nms_filter,
)


def gt_dataset(boxes_by_image, categories=((1, "cat"), (2, "dog"))):
    """boxes_by_image: {image_id: [(category_id, [x, y, w, h]), ...]}"""
    annotations = []
    for image_id, boxes in boxes_by_image.items():
        for category_id, bbox in boxes:
            annotations.append(
                {"id": len(annotations) + 1, "image_id": image_id, "category_id": category_id, "bbox": list(bbox),
                 "area": bbox[2] * bbox[3], "iscrowd": 0}
            )
    return {
        "images": [{"id": i, "width": 640, "height": 480, "file_name": f"{i}.jpg"} for i in boxes_by_image],
        "annotations": annotations,
        "categories": [{"id": c, "name": n} for c, n in categories],
    }


def result(image_id, category_id, bbox, score):
    return {"image_id": image_id, "category_id": category_id, "bbox": list(bbox), "score": score}


def pycocotools_stats(gt, results):
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(copy.deepcopy(results))
        evaluator = COCOeval(coco_gt, coco_dt, "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats


# ---- COCO mAP ------------------------------------------------------------------------------------


def test_coco_map_equals_pycocotools_on_the_same_predictions():
    rng = np.random.default_rng(0)
    boxes = {}
    for image_id in range(1, 6):
        boxes[image_id] = []
        for _ in range(rng.integers(1, 6)):
            x, y = rng.uniform(0, 400, size=2)
            w, h = rng.uniform(8, 200, size=2)  # small, medium and large areas
            boxes[image_id].append((int(rng.integers(1, 3)), [float(x), float(y), float(w), float(h)]))
    gt = gt_dataset(boxes)
    results = []
    for annotation in gt["annotations"]:
        x, y, w, h = annotation["bbox"]
        jitter = rng.normal(0, 0.08, size=4) * [w, h, w, h]
        results.append(result(annotation["image_id"], annotation["category_id"],
                              [x + jitter[0], y + jitter[1], w + jitter[2], h + jitter[3]], float(rng.uniform(0.3, 1))))
        if rng.uniform() < 0.5:  # a wrong-label duplicate and a background false positive
            results.append(result(annotation["image_id"], 3 - annotation["category_id"], [x, y, w, h], float(rng.uniform(0, 1))))
        results.append(result(annotation["image_id"], 1, [float(rng.uniform(0, 500)), 5.0, 30.0, 30.0], float(rng.uniform(0, 0.6))))

    ours = coco_bbox_map(gt, results)
    reference = pycocotools_stats(gt, results)
    assert 0.2 < ours["AP"] < 0.95  # a non-trivial case
    for name, value in zip(COCO_STAT_NAMES, reference):
        assert ours[name] == (None if value < 0 else pytest.approx(float(value), abs=1e-12)), name


def test_perfect_predictions_score_one_and_false_positive_first_halves_ap():
    gt = gt_dataset({1: [(1, [10, 10, 100, 100])]})
    perfect = [result(1, 1, [10, 10, 100, 100], 0.9)]
    assert coco_bbox_map(gt, perfect)["AP"] == pytest.approx(1.0)
    # Hand-computed: a higher-scored miss comes first, so at recall 1 precision is 1/2 and the
    # interpolated precision is 1/2 at every recall point, for every IoU threshold: AP = 0.5.
    with_miss = perfect + [result(1, 1, [300, 300, 50, 50], 0.95)]
    metrics = coco_bbox_map(gt, with_miss)
    assert metrics["AP"] == pytest.approx(0.5)
    assert metrics["AP50"] == pytest.approx(0.5)
    assert metrics["per_category"] == {"cat": pytest.approx(0.5), "dog": None}  # no dog ground truth


def test_no_predictions_give_zero_ap():
    gt = gt_dataset({1: [(1, [10, 10, 100, 100])], 2: [(2, [0, 0, 50, 50])]})
    metrics = coco_bbox_map(gt, [])
    assert metrics["AP"] == 0.0 and metrics["AR100"] == 0.0


def test_missing_area_iscrowd_and_id_are_filled_from_the_box():
    gt = gt_dataset({1: [(1, [10, 10, 100, 100])]})
    bare = copy.deepcopy(gt)
    for annotation in bare["annotations"]:
        del annotation["area"], annotation["iscrowd"], annotation["id"]
    predictions = [result(1, 1, [12, 10, 100, 100], 0.9)]
    assert coco_bbox_map(bare, predictions)["AP"] == coco_bbox_map(gt, predictions)["AP"]


def test_annotation_id_zero_is_not_lost():
    # pycocotools used directly reads a match to annotation id 0 as "no match".
    gt = gt_dataset({1: [(1, [10, 10, 100, 100])]})
    gt["annotations"][0]["id"] = 0
    predictions = [result(1, 1, [10, 10, 100, 100], 0.9)]
    assert pycocotools_stats(gt, predictions)[0] == 0.0
    assert coco_bbox_map(gt, predictions)["AP"] == pytest.approx(1.0)


def test_predictions_for_unknown_images_or_categories_are_errors():
    gt = gt_dataset({1: [(1, [10, 10, 100, 100])]})
    with pytest.raises(ValueError, match="image_id 7"):
        coco_bbox_map(gt, [result(7, 1, [0, 0, 1, 1], 0.5)])
    with pytest.raises(ValueError, match="category_id 9"):
        coco_bbox_map(gt, [result(1, 9, [0, 0, 1, 1], 0.5)])
    with pytest.raises(ValueError, match="'score'"):
        coco_bbox_map(gt, [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1]}])


def test_fo1_detections_become_coco_results():
    results, unknown = detections_to_coco_results(
        42,
        [("cat", [10, 20, 30, 60], 0.8), ("zebra", [0, 0, 5, 5], 0.7), ("dog ", [1.5, 2, 3.5, 10], 0.6)],
        {"cat": 1, "dog": 2},
    )
    assert results == [
        {"image_id": 42, "category_id": 1, "bbox": [10.0, 20.0, 20.0, 40.0], "score": 0.8},
        {"image_id": 42, "category_id": 2, "bbox": [1.5, 2.0, 2.0, 8.0], "score": 0.6},
    ]
    assert unknown == ["zebra"]


# ---- OVDEval NMS-AP ------------------------------------------------------------------------------


def test_nms_filter_keeps_the_best_prediction_of_any_label_per_gt():
    annotations = gt_dataset({1: [(1, [0, 0, 100, 100]), (2, [200, 0, 100, 100])]})["annotations"]
    predictions = [
        result(1, 1, [0, 0, 100, 100], 0.6),  # 0: on GT a, beaten by #1 -> removed
        result(1, 2, [2, 0, 100, 100], 0.9),  # 1: best on GT a -> kept
        result(1, 2, [200, 0, 100, 100], 0.8),  # 2: only one on GT b -> kept
        result(1, 1, [400, 400, 10, 10], 0.99),  # 3: overlaps no GT -> kept
        result(1, 1, [0, 0, 100, 60], 0.95),  # 4: IoU 0.6 with GT a and the top scorer there -> kept, #1 removed
        result(2, 1, [0, 0, 100, 100], 0.1),  # 5: image without GT -> kept
    ]
    kept = ovdeval_nms_filter(annotations, predictions)
    # Hand-checked: on GT a the overlapping ones are #0 (0.6), #1 (0.9), #4 (0.95): #4 stays, #0 and #1 go.
    assert kept == [predictions[i] for i in (2, 3, 4, 5)]


def test_prediction_removed_by_one_gt_survives_when_another_gt_keeps_it():
    annotations = gt_dataset({1: [(1, [0, 0, 100, 100]), (1, [10, 0, 100, 100])]})["annotations"]
    predictions = [
        result(1, 1, [0, 0, 100, 100], 0.9),  # best on GT a (IoU 1) and on GT b (IoU 0.82)
        result(1, 1, [10, 0, 100, 100], 0.5),  # loses on both GTs -> removed
    ]
    assert ovdeval_nms_filter(annotations, predictions) == [predictions[0]]
    predictions[1]["score"] = 0.95  # now it is best on both: the other one is removed
    assert ovdeval_nms_filter(annotations, predictions) == [predictions[1]]


def hard_negative_case():
    # Image 1 shows a "red car" (category 1); image 2 a "blue car" (category 2, the hard negative).
    return gt_dataset({1: [(1, [0, 0, 100, 100])], 2: [(2, [50, 50, 100, 100])]},
                      categories=((1, "red car"), (2, "blue car")))


def test_nms_ap_is_one_for_perfect_predictions():
    gt = hard_negative_case()
    perfect = [result(1, 1, [0, 0, 100, 100], 0.9), result(2, 2, [50, 50, 100, 100], 0.9)]
    assert ovdeval_nms_ap(gt, perfect)["AP"] == pytest.approx(1.0)
    # The hard-negative label on the same box, scored lower, is removed and costs nothing.
    with_weak_negative = perfect + [result(1, 2, [0, 0, 100, 100], 0.3)]
    assert ovdeval_nms_ap(gt, with_weak_negative)["AP"] == pytest.approx(1.0)


def test_nms_ap_penalises_hard_negatives_that_plain_ap_forgives():
    gt = hard_negative_case()
    predictions = [
        result(1, 1, [0, 0, 100, 100], 0.9),
        result(1, 2, [0, 0, 100, 100], 0.95),  # the hard negative, preferred on the red car
        result(2, 2, [50, 50, 100, 100], 0.9),
    ]
    # Hand-computed plain AP: red car 1.0; blue car: FP (0.95) before TP (0.9) -> 0.5; mean 0.75.
    assert coco_bbox_map(gt, predictions)["AP"] == pytest.approx(0.75)
    # NMS-AP: the red-car prediction is suppressed -> red car AP 0; blue car still 0.5; mean 0.25.
    metrics = ovdeval_nms_ap(gt, predictions)
    assert metrics["AP"] == pytest.approx(0.25)
    assert metrics["num_predictions_before_nms"] == 3 and metrics["num_predictions_after_nms"] == 2


def test_nms_ap_drops_when_labels_are_shuffled():
    gt = gt_dataset({1: [(1, [0, 0, 100, 100]), (2, [200, 0, 100, 100])], 2: [(1, [0, 0, 50, 50]), (2, [100, 100, 80, 80])]})
    perfect = [result(a["image_id"], a["category_id"], a["bbox"], 0.9) for a in gt["annotations"]]
    shuffled = [dict(r, category_id=3 - r["category_id"]) for r in perfect]
    assert ovdeval_nms_ap(gt, perfect)["AP"] == pytest.approx(1.0)
    assert ovdeval_nms_ap(gt, shuffled)["AP"] == pytest.approx(0.0)


def test_image_subset_map_scores_only_the_answered_images_and_counts_dropped_labels():
    from vlmfo1.evaluation.metrics.detection import image_subset_map

    coco = {
        "images": [{"id": 1, "width": 100, "height": 100}, {"id": 2, "width": 100, "height": 100}],
        "categories": [{"id": 7, "name": "circle"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 7, "bbox": [10, 10, 20, 20], "area": 400, "iscrowd": 0},
            {"id": 2, "image_id": 2, "category_id": 7, "bbox": [50, 50, 20, 20], "area": 400, "iscrowd": 0},
        ],
    }
    # Image 2 is not answered: its object is no miss. "red circle" is no category: dropped, counted.
    stats = image_subset_map(coco, [(1, [("circle", [10, 10, 30, 30], 0.9), ("red circle", [0, 0, 5, 5], 0.8),
                                         ("red circle", [1, 1, 5, 5], 0.7)])])
    assert stats["AP"] == pytest.approx(1.0) and stats["AR100"] == pytest.approx(1.0)
    assert (stats["images"], stats["detections"], stats["unknown_label_detections"], stats["unknown_labels"]) == (1, 1, 2, 1)
    both = image_subset_map(coco, [(1, [("circle", [10, 10, 30, 30], 0.9)]), (2, [])])
    assert both["AR100"] == pytest.approx(0.5)
