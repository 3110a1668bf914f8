"""ShapeWorld's own metrics (region-index grounding, short answers, captions) and its adapter/task
on a freshly generated split."""
import json

import pytest

from vlmfo1.data.shapeworld import write_dataset
from vlmfo1.evaluation.metrics.shapeworld import (
    caption_similarity,
    grounding_scores,
    grounding_set_scores,
    normalize_short_answer,
    short_answer_accuracy,
)
from vlmfo1.evaluation.tasks import get_task, score_files


def test_label_aware_and_agnostic_grounding_hand_values():
    targets = [("red circle", [1, 2]), ("square", [])]
    predicted = [("Red circle", [1, 3]), ("triangle", [4])]
    # TP = 1 (region 1 under "red circle"), 3 predicted, 2 targets: P = 1/3, R = 1/2, F1 = 0.4.
    aware = grounding_set_scores(targets, predicted, label_aware=True)
    assert aware == {"precision": pytest.approx(1 / 3), "recall": 0.5, "f1": pytest.approx(0.4), "exact": 0.0}
    agnostic = grounding_set_scores(targets, predicted, label_aware=False)
    assert agnostic["f1"] == pytest.approx(0.4)


def test_swapped_labels_fail_only_when_labels_count():
    targets = [("circle", [1]), ("square", [2])]
    swapped = [("circle", [2]), ("square", [1])]
    assert grounding_set_scores(targets, swapped, label_aware=True)["f1"] == 0.0
    assert grounding_set_scores(targets, swapped, label_aware=False)["f1"] == 1.0
    assert grounding_set_scores(targets, targets, label_aware=True)["exact"] == 1.0


def test_rejections_and_missing_predictions():
    nothing = [("blue star", [])]
    assert grounding_set_scores(nothing, [], label_aware=True)["f1"] == 1.0
    assert grounding_set_scores(nothing, [("blue star", [0])], label_aware=True)["f1"] == 0.0
    scores = grounding_scores([nothing, nothing, [("star", [3])]], [[], None, [("star", [3])]], label_aware=True)
    assert scores["f1"] == pytest.approx(2 / 3)  # 1 (rejected), 0 (missing), 1 (found)
    assert scores["num_rejection_items"] == 2 and scores["rejection_accuracy"] == 0.5


def test_short_answers_hand_values():
    assert normalize_short_answer("  Yes.\n") == "yes"
    assert normalize_short_answer("Pink  ring<|im_end|>") == "pink ring"
    scores = short_answer_accuracy(["Yes.", "Red", "dark red", None], ["yes", "red", "red", "3"])
    assert scores["accuracy"] == 0.5


def test_caption_similarity_is_one_for_the_reference_caption():
    captions = ["A small red diamond with a striped pattern. It is in the centre of the image.", "a purple hexagon"]
    scores = caption_similarity(captions, captions)
    assert scores["semantic_similarity"] == pytest.approx(1.0, abs=1e-5) and scores["semantic_iou"] == 1.0
    assert caption_similarity(captions[::-1], captions)["semantic_iou"] < 0.2


@pytest.fixture(scope="module")
def shapeworld_split(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shapeworld")
    write_dataset(folder, n=4, seed=3, split="val", coordinates=False)
    return folder


def test_shapeworld_items_use_the_records_proposals(shapeworld_split):
    dataset = get_task("shapeworld").load(shapeworld_split, split="val")
    lines = [json.loads(line) for line in (shapeworld_split / "val.fo1.jsonl").read_text().splitlines()]
    assert [item.id for item in dataset.items] == [line["id"] for line in lines]
    item, line = dataset.items[0], lines[0]
    assert item.proposals == line["bbox_list"] and item.proposal_scores == line["score_list"]
    assert item.image == str(shapeworld_split / line["image"])
    assert item.target["task"] == line["task"] and item.target["answer"] == line["conversations"][1]["value"]
    tasks = {i.target["task"] for i in dataset.items}
    assert {"detection", "rec", "counting", "region_caption_brief", "region_vqa", "image_qa"} <= tasks


def test_shapeworld_reference_answers_score_one_on_every_task(shapeworld_split, tmp_path):
    dataset = get_task("shapeworld").load(shapeworld_split, split="val")
    predictions = tmp_path / "pred.jsonl"
    predictions.write_text("".join(json.dumps({"id": i.id, "answer": i.target["answer"]}) + "\n" for i in dataset.items))
    report = score_files("shapeworld", shapeworld_split, predictions, split="val")
    headline = {key: value for key, value in report["metrics"].items() if key != "per_task"}
    assert len(headline) >= 10
    assert all(value == pytest.approx(1.0, abs=1e-5) for value in headline.values()), headline
    assert report["num_missing"] == 0
    # Proposals are jittered object boxes, so box-level DF1 over IoU 0.5:0.95 stays below 1.
    assert 0 < report["metrics"]["per_task"]["rec"]["box_density_f1"] < 1


def test_shapeworld_shuffled_answers_score_lower(shapeworld_split):
    task = get_task("shapeworld")
    dataset = task.load(shapeworld_split, split="val")
    # Each record gets the reference answer of the same task in the next scene.
    by_task = {}
    for item in dataset.items:
        by_task.setdefault(item.target["task"], []).append(item)
    predictions = {}
    for items in by_task.values():
        for item, donor in zip(items, items[1:] + items[:1]):
            predictions[item.id] = {"id": item.id, "answer": donor.target["answer"]}
    metrics = task.score(dataset, predictions)["metrics"]
    for key in ("detect_everything.f1", "rec.f1", "visual_prompt_detection.f1", "region_vqa.accuracy", "image_qa.accuracy"):
        assert metrics[key] < 0.6, (key, metrics[key])


def test_shapeworld_coco_file_scores_with_the_coco_task(shapeworld_split, tmp_path):
    gt = json.loads((shapeworld_split / "val.coco.json").read_text())
    perfect = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
               for a in gt["annotations"]]
    results = tmp_path / "results.json"
    results.write_text(json.dumps(perfect))
    dataset = get_task("coco").load(shapeworld_split / "val.coco.json", shapeworld_split)
    assert dataset.items[0].image == str(shapeworld_split / gt["images"][0]["file_name"])
    assert score_files("coco", shapeworld_split / "val.coco.json", results)["metrics"]["AP"] == pytest.approx(1.0)
