"""User boxes: lists, JSON, COCO files and upstream's proposal JSONL (vlmfo1.proposals.user_boxes, io)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from vlmfo1.proposals import Proposals, build_proposer, read_proposals, write_proposals
from vlmfo1.proposals.user_boxes import UserBoxesProposer


@pytest.fixture
def image_dir(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for name, size in [("a.jpg", (100, 50)), ("b.png", (60, 60)), ("000000000042.jpg", (80, 80))]:
        Image.new("RGB", size, (120, 30, 200)).save(folder / name)
    return folder


def test_plain_list_applies_to_every_image(image_dir):
    proposer = UserBoxesProposer([[10, 10, 30, 30], [0, 0, 200, 200], [5, 5, 5, 9]])
    out = proposer(image_dir / "a.jpg")
    # Clipped to the 100x50 image; the zero-width box is dropped; given order kept (equal scores).
    assert out.boxes.tolist() == [[10, 10, 30, 30], [0, 0, 100, 50]]
    assert out.scores.tolist() == [1.0, 1.0]
    assert len(proposer(image_dir / "b.png")) == 2


def test_xywh_format_and_numpy_input(image_dir):
    proposer = UserBoxesProposer(np.array([[10, 5, 20, 10]], dtype=np.float64), box_format="xywh")
    assert proposer(image_dir / "a.jpg").boxes.tolist() == [[10, 5, 30, 15]]
    with pytest.raises(ValueError, match="box_format"):
        UserBoxesProposer([[0, 0, 1, 1]], box_format="cxcywh")


def test_user_boxes_are_not_suppressed_by_default(image_dir):
    overlapping = [[0, 0, 40, 40], [1, 1, 41, 41]]
    assert len(UserBoxesProposer(overlapping)(image_dir / "a.jpg")) == 2
    assert len(build_proposer("user:" + _write_json(image_dir.parent / "o.json", overlapping), postprocess={"nms_iou": 0.5})(image_dir / "a.jpg")) == 1


def _write_json(path, data):
    path.write_text(json.dumps(data))
    return str(path)


def test_json_dict_per_image_with_scores_and_labels(image_dir, tmp_path):
    data = {
        "a.jpg": {"boxes": [[0, 0, 10, 10], [20, 20, 40, 40]], "scores": [0.2, 0.7], "labels": ["x", "y"]},
        "b.png": [[1, 1, 5, 5]],
    }
    proposer = build_proposer("user:" + _write_json(tmp_path / "boxes.json", data))
    a = proposer(image_dir / "a.jpg")
    assert a.labels == ["y", "x"] and a.scores.tolist() == pytest.approx([0.7, 0.2])
    assert proposer(image_dir / "b.png").boxes.tolist() == [[1, 1, 5, 5]]
    with pytest.raises(KeyError, match="no user boxes for image"):
        proposer(image_dir / "000000000042.jpg")
    lenient = UserBoxesProposer(data, missing="empty")
    assert len(lenient(image_dir / "000000000042.jpg")) == 0


def test_lookup_by_relative_path_and_ambiguous_names(tmp_path):
    proposer = UserBoxesProposer({"train/a.jpg": [[0, 0, 5, 5]], "val/a.jpg": [[0, 0, 9, 9]]})
    assert proposer.lookup("train/a.jpg").boxes.tolist() == [[0, 0, 5, 5]]
    assert proposer.lookup("./val/a.jpg").boxes.tolist() == [[0, 0, 9, 9]]
    with pytest.raises(ValueError, match="several user-box entries"):
        proposer.lookup("/data/a.jpg")
    with pytest.raises(ValueError, match="image_id"):
        proposer.lookup(None)


def test_coco_dataset_file(image_dir, tmp_path):
    coco = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 50}, {"id": 2, "file_name": "b.png", "width": 60, "height": 60}],
        "annotations": [
            {"id": 1, "image_id": 1, "bbox": [10, 10, 20, 5], "category_id": 3},
            {"id": 2, "image_id": 1, "bbox": [50, 0, 10, 10], "category_id": 4},
        ],
        "categories": [{"id": 3, "name": "cat"}, {"id": 4, "name": "dog"}],
    }
    proposer = build_proposer("user:" + _write_json(tmp_path / "coco.json", coco))
    a = proposer(image_dir / "a.jpg")
    assert a.boxes.tolist() == [[10, 10, 30, 15], [50, 0, 60, 10]] and a.labels == ["cat", "dog"]
    assert len(proposer(image_dir / "b.png")) == 0  # listed image without annotations
    coco["annotations"].append({"id": 3, "image_id": 9, "bbox": [0, 0, 1, 1], "category_id": 3})
    with pytest.raises(ValueError, match="unknown image_id 9"):
        UserBoxesProposer(coco)


def test_coco_results_file_matches_numeric_file_names(image_dir, tmp_path):
    results = [
        {"image_id": 42, "bbox": [0, 0, 10, 20], "score": 0.3, "category_id": 1},
        {"image_id": 42, "bbox": [30, 30, 10, 10], "score": 0.9, "category_id": 1},
    ]
    proposer = build_proposer("user:" + _write_json(tmp_path / "results.json", results))
    out = proposer(image_dir / "000000000042.jpg")
    assert out.boxes.tolist() == [[30, 30, 40, 40], [0, 0, 10, 20]]
    assert out.scores.tolist() == pytest.approx([0.9, 0.3])


def test_upstream_jsonl_round_trip(image_dir, tmp_path):
    items = [("a.jpg", Proposals([[1, 2, 30, 40]], [0.5])), ("b.png", Proposals([[0, 0, 10, 10], [5, 5, 50, 50]], [0.9, 0.4]))]
    path = tmp_path / "proposals.jsonl"
    assert write_proposals(path, items) == 2
    first = json.loads(path.read_text().splitlines()[0])
    assert first == {"image": "a.jpg", "bbox_list": [[1.0, 2.0, 30.0, 40.0]], "score_list": [0.5]}
    back = read_proposals(path)
    assert list(back) == ["a.jpg", "b.png"] and back["b.png"].scores.tolist() == pytest.approx([0.9, 0.4])
    proposer = build_proposer(f"user:{path}")
    assert proposer(image_dir / "b.png").boxes.tolist() == [[0, 0, 10, 10], [5, 5, 50, 50]]


def test_bad_files_fail_with_location(tmp_path):
    bad_line = tmp_path / "bad.jsonl"
    bad_line.write_text('{"image": "a.jpg", "bbox_list": [[0,0,1,1]]}\n{oops\n')
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        read_proposals(bad_line)
    duplicate = tmp_path / "dup.jsonl"
    duplicate.write_text('{"image": "a.jpg", "bbox_list": []}\n{"image": "a.jpg", "bbox_list": []}\n')
    with pytest.raises(ValueError, match="more than once"):
        read_proposals(duplicate)
    with pytest.raises(ValueError, match="boxes must be"):
        UserBoxesProposer({"a.jpg": [[0, 0, 1]]})
    with pytest.raises(FileNotFoundError):
        build_proposer(f"user:{tmp_path / 'missing.json'}")
    with pytest.raises(ValueError, match="needs a file"):
        build_proposer("user")
