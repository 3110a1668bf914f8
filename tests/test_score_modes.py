"""benchmarks/score_modes.py: the same detections scored by proposal, LLM and combined scores."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from pipeline_support import make_processor, save_model, scripted_model
from vlmfo1.data.shapeworld import ShapeWorldConfig, write_dataset
from vlmfo1.evaluation.adapters.shapeworld import load_shapeworld
from vlmfo1.pipeline.results import Region

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def score_modes():
    spec = importlib.util.spec_from_file_location("score_modes_benchmark", REPO / "benchmarks" / "score_modes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def shapeworld(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("shapeworld")
    config = ShapeWorldConfig.train(objects_per_image=(2, 4), image_size=(96, 96), task_counts={"detect_everything": 1})
    write_dataset(folder, n=3, seed=0, split="val", config=config, coordinates=False)
    return folder


def test_each_mode_ranks_the_same_detections_by_its_own_score(score_modes, shapeworld):
    """Every true object named with a low proposal score and a high LLM score, and a false box of
    the same label with the opposite scores: only the proposal ranking puts the false boxes first."""
    dataset = load_shapeworld(shapeworld, split="val", tasks=("detect_everything",))
    coco = json.loads((shapeworld / "val.coco.json").read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    regions = {}
    for item in dataset.items:
        objects = [a for a in coco["annotations"] if a["image_id"] == item.target["meta"]["scene_index"]]
        true = [Region(k, [a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]],
                       names[a["category_id"]], 0.0, proposal_score=0.2, llm_score=0.9) for k, a in enumerate(objects)]
        false = [Region(len(objects) + k, [0.0, 0.0, 1.0, 1.0], region.label, 0.0, proposal_score=0.9, llm_score=0.05)
                 for k, region in enumerate(true)]
        regions[item.id] = true + false
    table = score_modes.mode_maps(dataset.items, regions, coco)
    assert list(table) == ["proposal", "llm", "combined"]
    assert {row["detections"] for row in table.values()} == {sum(len(r) for r in regions.values())}
    assert table["llm"]["AP"] == pytest.approx(1.0) and table["combined"]["AP"] == pytest.approx(1.0)
    assert table["proposal"]["AP"] < 0.9


@pytest.mark.parametrize("label, counted", [("circle", (6, 0)), ("red circle", (0, 6))])
def test_end_to_end_with_a_scripted_model(score_modes, shapeworld, tmp_path, capsys, label, counted):
    """The scripted model names regions 1 and 3 under `label` in every answer, region 1 with an LLM
    probability of about 0.88: each mode scores exactly those detections, and regions under a
    label that is no ShapeWorld category are counted, not scored."""
    processor = make_processor()
    answer = f"<ground>{label}</ground><objects><region1><region3></objects>"
    model = scripted_model(processor, answer=answer, region_runner_up={"<region1>": 2.0})
    model_dir = save_model(model, processor, tmp_path / "model")
    report = score_modes.main(["--model", str(model_dir), "--data", str(shapeworld), "--split", "val",
                               "--json", str(tmp_path / "modes.json")])
    assert json.loads((tmp_path / "modes.json").read_text()) == report
    assert report["images"] == 3
    rows = report["modes"]
    assert list(rows) == ["proposal", "llm", "combined"]
    assert {(row["detections"], row["unknown_label_regions"]) for row in rows.values()} == {counted}
    assert all(0.0 <= row["AP"] <= 1.0 for row in rows.values())
    printed = capsys.readouterr().out
    assert all(f"| {mode} |" in printed for mode in rows)
