"""`vlmfo1 detect/count/refer/caption/ocr/ask/demo` end to end on fresh ShapeWorld images, with a
scripted tiny model saved to disk (it answers "red circle: regions 1 and 3" to any prompt)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from pipeline_support import ANSWER, make_processor, random_boxes, save_model, scripted_model
from vlmfo1.cli import infer
from vlmfo1.data.shapeworld import ShapeWorldConfig, generate_example, generate_scene
from vlmfo1.pipeline.results import RESULT_JSON_SCHEMA

SIZE = (320, 240)  # not the processor's working size: boxes must come back in these pixels


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    processor = make_processor()
    return save_model(scripted_model(processor), processor, tmp_path_factory.mktemp("scripted-model"))


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    app = typer.Typer()
    infer.register(app)
    return app


def shapeworld_image(folder: Path, index: int, name: str | None = None) -> Path:
    scene = generate_scene(ShapeWorldConfig.train(image_size=SIZE), index=index, seed=11, split="cli-test")
    path = folder / (name or f"scene{index}.png")
    scene.image.save(path)
    return path


def invoke(app, *args):
    return CliRunner().invoke(app, [str(a) for a in args])


def load_result(path: Path) -> dict:
    data = json.loads(path.read_text())
    jsonschema.validate(data, RESULT_JSON_SCHEMA)
    return data


def test_detect_writes_a_valid_json_and_picture_with_boxes_in_original_pixels(app, model_dir, tmp_path):
    image = shapeworld_image(tmp_path, 0)
    boxes = random_boxes(5, *SIZE, seed=0)
    (tmp_path / "boxes.json").write_text(json.dumps(boxes))
    out = tmp_path / "out"
    outcome = invoke(app, "detect", image, "red circle, blue star", "--model", model_dir, "--boxes", tmp_path / "boxes.json",
                     "--out", out, "--max-new-tokens", 16)
    assert outcome.exit_code == 0, outcome.output
    data = load_result(out / "scene0.json")
    assert data["task"] == "detect" and data["image_size"] == list(SIZE)
    assert data["raw_answers"] == [ANSWER]
    assert [d["box"] for d in data["detections"]] == [pytest.approx(boxes[1], abs=1e-3), pytest.approx(boxes[3], abs=1e-3)]
    assert data["proposals"]["source"] == "user"
    np.testing.assert_allclose(data["proposals"]["boxes"], boxes, atol=1e-3)
    picture = Image.open(out / "scene0.png")
    assert picture.width == 640 and picture.height > 480  # enlarged x2, answer written below
    assert "red circle x2" in outcome.output


def test_folder_with_progress_keeps_going_past_a_bad_image(app, model_dir, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for k in range(3):
        shapeworld_image(images, k)
    (images / "broken.png").write_bytes(b"not an image")
    boxes = {f"scene{k}.png": random_boxes(4, *SIZE, seed=k) for k in range(4)}
    boxes["broken.png"] = boxes.pop("scene3.png")
    shapeworld_image(images, 4, name="no_boxes.png")
    (tmp_path / "boxes.json").write_text(json.dumps(boxes))
    out = tmp_path / "out"
    outcome = invoke(app, "count", images, "red circles", "--model", model_dir, "--boxes", tmp_path / "boxes.json",
                     "--out", out, "--batch-size", 2, "--max-new-tokens", 16)
    assert outcome.exit_code == 1
    assert "broken.png" in outcome.output and "holds no boxes for no_boxes.png" in outcome.output
    for k in range(3):
        data = load_result(out / f"scene{k}.json")
        assert data["task"] == "count" and data["count"] is None  # the scripted answer holds no number
        assert [d["box"] for d in data["detections"]] == [pytest.approx(boxes[f"scene{k}.png"][i], abs=1e-3) for i in (1, 3)]
        assert (out / f"scene{k}.png").is_file()
    assert not (out / "broken.json").exists() and not (out / "no_boxes.json").exists()


def test_boxes_file_keeps_its_order_and_every_box(app, model_dir, tmp_path):
    """A detector's proposals are sorted and cut to the top 100; your own boxes are neither."""
    image = shapeworld_image(tmp_path, 3)
    boxes = random_boxes(150, *SIZE, seed=3)
    scores = [0.1 + k / 200 for k in range(150)]  # ascending: sorting by score would reverse them
    (tmp_path / "boxes.json").write_text(json.dumps({"bbox_list": boxes, "score_list": scores}))
    out = tmp_path / "out"
    outcome = invoke(app, "detect", image, "red circle", "--model", model_dir, "--boxes", tmp_path / "boxes.json",
                     "--out", out, "--max-new-tokens", 16)
    assert outcome.exit_code == 0, outcome.output
    data = load_result(out / "scene3.json")
    np.testing.assert_allclose(data["proposals"]["boxes"], boxes, atol=1e-3)
    assert data["num_chunks"] == 2
    assert [d["index"] for d in data["detections"]][:2] == [1, 3]


@pytest.mark.parametrize(
    "command, args, task",
    [
        ("refer", ["the red circle", "--dtype", "bfloat16"], "refer"),
        ("caption", [], "caption"),
        ("ocr", [], "ocr"),
        ("ask", ["What is in <region0>?"], "ask"),
    ],
)
def test_other_commands(app, model_dir, tmp_path, command, args, task):
    image = shapeworld_image(tmp_path, 5)
    boxes = random_boxes(3, *SIZE, seed=5)
    (tmp_path / "boxes.json").write_text(json.dumps(boxes))
    out = tmp_path / "out"
    outcome = invoke(app, command, image, *args, "--model", model_dir, "--boxes", tmp_path / "boxes.json", "--out", out,
                     "--max-new-tokens", 16, "--score", "combined")
    assert outcome.exit_code == 0, outcome.output
    data = load_result(out / "scene5.json")
    assert data["task"] == task and data["score_mode"] == "combined"
    if task in ("caption", "ocr"):
        assert [a["index"] for a in data["region_answers"]] == [0, 1, 2]
    assert (out / "scene5.png").is_file()


def test_default_proposer_finds_regions_in_a_shapeworld_image(app, model_dir, tmp_path):
    pytest.importorskip("cv2")
    image = shapeworld_image(tmp_path, 2)
    out = tmp_path / "out"
    outcome = invoke(app, "detect", image, "red circle", "--model", model_dir, "--out", out, "--max-new-tokens", 16,
                     "--show-proposals")
    assert outcome.exit_code == 0, outcome.output
    data = load_result(out / "scene2.json")
    proposals = data["proposals"]
    assert proposals["source"] == "selective-search" and 4 <= len(proposals["boxes"]) <= 100
    for x1, y1, x2, y2 in proposals["boxes"]:
        assert 0 <= x1 < x2 <= SIZE[0] and 0 <= y1 < y2 <= SIZE[1]
    assert [d["index"] for d in data["detections"]] == [1, 3]


def test_demo_writes_the_scene_and_pictures(app, model_dir, tmp_path):
    pytest.importorskip("cv2")
    out = tmp_path / "demo"
    outcome = invoke(app, "demo", "--model", model_dir, "--out", out, "--proposer", "contours", "--max-new-tokens", 16)
    assert outcome.exit_code == 0, outcome.output
    assert Image.open(out / "scene.png").size == (256, 256)
    for task in ("detect", "count", "grounded_caption", "detect_everything", "caption"):
        data = load_result(out / f"{task}.json")
        assert data["task"] == task
        assert Image.open(out / f"{task}.png").width == 768  # 256 enlarged x3
    detect = load_result(out / "detect.json")
    assert len(detect["queries"]) == 1 and detect["queries"][0].startswith("Please detect ")


def test_demo_asks_about_the_scenes_own_proposals_by_default(app, model_dir, tmp_path):
    """A model trained on ShapeWorld's proposal lists (objects and a few background boxes) is shown the
    same kind of list, not a hundred selective-search boxes; the list is saved in the --boxes format."""
    out = tmp_path / "demo"
    outcome = invoke(app, "demo", "--model", model_dir, "--out", out, "--index", 3, "--max-new-tokens", 8)
    assert outcome.exit_code == 0, outcome.output
    example = generate_example(ShapeWorldConfig.heldout(), index=3, seed=0, split="demo")
    saved = json.loads((out / "scene.boxes.json").read_text())
    assert saved == {"bbox_list": example.proposals.boxes, "score_list": example.proposals.scores}
    assert len(example.proposals) > len(example.scene.objects)  # background boxes too, not the answers
    for task in ("detect", "count", "grounded_caption", "detect_everything"):
        proposals = load_result(out / f"{task}.json")["proposals"]
        assert proposals["boxes"] == [[float(v) for v in box] for box in example.proposals.boxes]
        assert proposals["scores"] == pytest.approx(example.proposals.scores)
    assert f"its {len(example.proposals)} proposals in scene.boxes.json" in outcome.output
    # Ran again on the saved list, detect sees the same regions.
    again = invoke(app, "detect", out / "scene.png", "red circle", "--model", model_dir, "--boxes",
                   out / "scene.boxes.json", "--out", tmp_path / "again", "--max-new-tokens", 8)
    assert again.exit_code == 0, again.output
    assert load_result(tmp_path / "again" / "scene.json")["proposals"]["boxes"] == load_result(out / "detect.json")["proposals"]["boxes"]


def test_demo_scenes_come_from_the_models_own_world(app, model_dir, tmp_path):
    pytest.importorskip("cv2")
    import shutil

    model = tmp_path / "model"
    shutil.copytree(model_dir, model)
    (model / "recipe.json").write_text(json.dumps({"recipe": {"scene_overrides": {"objects_per_image": [1, 1]}}}))
    outcome = invoke(app, "demo", "--model", model, "--out", tmp_path / "demo", "--proposer", "contours",
                     "--max-new-tokens", 4)
    assert outcome.exit_code == 0, outcome.output
    assert "(1 objects;" in outcome.output  # the heldout preset asks for 8-40
    (model / "recipe.json").unlink()
    outcome = invoke(app, "demo", "--model", model, "--out", tmp_path / "demo2", "--proposer", "contours",
                     "--max-new-tokens", 4)
    assert outcome.exit_code == 0 and "(1 objects;" not in outcome.output


def test_clear_errors(app, model_dir, tmp_path):
    image = shapeworld_image(tmp_path, 1)
    missing_model = invoke(app, "detect", image, "red circle", "--model", tmp_path / "nowhere")
    assert missing_model.exit_code == 2 and "no model at" in missing_model.output
    missing_image = invoke(app, "detect", tmp_path / "nothing.png", "red circle", "--model", model_dir)
    assert missing_image.exit_code == 2 and "image not found" in missing_image.output
    missing_boxes = invoke(app, "detect", image, "red circle", "--model", model_dir, "--boxes", tmp_path / "none.json")
    assert missing_boxes.exit_code == 2 and "boxes file not found" in missing_boxes.output
    bad_score = invoke(app, "detect", image, "red circle", "--model", model_dir, "--score", "best")
    assert bad_score.exit_code == 2 and "unknown score mode" in bad_score.output
    bad_dtype = invoke(app, "detect", image, "red circle", "--model", model_dir, "--dtype", "int8")
    assert bad_dtype.exit_code == 2 and "unknown dtype" in bad_dtype.output


def test_cli_import_does_not_load_torch():
    code = (
        "import sys, typer; from vlmfo1.cli import infer; infer.register(typer.Typer()); "
        "print('torch' in sys.modules, 'transformers' in sys.modules)"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.split() == ["False", "False"]
