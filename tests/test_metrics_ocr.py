"""Region OCR exact-match accuracy with the COCO-Text API's normalisation."""
import pytest

from vlmfo1.evaluation.metrics.ocr import edit_distance, normalize_ocr_text, ocr_scores


@pytest.mark.parametrize(
    "raw, normalised",
    [
        ("STOP", "stop"),
        ("  Stop \n", "stop"),
        ("Café", "caf"),  # non-ASCII dropped
        ("New\nYork", "new york"),
        ("50% off!", "50 off!"),  # % is not kept; ! is
        ("a&w / 7-up", "a&w / 7-up"),
        ("open<|im_end|>", "open"),
    ],
)
def test_normalize_ocr_text(raw, normalised):
    assert normalize_ocr_text(raw) == normalised


def test_edit_distance_hand_values():
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance("", "abc") == 3
    assert edit_distance("coffee", "cofee") == 1
    assert edit_distance("same", "same") == 0


def test_ocr_scores_hand_values():
    truths = ["STOP", "Hi", "coffee", "EXIT", "Parking"]
    answers = ["stop", "hi", "cofee", None, "PARKING."]
    scores = ocr_scores(answers, truths)
    # "Hi" is shorter than 3 characters: ignored. Scored: stop (exact), cofee (distance 1),
    # missing (wrong), "parking." vs "parking" (distance 1).
    assert scores["num_items"] == 4 and scores["num_ignored"] == 1
    assert scores["accuracy"] == pytest.approx(1 / 4)
    assert scores["distance1_accuracy"] == pytest.approx(3 / 4)


def test_ocr_scores_without_scorable_items():
    assert ocr_scores(["a"], ["a"])["accuracy"] is None
    assert ocr_scores(["a"], ["a"], min_gt_length=0)["accuracy"] == 1.0
