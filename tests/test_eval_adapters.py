"""Dataset adapters, prediction records, task scoring and `vlmfo1 eval score`, on tiny files
written in each benchmark's own format."""
import json
import pickle

import pytest
import typer
from typer.testing import CliRunner

from vlmfo1 import prompts
from vlmfo1.cli import evaluate as evaluate_cli
from vlmfo1.evaluation.adapters import (
    attach_proposals,
    coco_ground_truth,
    load_coco_detection,
    load_cocotext,
    load_counting,
    load_humanref,
    load_ovdeval,
    load_proposal_file,
    load_refcoco,
    load_region_classification,
)
from vlmfo1.evaluation.metrics.detection import coco_bbox_map
from vlmfo1.evaluation.predictions import append_prediction_record, read_prediction_records
from vlmfo1.evaluation.tasks import get_task, score_files
from vlmfo1.parsing import parse_answer


def write_json(path, data):
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


# ---- COCO ----------------------------------------------------------------------------------------


def coco_file(tmp_path):
    return write_json(
        tmp_path / "instances_val2017.json",
        {
            "images": [
                {"id": 139, "file_name": "000000000139.jpg", "width": 640, "height": 426},
                {"id": 285, "file_name": "000000000285.jpg", "width": 586, "height": 640},
                {"id": 632, "file_name": "000000000632.jpg", "width": 640, "height": 483},
            ],
            "annotations": [
                {"id": 1, "image_id": 139, "category_id": 1, "bbox": [10, 10, 100, 50], "area": 5000, "iscrowd": 0},
                {"id": 2, "image_id": 139, "category_id": 18, "bbox": [200, 100, 40, 40], "area": 1600, "iscrowd": 0},
                {"id": 3, "image_id": 285, "category_id": 18, "bbox": [0, 0, 500, 600], "area": 300000, "iscrowd": 0},
            ],
            "categories": [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}],
        },
    )


def test_coco_items_carry_the_all_category_prompt_and_their_annotations(tmp_path):
    dataset = load_coco_detection(coco_file(tmp_path), tmp_path / "val2017")
    assert [item.id for item in dataset.items] == ["139", "285", "632"]
    item = dataset.items[0]
    assert item.image == str(tmp_path / "val2017" / "000000000139.jpg")
    assert item.prompt == prompts.coco_detection_prompt(["person", "dog"])
    assert [a["id"] for a in item.target["annotations"]] == [1, 2]
    assert dataset.items[2].target["annotations"] == []  # an image without objects is still evaluated
    assert item.proposals is None and item.regions == []


def test_coco_ground_truth_covers_only_the_limited_items(tmp_path):
    dataset = load_coco_detection(coco_file(tmp_path)).limit(1)
    gt = coco_ground_truth(dataset)
    assert [image["id"] for image in gt["images"]] == [139]
    assert [a["id"] for a in gt["annotations"]] == [1, 2]


def test_coco_score_of_a_results_file_equals_the_metric_and_counts_extras(tmp_path):
    results = [
        {"image_id": 139, "category_id": 1, "bbox": [10, 10, 100, 50], "score": 0.9},
        {"image_id": 285, "category_id": 18, "bbox": [0, 0, 500, 600], "score": 0.8},
        {"image_id": 999, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.3},  # not in the ground truth
    ]
    predictions = write_json(tmp_path / "results.json", results)
    report = score_files("coco", coco_file(tmp_path), predictions)
    gt = json.loads(coco_file(tmp_path).read_text())
    assert report["metrics"]["AP"] == coco_bbox_map(gt, results[:2])["AP"]
    assert report["num_extra"] == 1 and report["num_items"] == 3 and report["num_missing"] is None
    # Dog at 139 is missed: person AP 1; dog: one of two found, at the top, so precision 1 up to
    # recall 1/2: 51 of COCO's 101 recall points -> AP 51/101, at every IoU threshold.
    assert report["metrics"]["AP"] == pytest.approx((1 + 51 / 101) / 2)


def test_detection_prediction_records_from_parsed_answers(tmp_path):
    task = get_task("coco")
    dataset = load_coco_detection(coco_file(tmp_path))
    boxes = [[10, 10, 110, 60], [200, 100, 240, 140], [5, 5, 6, 6]]
    scores = [0.9, 0.7, 0.2]
    answer = "<ground>person</ground><objects><region0></objects><ground>dog</ground><objects><region1></objects><ground>cat</ground><objects><region2></objects>"
    record = task.make_prediction(dataset, dataset.items[0], answer, parse_answer(answer, boxes, scores))
    assert record["id"] == "139"
    assert record["unknown_labels"] == ["cat"]
    assert record["detections"] == [
        {"image_id": 139, "category_id": 1, "bbox": [10.0, 10.0, 100.0, 50.0], "score": 0.9},
        {"image_id": 139, "category_id": 18, "bbox": [200.0, 100.0, 40.0, 40.0], "score": 0.7},
    ]
    # Records score like the equivalent results file; the other two images have no record.
    report = task.score(dataset, {record["id"]: record})
    assert report["num_missing"] == 2
    assert report["metrics"]["AP"] == coco_bbox_map(coco_ground_truth(dataset), record["detections"])["AP"]


def test_coco_file_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_coco_detection(tmp_path / "absent.json")
    bad = write_json(tmp_path / "bad.json", {"images": [{"id": 1, "file_name": "a.jpg"}], "categories": [],
                                             "annotations": [{"image_id": 2, "category_id": 1, "bbox": [0, 0, 1, 1]}]})
    with pytest.raises(ValueError, match="unknown image_id 2"):
        load_coco_detection(bad)


def test_ovdeval_prompt_lists_positive_and_negative_labels(tmp_path):
    path = write_json(
        tmp_path / "material.json",
        {
            "images": [{"id": 0, "file_name": "a.jpg", "height": 254, "width": 340,
                        "text": ["computer without screen on"], "neg_text": ["computer with screen on"]}],
            "annotations": [{"id": 0, "bbox": [111, 117, 99, 75], "category_id": 0, "image_id": 0, "iscrowd": 0, "area": 7425}],
            "categories": [{"id": 0, "name": "computer without screen on"}, {"id": 1, "name": "computer with screen on"}],
        },
    )
    dataset = load_ovdeval(path)
    item = dataset.items[0]
    assert item.meta["labels"] == ["computer without screen on", "computer with screen on"]
    assert item.prompt == prompts.detection_prompt("computer without screen on; computer with screen on")
    # The hard negative, scored higher on the object, suppresses the right label: NMS-AP 0.
    results = write_json(tmp_path / "results.json", [
        {"image_id": 0, "category_id": 0, "bbox": [111, 117, 99, 75], "score": 0.5},
        {"image_id": 0, "category_id": 1, "bbox": [111, 117, 99, 75], "score": 0.6},
    ])
    assert score_files("ovdeval", path, results)["metrics"]["AP"] == 0.0
    assert score_files("coco", path, results)["metrics"]["AP"] == pytest.approx(1.0)  # plain AP is fooled


# ---- RefCOCO, HumanRef ---------------------------------------------------------------------------


def refcoco_folder(tmp_path):
    folder = tmp_path / "refcoco"
    folder.mkdir()
    refs = [
        {"ref_id": 0, "ann_id": 10, "image_id": 1, "split": "val", "category_id": 1,
         "sentences": [{"sent_id": 100, "sent": "man on the left", "raw": "Man on the left"},
                       {"sent_id": 101, "sent": "left guy", "raw": "left guy"}]},
        {"ref_id": 1, "ann_id": 11, "image_id": 1, "split": "testA", "category_id": 1,
         "sentences": [{"sent_id": 102, "sent": "right man", "raw": "right man"}]},
    ]
    with open(folder / "refs(unc).p", "wb") as handle:
        pickle.dump(refs, handle)
    write_json(folder / "instances.json", {
        "images": [{"id": 1, "file_name": "COCO_train2014_000000000001.jpg", "width": 100, "height": 100}],
        "annotations": [{"id": 10, "image_id": 1, "category_id": 1, "bbox": [0, 0, 40, 80]},
                        {"id": 11, "image_id": 1, "category_id": 1, "bbox": [50, 0, 40, 80]}],
        "categories": [{"id": 1, "name": "person"}],
    })
    return folder


def test_refcoco_items_are_sentences_of_the_split(tmp_path):
    folder = refcoco_folder(tmp_path)
    dataset = load_refcoco(folder, "val", image_root="train2014")
    assert [item.id for item in dataset.items] == ["0_100", "0_101"]
    assert dataset.items[0].prompt == prompts.detection_prompt("man on the left")
    assert dataset.items[0].target == {"box": [0.0, 0.0, 40.0, 80.0]}
    assert dataset.items[0].image.endswith("train2014/COCO_train2014_000000000001.jpg")
    assert [item.id for item in load_refcoco(folder / "refs(unc).p", "testA").items] == ["1_102"]
    with pytest.raises(ValueError, match="no split 'test'"):
        load_refcoco(folder, "test")


def test_refcoco_scoring_from_parsed_answers(tmp_path):
    task = get_task("refcoco+")
    dataset = task.load(refcoco_folder(tmp_path), split="val")
    boxes = [[50, 0, 90, 80], [0, 0, 40, 80]]
    first = task.make_prediction(dataset, dataset.items[0], "", parse_answer(
        "<ground>man on the left</ground><objects><region1><region0></objects>", boxes))
    assert first["boxes"] == [[0.0, 0.0, 40.0, 80.0], [50.0, 0.0, 90.0, 80.0]]  # top-1 first
    second = {"id": "0_101", "boxes": [[50, 0, 90, 80]]}  # the wrong man
    report = task.score(dataset, {"0_100": first, "0_101": second})
    assert report["metrics"]["accuracy"] == 0.5 and report["metrics"]["miou"] == 0.5


def humanref_file(tmp_path):
    return write_jsonl(tmp_path / "annotations.jsonl", [
        {"id": "a1", "image_name": "1.jpg", "referring": "the woman in red", "domain": "attribute",
         "sub_domain": "1000_attribute", "candidate_boxes": [[0, 0, 10, 10], [20, 0, 30, 10]],
         "answer_boxes": [[0, 0, 10, 10]]},
        {"id": "r1", "image_name": "1.jpg", "referring": "the astronaut", "domain": "rejection",
         "sub_domain": "1000_rejection", "candidate_boxes": [[0, 0, 10, 10], [20, 0, 30, 10]], "answer_boxes": []},
    ])


def test_humanref_items_and_rexseek_format_predictions(tmp_path):
    path = humanref_file(tmp_path)
    dataset = load_humanref(path, "images")
    assert dataset.items[0].target == {"boxes": [[0.0, 0.0, 10.0, 10.0]], "rejection": False}
    assert dataset.items[1].target["rejection"] is True
    assert dataset.items[0].proposals is None
    assert load_humanref(path, use_candidate_boxes=True).items[0].proposals == [[0, 0, 10, 10], [20, 0, 30, 10]]
    predictions = write_jsonl(tmp_path / "pred.jsonl", [
        {"id": "a1", "extracted_predictions": [[0, 0, 10, 10], [20, 0, 30, 10]]},  # one right, one hard negative
        {"id": "r1", "extracted_predictions": [[]]},  # RexSeek's "no box"
    ])
    report = score_files("humanref", path, predictions)
    metrics = report["metrics"]
    assert metrics["recall"] == 1.0 and metrics["precision"] == 0.5
    assert metrics["density_f1"] == pytest.approx(2 / 3 * 1 / 2)
    assert metrics["rejection_accuracy"] == 1.0
    assert metrics["per_group"]["attribute"]["num_items"] == 1


def test_humanref_rejects_points_and_expressions_without_targets(tmp_path):
    path = humanref_file(tmp_path)
    points = write_jsonl(tmp_path / "points.jsonl", [{"id": "a1", "extracted_predictions": [[5, 5]]}])
    with pytest.raises(ValueError, match="points are not supported"):
        score_files("humanref", path, points)
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"id": "x", "image_name": "1.jpg", "referring": "x", "domain": "position",
                                                "candidate_boxes": [[0, 0, 1, 1]], "answer_boxes": []}])
    with pytest.raises(ValueError, match="without answer boxes"):
        load_humanref(bad)


# ---- counting, region classification, region OCR -------------------------------------------------


def test_counting_reads_upstream_processed_json_with_its_proposals(tmp_path):
    path = write_json(tmp_path / "countbench.json", [
        {"question": prompts.counting_prompt("headsets"), "answer": 3, "image": "image_0.jpg",
         "bboxes": [[0, 0, 10, 10], [20, 0, 30, 10]], "scores": [0.9, 0.5]},
        {"label": "cups", "count": 2, "image": "image_1.jpg"},
    ])
    dataset = load_counting(path, "imgs")
    assert [item.id for item in dataset.items] == ["0", "1"]
    assert dataset.items[0].proposals == [[0, 0, 10, 10], [20, 0, 30, 10]] and dataset.items[0].proposal_scores == [0.9, 0.5]
    assert dataset.items[1].prompt == prompts.counting_prompt("cups") and dataset.items[1].proposals is None
    assert dataset.items[1].target == {"count": 2}
    predictions = write_jsonl(tmp_path / "pred.jsonl", [
        {"id": "0", "answer": "<ground>headsets</ground><objects><region0><region1></objects>3"},
        {"id": 1, "count": 3},  # an integer id names the same item
    ])
    report = score_files("countbench", path, predictions)
    assert report["metrics"]["accuracy"] == 0.5 and report["metrics"]["within_one_accuracy"] == 1.0
    bad = write_json(tmp_path / "bad.json", [{"question": "How many?", "answer": "many", "image": "a.jpg"}])
    with pytest.raises(ValueError, match="non-negative integer"):
        load_counting(bad)


def test_region_classification_reads_osprey_files(tmp_path):
    path = write_json(tmp_path / "paco_val_1k_category.json", [
        {"id": 7, "file_name": "000000000007.jpg", "height": 100, "width": 100,
         "categories": ["dog:leg", "hot_dog"], "annotations": [{"bbox": [1, 2, 3, 4], "segmentation": []},
                                                               {"bbox": [10, 10, 5, 5], "segmentation": []}]},
    ])
    dataset = load_region_classification(path, "coco", task="paco")
    assert [item.id for item in dataset.items] == ["7-0", "7-1"]
    assert dataset.items[0].regions == [[1.0, 2.0, 4.0, 6.0]]
    assert prompts.region_token(0) in dataset.items[0].prompt
    assert dataset.items[1].target == {"category": "hot_dog"}
    predictions = write_jsonl(tmp_path / "pred.jsonl", [{"id": "7-0", "answer": "Dog leg."}, {"id": "7-1", "answer": "hot dog"}])
    report = score_files("paco", path, predictions)
    assert report["metrics"]["semantic_iou"] == 1.0
    assert report["metrics"]["semantic_similarity"] == pytest.approx(1.0, abs=1e-5)


def test_cocotext_keeps_legible_transcribed_text_of_the_split(tmp_path):
    path = write_json(tmp_path / "cocotext.v2.json", {
        "imgs": {"1": {"id": 1, "file_name": "COCO_train2014_000000000001.jpg", "set": "val"},
                 "2": {"id": 2, "file_name": "COCO_train2014_000000000002.jpg", "set": "train"}},
        "anns": {
            "11": {"id": 11, "image_id": 1, "bbox": [0, 0, 20, 10], "utf8_string": "STOP", "legibility": "legible"},
            "12": {"id": 12, "image_id": 1, "bbox": [0, 0, 5, 5], "legibility": "illegible"},
            "13": {"id": 13, "image_id": 2, "bbox": [0, 0, 5, 5], "utf8_string": "EXIT", "legibility": "legible"},
            "14": {"id": 14, "image_id": 1, "bbox": [30, 0, 20, 10], "utf8_string": "Cafe", "legibility": "legible"},
        },
    })
    dataset = load_cocotext(path, "train2014")
    assert [item.id for item in dataset.items] == ["11", "14"]
    assert dataset.items[0].prompt == prompts.ocr_prompt([0])
    assert dataset.items[0].regions == [[0.0, 0.0, 20.0, 10.0]]
    predictions = write_jsonl(tmp_path / "pred.jsonl", [{"id": "11", "answer": "stop"}, {"id": "14", "answer": "Cafe!"}])
    report = score_files("cocotext", path, predictions)
    assert report["metrics"]["accuracy"] == 0.5 and report["metrics"]["distance1_accuracy"] == 1.0
    with pytest.raises(ValueError, match="no split 'test'"):
        load_cocotext(path, split="test")


# ---- upstream proposal files ---------------------------------------------------------------------


def test_upstream_proposal_jsonl_attaches_to_coco_items(tmp_path):
    dataset = load_coco_detection(coco_file(tmp_path))
    proposal_file = write_jsonl(tmp_path / "cocoVal2017_with_upn_score_0.3_0.8.jsonl", [
        {"id": 139, "image": "000000000139.jpg", "bbox_list": [[10, 10, 110, 60]], "score_list": [0.95],
         "conversations": [{"from": "human", "value": "<image>\nPlease detect person in the image."}]},
        {"id": 285, "image": "000000000285.jpg", "bbox_list": [], "score_list": []},
    ])
    entries = load_proposal_file(proposal_file)
    assert entries["139"].prompt == "Please detect person in the image."
    limited = attach_proposals(dataset.limit(2), entries)
    assert limited.items[0].proposals == [[10.0, 10.0, 110.0, 60.0]] and limited.items[0].proposal_scores == [0.95]
    assert limited.items[1].proposals == []
    with pytest.raises(ValueError, match="1 of 3 items have no proposals"):
        attach_proposals(dataset, entries)


# ---- prediction files and the CLI ----------------------------------------------------------------


def test_appended_records_read_back_keyed_by_id(tmp_path):
    path = tmp_path / "pred.jsonl"
    append_prediction_record(path, {"id": "a", "answer": "2"})
    append_prediction_record(path, {"id": 7, "answer": "Café"})
    assert read_prediction_records(path) == {"a": {"id": "a", "answer": "2"}, "7": {"id": 7, "answer": "Café"}}
    with pytest.raises(ValueError, match="needs an 'id'"):
        append_prediction_record(path, {"answer": "3"})


def test_prediction_files_with_repeated_ids_or_bad_lines_are_errors(tmp_path):
    repeated = write_jsonl(tmp_path / "repeated.jsonl", [{"id": "1", "answer": "2"}, {"id": 1, "answer": "3"}])
    with pytest.raises(ValueError, match="occurs twice"):
        read_prediction_records(repeated)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"id": "1", "answer": "2"}\n{"id": "2", \n', encoding="utf-8")
    with pytest.raises(ValueError, match="broken.jsonl:2"):
        read_prediction_records(broken)


def cli():
    app = typer.Typer()
    evaluate_cli.register(app)
    return app


def test_cli_score_prints_a_table_and_writes_the_metrics(tmp_path):
    results = write_json(tmp_path / "results.json", [
        {"image_id": 139, "category_id": 1, "bbox": [10, 10, 100, 50], "score": 0.9},
        {"image_id": 285, "category_id": 18, "bbox": [0, 0, 500, 600], "score": 0.8},
    ])
    out = tmp_path / "out" / "metrics.json"
    outcome = CliRunner().invoke(cli(), ["eval", "score", "coco", "--gt", str(coco_file(tmp_path)),
                                         "--pred", str(results), "--out", str(out)])
    assert outcome.exit_code == 0, outcome.output
    assert "AP50" in outcome.output and "75.25" in outcome.output  # (1 + 51/101) / 2, as a percentage
    assert json.loads(out.read_text())["metrics"]["AP"] == pytest.approx((1 + 51 / 101) / 2)


def test_cli_score_warns_about_missing_predictions_and_fails_cleanly_on_bad_input(tmp_path):
    gt = write_json(tmp_path / "count.json", [{"label": "cups", "count": 2, "image": "a.jpg"},
                                              {"label": "cats", "count": 1, "image": "b.jpg"}])
    predictions = write_jsonl(tmp_path / "pred.jsonl", [{"id": "0", "answer": "2"}])
    outcome = CliRunner().invoke(cli(), ["eval", "score", "counting", "--gt", str(gt), "--pred", str(predictions), "--json"])
    assert outcome.exit_code == 0, outcome.output
    assert "1 of 2 items have no prediction" in outcome.output
    outcome = CliRunner().invoke(cli(), ["eval", "score", "nonsense", "--gt", str(gt), "--pred", str(predictions)])
    assert outcome.exit_code == 2 and "unknown evaluation task" in outcome.output
