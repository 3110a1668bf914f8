"""The evaluation runner (`vlmfo1.evaluation.runner`, `vlmfo1 eval TASK`) end to end with tiny models.

A random tiny model checks the plumbing (files, resume, torn lines, limits); a scripted tiny model,
which answers "red circle: regions 1 and 3" to any prompt, checks exact scoring, score modes and
how malformed answers are recorded.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from pipeline_support import make_processor, random_boxes, random_model, save_model, scripted_model
from vlmfo1.cli import evaluate
from vlmfo1.data.shapeworld import ShapeWorldConfig, generate_scene, write_dataset
from vlmfo1.evaluation import get_task
from vlmfo1.evaluation.runner import run_evaluation
from vlmfo1.pipeline import FO1Pipeline
from vlmfo1.pipeline.generation import FO1Generator
from vlmfo1.proposals import build_proposer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SHAPEWORLD_TASKS = {"detection": 1, "counting": 1, "rec": 1, "detect_everything": 1, "image_qa": 1}
SIZE = (320, 240)
RUNNER_UP_GAP = 2.0  # the scripted model emits <region1> with probability ~ 1 / (1 + e^-2)


@pytest.fixture(scope="module")
def processor():
    return make_processor()


@pytest.fixture(scope="module")
def random_pipeline(processor):
    return FO1Pipeline(random_model(processor), processor, proposer=None)


@pytest.fixture(scope="module")
def scripted_pipeline(processor):
    return FO1Pipeline(scripted_model(processor, region_runner_up={"<region1>": RUNNER_UP_GAP}), processor, proposer=None)


@pytest.fixture(scope="module")
def scripted_dir(processor, tmp_path_factory):
    return save_model(scripted_model(processor), processor, tmp_path_factory.mktemp("scripted"))


@pytest.fixture(scope="module")
def shapeworld(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("shapeworld")
    config = ShapeWorldConfig.train(objects_per_image=(2, 4), image_size=(96, 96), task_counts=SHAPEWORLD_TASKS)
    write_dataset(folder, n=2, seed=0, split="val", config=config, coordinates=False)
    return folder


@pytest.fixture
def calls(monkeypatch) -> list[int]:
    """The number of prompts each `FO1Generator.generate` call answered."""
    counted: list[int] = []
    original = FO1Generator.generate

    def counting(self, model_calls):
        counted.append(len(model_calls))
        return original(self, model_calls)

    monkeypatch.setattr(FO1Generator, "generate", counting)
    return counted


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def coco_images(folder: Path, count: int = 2) -> list[Path]:
    paths = []
    for index in range(count):
        scene = generate_scene(ShapeWorldConfig.train(image_size=SIZE), index=index, seed=11, split="runner-test")
        paths.append(folder / f"scene{index}.png")
        scene.image.save(paths[-1])
    return paths


def write_coco(path: Path, images: list[Path], red_circles: list[list[list[float]]]) -> Path:
    """A COCO file whose 'red circle' objects are the given xyxy boxes; 'blue star' has none."""
    annotations = []
    for image_id, boxes in enumerate(red_circles, start=1):
        for x1, y1, x2, y2 in boxes:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": 1,
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    path.write_text(json.dumps({
        "images": [{"id": k, "file_name": p.name, "width": SIZE[0], "height": SIZE[1]} for k, p in enumerate(images, start=1)],
        "annotations": annotations,
        "categories": [{"id": 1, "name": "red circle"}, {"id": 2, "name": "blue star"}],
    }))
    return path


def cli_app() -> typer.Typer:
    app = typer.Typer()
    evaluate.register(app)
    return app


def invoke(*args):
    return CliRunner().invoke(cli_app(), [str(a) for a in args])


# -- plumbing with a random model ----------------------------------------------------------------
def test_a_run_writes_one_prediction_per_item_and_the_metrics(random_pipeline, shapeworld, tmp_path):
    dataset = get_task("shapeworld").load(shapeworld, None, "val")
    report = run_evaluation("shapeworld", shapeworld, random_pipeline, split="val", out_dir=tmp_path,
                            max_new_tokens=8, progress=False)
    records = read_lines(tmp_path / "predictions.jsonl")
    assert [r["id"] for r in records] == [item.id for item in dataset.items]
    assert all(isinstance(r["answer"], str) and isinstance(r["warnings"], list) for r in records)
    assert [r["num_regions"] for r in records] == [len(item.proposals) for item in dataset.items]
    tasks = {item.target["task"] for item in dataset.items}
    assert {"detection", "counting", "rec", "detect_everything", "image_qa"} <= tasks
    assert {key.split(".")[0] for key in report["metrics"] if "." in key} == tasks
    assert report["num_items"] == len(dataset) and report["num_missing"] == 0
    assert report["score_mode"] == "proposal"
    assert report["run"]["num_predicted"] == len(dataset) and report["run"]["num_resumed"] == 0
    # Random answers of 8 tokens are cut off; each is counted, not dropped.
    assert report["answers"]["num_cut_off"] == sum(any("cut off at max_new_tokens=8" in w for w in r["warnings"]) for r in records) > 0
    assert json.loads((tmp_path / "metrics.json").read_text()) == report
    assert json.loads((tmp_path / "run.json").read_text())["task"] == "shapeworld"


def test_resume_skips_done_items_and_redoes_a_torn_last_line(random_pipeline, shapeworld, tmp_path, calls):
    total = len(get_task("shapeworld").load(shapeworld, None, "val"))
    run = dict(split="val", out_dir=tmp_path, max_new_tokens=6, progress=False, log=lambda message: None)
    run_evaluation("shapeworld", shapeworld, random_pipeline, limit=3, **run)
    assert sum(calls) == 3
    report = run_evaluation("shapeworld", shapeworld, random_pipeline, **run)
    assert sum(calls) == total
    assert report["run"]["num_resumed"] == 3 and report["run"]["num_predicted"] == total - 3
    path = tmp_path / "predictions.jsonl"
    records = read_lines(path)
    assert len(records) == total == len({r["id"] for r in records})

    # Killed while writing the last record: the line is cut off and that item alone is redone.
    content = path.read_bytes()
    path.write_bytes(content[:-12])
    report = run_evaluation("shapeworld", shapeworld, random_pipeline, **run)
    assert sum(calls) == total + 1
    assert [r["id"] for r in read_lines(path)] == [r["id"] for r in records]
    assert report["num_missing"] == 0 and report["run"]["num_resumed"] == total - 1

    # Finished: nothing is asked again.
    run_evaluation("shapeworld", shapeworld, random_pipeline, **run)
    assert sum(calls) == total + 1
    # Other settings never add to these predictions...
    with pytest.raises(ValueError, match="another run.*score_mode"):
        run_evaluation("shapeworld", shapeworld, random_pipeline, score_mode="llm", **run)
    # ...unless the run starts afresh.
    report = run_evaluation("shapeworld", shapeworld, random_pipeline, score_mode="llm", resume=False, **run)
    assert sum(calls) == 2 * total + 1 and report["score_mode"] == "llm" and len(read_lines(path)) == total


def test_a_malformed_line_before_the_last_is_an_error_naming_it(random_pipeline, shapeworld, tmp_path):
    run = dict(split="val", out_dir=tmp_path, max_new_tokens=4, progress=False, limit=2)
    run_evaluation("shapeworld", shapeworld, random_pipeline, **run)
    path = tmp_path / "predictions.jsonl"
    lines = path.read_text().splitlines()
    path.write_text(lines[0][:-5] + "\n" + lines[1] + "\n")
    with pytest.raises(ValueError, match=r"predictions.jsonl:1: not valid JSON"):
        run_evaluation("shapeworld", shapeworld, random_pipeline, **run)


# -- the command line ----------------------------------------------------------------------------
def test_cli_runs_a_task_by_name_and_eval_score_of_its_predictions_gives_the_same_metrics(scripted_dir, shapeworld, tmp_path):
    out = tmp_path / "full"
    outcome = invoke("eval", "shapeworld", "--data", shapeworld, "--split", "val", "--model", scripted_dir,
                     "--out", out, "--max-new-tokens", 24, "--no-progress")
    assert outcome.exit_code == 0, outcome.output
    assert "detection.f1" in outcome.output and "score mode: proposal" in outcome.output
    report = json.loads((out / "metrics.json").read_text())
    scored = invoke("eval", "score", "shapeworld", "--gt", shapeworld, "--split", "val",
                    "--pred", out / "predictions.jsonl", "--json")
    assert scored.exit_code == 0, scored.output
    assert json.loads(scored.stdout)["metrics"] == report["metrics"]

    limited = invoke("eval", "shapeworld", "--data", shapeworld, "--split", "val", "--model", scripted_dir,
                     "--out", tmp_path / "limited", "--limit", 2, "--max-new-tokens", 24, "--no-progress")
    assert limited.exit_code == 0, limited.output
    assert len(read_lines(tmp_path / "limited" / "predictions.jsonl")) == 2
    assert json.loads((tmp_path / "limited" / "metrics.json").read_text())["num_items"] == 2


def test_every_task_alias_has_a_run_command_of_its_task(tmp_path):
    from vlmfo1.evaluation.tasks import ALIASES

    for alias, target in ALIASES.items():
        shown = invoke("eval", alias, "--help")
        assert shown.exit_code == 0 and f"(the {target} task)" in " ".join(shown.output.split()), alias
    outcome = invoke("eval", "refcoco+", "--data", tmp_path / "refs", "--out", tmp_path / "out")
    assert outcome.exit_code == 2 and "refcoco needs a split" in outcome.output


def test_cli_reports_bad_settings_as_errors(scripted_dir, shapeworld, tmp_path):
    outcome = invoke("eval", "shapeworld", "--data", shapeworld, "--split", "val", "--model", tmp_path / "nothing",
                     "--out", tmp_path / "out")
    assert outcome.exit_code == 2 and "no model at" in outcome.output
    outcome = invoke("eval", "shapeworld", "--data", shapeworld, "--split", "val", "--model", scripted_dir,
                     "--out", tmp_path / "out", "--score", "best")
    assert outcome.exit_code == 2 and "unknown score mode" in outcome.output


# -- exact scoring with a scripted model ---------------------------------------------------------
def test_detection_through_a_real_proposer_scores_exactly(scripted_dir, tmp_path):
    """The proposer's 2nd and 4th boxes are made the ground truth: a model answering regions 1 and 3
    finds everything (AP 1), if the runner hands the proposer's boxes to the model in order."""
    images = coco_images(tmp_path)
    proposer = build_proposer("contours")
    proposed = [proposer(path).boxes.tolist() for path in images]
    annotations = write_coco(tmp_path / "instances.json", images, [[boxes[1], boxes[3]] for boxes in proposed])
    out = tmp_path / "out"
    outcome = invoke("eval", "coco", "--data", annotations, "--images", tmp_path, "--model", scripted_dir,
                     "--proposer", "contours", "--out", out, "--max-new-tokens", 24, "--no-progress")
    assert outcome.exit_code == 0, outcome.output
    report = json.loads((out / "metrics.json").read_text())
    assert report["metrics"]["AP"] == pytest.approx(1.0) and report["run"]["proposer"] == "contours"
    results = json.loads((out / "coco_results.json").read_text())
    assert [(r["image_id"], r["category_id"]) for r in results] == [(1, 1), (1, 1), (2, 1), (2, 1)]
    x1, y1, x2, y2 = proposed[0][1]
    assert results[0]["bbox"] == pytest.approx([x1, y1, x2 - x1, y2 - y1])
    for predictions in (out / "coco_results.json", out / "predictions.jsonl"):
        scored = invoke("eval", "score", "coco", "--gt", annotations, "--pred", predictions, "--json")
        assert scored.exit_code == 0, scored.output
        assert json.loads(scored.stdout)["metrics"] == report["metrics"]


@pytest.mark.parametrize("mode", ["proposal", "llm", "combined"])
def test_detection_scores_follow_the_score_mode(scripted_pipeline, tmp_path, mode):
    images = coco_images(tmp_path)
    boxes = [random_boxes(5, *SIZE, seed=k) for k in range(len(images))]
    scores = [0.9, 0.8, 0.7, 0.6, 0.5]
    annotations = write_coco(tmp_path / "instances.json", images, [[b[1], b[3]] for b in boxes])
    (tmp_path / "boxes.json").write_text(json.dumps({p.name: {"boxes": b, "scores": scores} for p, b in zip(images, boxes)}))
    report = run_evaluation("coco", annotations, scripted_pipeline, images=tmp_path, proposer=f"user:{tmp_path / 'boxes.json'}",
                            out_dir=tmp_path / "out", max_new_tokens=24, score_mode=mode, progress=False)
    assert report["score_mode"] == mode
    region1_probability = 1 / (1 + math.exp(-RUNNER_UP_GAP))
    expected = {
        "proposal": [scores[1], scores[3]],
        "llm": [region1_probability, 1.0],
        "combined": [scores[1] * region1_probability, scores[3]],
    }[mode]
    results = json.loads((tmp_path / "out" / "coco_results.json").read_text())
    assert [r["score"] for r in results] == pytest.approx(expected * len(images), abs=2e-3)
    assert report["metrics"]["AP"] == pytest.approx(1.0)


def test_malformed_answers_are_recorded_and_counted(processor, tmp_path):
    answer = "<ground>purple blob</ground><objects><region1><region42></objects>"
    pipeline = FO1Pipeline(scripted_model(processor, answer=answer), processor, proposer=None)
    images = coco_images(tmp_path)
    boxes = [random_boxes(5, *SIZE, seed=k) for k in range(len(images))]
    annotations = write_coco(tmp_path / "instances.json", images, [[b[1]] for b in boxes])
    (tmp_path / "boxes.json").write_text(json.dumps({p.name: b for p, b in zip(images, boxes)}))
    run = dict(images=tmp_path, proposer=f"user:{tmp_path / 'boxes.json'}", progress=False)
    report = run_evaluation("coco", annotations, pipeline, out_dir=tmp_path / "out", max_new_tokens=24, **run)
    records = read_lines(tmp_path / "out" / "predictions.jsonl")
    assert all(r["answer"] == answer and r["unknown_labels"] == ["purple blob"] and r["detections"] == [] for r in records)
    assert all(any("<region42>" in w for w in r["warnings"]) for r in records)
    assert report["answers"]["num_with_warnings"] == 2 and report["answers"]["num_unknown_labels"] == 2
    assert report["metrics"]["AP"] == 0.0

    report = run_evaluation("coco", annotations, pipeline, out_dir=tmp_path / "short", max_new_tokens=3, **run)
    assert report["answers"]["num_cut_off"] == 2


def test_precomputed_proposals_beyond_the_model_capacity_keep_the_highest_scores(scripted_pipeline, tmp_path):
    images = coco_images(tmp_path, count=1)
    boxes = random_boxes(105, *SIZE, seed=3)
    # Proposals 0, 2, 101, 102 and 103 score lowest: the model gets the others in the file's order
    # (not by score: later ones score higher), so its region 1 is proposal 3, its region 3 proposal 5.
    scores = [0.2 + 0.001 * k for k in range(105)]
    for k in (0, 2, 101, 102, 103):
        scores[k] = 0.01
    annotations = write_coco(tmp_path / "instances.json", images, [[boxes[3], boxes[5]]])
    (tmp_path / "upn.jsonl").write_text(json.dumps({"id": 1, "image": images[0].name, "bbox_list": boxes, "score_list": scores}) + "\n")
    report = run_evaluation("coco", annotations, scripted_pipeline, images=tmp_path, proposals=tmp_path / "upn.jsonl",
                            proposer=None, out_dir=tmp_path / "out", max_new_tokens=24, progress=False)
    record = read_lines(tmp_path / "out" / "predictions.jsonl")[0]
    assert record["num_regions"] == 100 and record["proposals_dropped"] == 5
    assert [d["score"] for d in record["detections"]] == pytest.approx([scores[3], scores[5]])
    assert report["answers"]["num_proposals_truncated"] == 1 and report["metrics"]["AP"] == pytest.approx(1.0)


# -- the demo recipe's evaluation runs through the runner -------------------------------------------
def test_evaluate_shapeworld_reports_the_recipe_keys(processor, shapeworld, tmp_path):
    from vlmfo1.training.recipes import evaluate_shapeworld

    model_dir = save_model(random_model(processor), processor, tmp_path / "model")
    report = evaluate_shapeworld(model_dir, shapeworld, "val", tmp_path / "eval", max_new_tokens=6, log=lambda m: None)
    dataset = get_task("shapeworld").load(shapeworld, None, "val")
    asked = [item for item in dataset.items if item.target["task"] in ("detect_everything", "counting", "detection", "rejection", "rec")]
    assert report["num_records"] == len(asked)
    assert report["detection_map"]["images"] == 2 and set(report["detection_map"]) >= {"AP", "AP50", "AP75", "AR100"}
    assert report["counting"]["num_items"] == sum(item.target["task"] == "counting" for item in asked)
    assert set(report["shapeworld"]["per_task"]) == {item.target["task"] for item in asked}
    assert len(read_lines(tmp_path / "eval" / "predictions.jsonl")) == len(asked)
    assert json.loads((tmp_path / "eval" / "val.metrics.json").read_text()) == report
