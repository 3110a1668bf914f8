"""REC Acc@0.5 / mIoU and HumanRef precision / recall / DensityF1, with hand-computed values."""
import pytest

from vlmfo1.evaluation.box_ops import box_iou, pairwise_iou
from vlmfo1.evaluation.metrics.referring import (
    HUMANREF_IOU_THRESHOLDS,
    density_f1,
    greedy_match_count,
    multi_target_item_scores,
    multi_target_scores,
    precision_recall,
    rec_scores,
)

GT = [0, 0, 10, 10]


def test_iou_hand_values():
    assert box_iou(GT, [0, 0, 10, 10]) == 1.0
    assert box_iou(GT, [5, 0, 15, 10]) == pytest.approx(50 / 150)
    assert box_iou(GT, [10, 0, 20, 10]) == 0.0  # touching edges
    assert box_iou(GT, [3, 3, 3, 8]) == 0.0  # zero-width box
    assert box_iou([0, 0, 0, 0], [0, 0, 0, 0]) == 0.0  # empty union
    assert pairwise_iou([GT, [0, 0, 5, 10]], [[0, 0, 10, 5]]).tolist() == [[0.5], [pytest.approx(25 / 75)]]


def test_rec_accuracy_needs_iou_strictly_above_half():
    predictions = [[0, 0, 10, 10], [0, 0, 10, 5], [0, 0, 10, 6], None]  # IoU 1, 0.5, 0.6, no box
    scores = rec_scores(predictions, [GT] * 4)
    assert scores["accuracy"] == pytest.approx(2 / 4)
    assert scores["miou"] == pytest.approx((1 + 0.5 + 0.6 + 0) / 4)


def test_rec_length_mismatch_is_an_error():
    with pytest.raises(ValueError):
        rec_scores([GT], [GT, GT])


def test_greedy_matching_goes_in_gt_order_and_is_one_to_one():
    gt = [[0, 0, 10, 10], [4, 0, 14, 10]]
    predictions = [[2, 0, 12, 10], [9, 0, 19, 10]]
    # IoUs: gt0-p0 = 80/120, gt0-p1 = 10/190, gt1-p0 = 80/120, gt1-p1 = 50/150.
    # gt0 takes p0; gt1 is left with p1 (IoU 1/3): one match at 0.5, although p0 suits both.
    assert greedy_match_count(gt, predictions, 0.5) == 1
    assert greedy_match_count(gt, predictions, 0.3) == 2
    # The same prediction is never matched twice.
    assert greedy_match_count(gt, [[2, 0, 12, 10]], 0.5) == 1


def test_precision_recall_and_density_f1_hand_values():
    gt = [[0, 0, 10, 10], [20, 0, 30, 10]]
    assert precision_recall(gt, [[0, 0, 10, 10]], 0.5) == (1.0, 0.5)
    assert precision_recall(gt, [], 0.5) == (0.0, 0.0)
    # P = 1, R = 1/2: F1 = 2/3; 2 GT for 1 prediction: no density penalty.
    assert density_f1(1.0, 0.5, num_gt=2, num_predicted=1) == pytest.approx(2 / 3)
    # P = 1/2, R = 1: F1 = 2/3; 1 GT for 2 predictions: x 1/2.
    assert density_f1(0.5, 1.0, num_gt=1, num_predicted=2) == pytest.approx(1 / 3)
    assert density_f1(0.0, 0.0, 1, 3) == 0.0 and density_f1(0.0, 0.0, 1, 0) == 0.0


def test_item_scores_average_over_the_reference_thresholds():
    assert len(HUMANREF_IOU_THRESHOLDS) == 10 and HUMANREF_IOU_THRESHOLDS[0] == 0.5
    assert multi_target_item_scores([GT], [GT]) == {
        "precision_50": 1.0, "recall_50": 1.0, "density_f1_50": 1.0, "precision": 1.0, "recall": 1.0, "density_f1": 1.0,
    }
    # IoU 0.7 matches at 0.5, 0.55, 0.6 and 0.65; the reference's 7th threshold is
    # 0.7000000000000002, so not there: 4 of 10 thresholds.
    scores = multi_target_item_scores([GT], [[0, 0, 10, 7]])
    assert scores["precision_50"] == 1.0
    assert scores["precision"] == pytest.approx(0.4)
    assert scores["recall"] == pytest.approx(0.4)
    assert scores["density_f1"] == pytest.approx(0.4)


def test_over_detection_of_hard_negatives_is_penalised():
    targets = [[0, 0, 10, 10]]
    persons = targets + [[20, 0, 30, 10], [40, 0, 50, 10], [60, 0, 70, 10]]  # the other people
    exact = multi_target_item_scores(targets, targets)
    everyone = multi_target_item_scores(targets, persons)
    # Recall stays 1, precision falls to 1/4; F1 = 2/5; density x 1/4 -> 1/10.
    assert everyone["recall"] == 1.0
    assert everyone["precision"] == pytest.approx(0.25)
    assert everyone["density_f1"] == pytest.approx(0.4 * 0.25)
    assert exact["density_f1"] == 1.0


def test_rejection_items_are_scored_apart():
    gt = [[GT], [], [], [GT]]
    predictions = [[GT], [], [GT], []]
    scores = multi_target_scores(gt, predictions, is_rejection=[False, True, True, False], groups=["a", "r", "r", "b"])
    # Non-rejection: item 0 perfect, item 3 predicted nothing -> means of 1 and 0.
    assert scores["num_items"] == 2
    assert scores["precision"] == 0.5 and scores["recall"] == 0.5 and scores["density_f1"] == 0.5
    # Rejection: item 1 correctly predicts no box, item 2 does not.
    assert scores["num_rejection_items"] == 2 and scores["rejection_correct"] == 1
    assert scores["rejection_accuracy"] == 0.5
    assert scores["per_group"]["a"]["density_f1"] == 1.0 and scores["per_group"]["b"]["density_f1"] == 0.0
    assert "r" not in scores["per_group"]


def test_shuffled_predictions_score_lower_than_perfect_ones():
    gt = [[[0, 0, 10, 10]], [[50, 50, 80, 90]], [[5, 5, 40, 40], [60, 0, 90, 30]]]
    perfect = multi_target_scores(gt, gt, [False] * 3)
    shuffled = multi_target_scores(gt, [gt[1], gt[2], gt[0]], [False] * 3)
    assert perfect["density_f1"] == 1.0
    assert shuffled["density_f1"] < 0.5


def test_non_rejection_without_gt_is_an_error():
    with pytest.raises(ValueError, match="not a rejection"):
        multi_target_scores([[]], [[]], [False])
