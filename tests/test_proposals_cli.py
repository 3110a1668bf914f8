"""`vlmfo1 propose` and the OpenCV install check."""
from __future__ import annotations

import json
import os

import pytest
from typer.testing import CliRunner

from vlmfo1.cli.main import app, build_app
from vlmfo1.proposals import read_proposals
from vlmfo1.proposals.scenes import make_scene, recall

runner = CliRunner()


@pytest.fixture(scope="module")
def cli():
    build_app()
    return app


@pytest.fixture
def scenes(tmp_path):
    folder = tmp_path / "scenes"
    (folder / "sub").mkdir(parents=True)
    truth = {}
    for seed, name in [(0, "a.png"), (1, "b.jpg"), (2, "sub/c.png")]:
        image, boxes = make_scene(seed, (320, 240))
        image.save(folder / name)
        truth[name] = boxes
    (folder / "notes.txt").write_text("not an image")
    return folder, truth


def test_propose_folder_writes_upstream_records(cli, scenes, tmp_path):
    folder, truth = scenes
    out = tmp_path / "out" / "proposals.jsonl"
    result = runner.invoke(cli, ["propose", str(folder), "--proposer", "contours", "--out", str(out), "--top-k", "50", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "wrote 2 records" in result.output
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["image"] for r in records] == ["a.png", "b.jpg"]
    for record in records:
        assert set(record) == {"image", "bbox_list", "score_list"}
        assert 0 < len(record["bbox_list"]) <= 50 and len(record["score_list"]) == len(record["bbox_list"])
        assert record["score_list"] == sorted(record["score_list"], reverse=True)
        assert recall(truth[record["image"]], record["bbox_list"]) == 1.0
    recursive = runner.invoke(cli, ["propose", str(folder), "-p", "contours", "-o", str(out), "-r", "--no-progress"])
    assert recursive.exit_code == 0 and list(read_proposals(out)) == ["a.png", "b.jpg", "sub/c.png"]


def test_propose_reuses_its_own_output_as_user_boxes(cli, scenes, tmp_path):
    folder, _ = scenes
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    assert runner.invoke(cli, ["propose", str(folder), "-p", "contours", "-o", str(first), "--no-progress"]).exit_code == 0
    result = runner.invoke(cli, ["propose", str(folder), "-p", f"user:{first}", "-o", str(second), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert first.read_text() == second.read_text()


def test_propose_single_image_with_options(cli, scenes, tmp_path):
    folder, _ = scenes
    out = tmp_path / "one.jsonl"
    args = ["propose", str(folder / "a.png"), "-p", "contours", "-o", str(out), "--no-progress",
            "--option", "max_side=160", "--score-threshold", "0.2", "--no-nms", "--min-size", "8"]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert record["image"] == str(folder / "a.png")
    assert all(s >= 0.2 for s in record["score_list"])
    assert all(b[2] - b[0] >= 8 and b[3] - b[1] >= 8 for b in record["bbox_list"])


def test_propose_errors(cli, scenes, tmp_path):
    folder, _ = scenes
    out = str(tmp_path / "x.jsonl")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert runner.invoke(cli, ["propose", str(empty), "-o", out]).exit_code != 0
    unknown = runner.invoke(cli, ["propose", str(folder), "-p", "nope", "-o", out])
    assert unknown.exit_code != 0 and "unknown proposer" in str(unknown.exception)
    both = runner.invoke(cli, ["propose", str(folder), "-p", "contours", "-o", out, "--nms-iou", "0.5", "--no-nms"])
    assert both.exit_code != 0
    prompted = runner.invoke(cli, ["propose", str(folder), "-p", "contours", "-o", out, "--prompt", "cat"])
    assert prompted.exit_code != 0 and "prompts" in str(prompted.exception)
    missing = runner.invoke(cli, ["propose", str(folder), "-p", "user:" + str(tmp_path / "none.json"), "-o", out])
    assert missing.exit_code != 0


def test_opencv_contrib_is_what_cv2_imports():
    """scripts/install.sh must leave a cv2 with ximgproc even though rapidocr pulls plain opencv."""
    try:
        import cv2
    except ImportError:
        if os.environ.get("CI"):
            raise
        pytest.skip("OpenCV is not installed (extra: proposals)")
    assert hasattr(cv2, "ximgproc"), "plain opencv shadows opencv-contrib: see docs/proposals.md, install notes"
    cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
