"""The small tokenizer, the bundled ShapeWorld demo model and its recipe."""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from vlmfo1 import prompts
from vlmfo1.data.shapeworld import SHAPES, generate_example
from vlmfo1.processing.tokenization import fo1_special_tokens
from vlmfo1.training.tiny import QWEN_SPECIAL_TOKENS, first_fo1_token_id, shapeworld_corpus, train_small_tokenizer

DEMO_MODEL = Path(__file__).resolve().parents[1] / "vlmfo1" / "assets" / "shapeworld-fo1"


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """These tests run many small ops. With one thread OpenMP never busy-waits: on a loaded machine
    the overfit test took 143 s with two busy-waiting threads and 19 s with one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_small_tokenizer_round_trips_shapeworld_text_and_keeps_special_tokens_whole():
    tokenizer = train_small_tokenizer(shapeworld_corpus(40), vocab_size=600)
    assert tokenizer.convert_tokens_to_ids(list(QWEN_SPECIAL_TOKENS)) == list(range(7))
    fo1 = fo1_special_tokens()
    ids = tokenizer.convert_tokens_to_ids(fo1)
    assert ids == list(range(first_fo1_token_id(tokenizer), first_fo1_token_id(tokenizer) + len(fo1)))
    unseen = generate_example(index=3, seed=99, split="other")  # scenes the tokenizer never saw
    for record in unseen.fo1_records():
        for turn in record.conversations:
            text = turn["value"]
            assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text
    answer = prompts.format_grounded_answer([("red circle", [2, 17])])
    pieces = tokenizer.convert_ids_to_tokens(tokenizer(answer, add_special_tokens=False)["input_ids"])
    assert pieces[0] == "<ground>" and pieces[-3:] == ["<region2>", "<region17>", "</objects>"]
    assert tokenizer.decode(tokenizer("naïve 東京 ✓", add_special_tokens=False)["input_ids"]) == "naïve 東京 ✓"


@pytest.mark.skipif(not (DEMO_MODEL / "model.safetensors").exists(), reason="the demo model is not built yet")
def test_the_bundled_demo_model_is_small_loads_and_answers_in_the_grammar():
    from vlmfo1.modeling.modeling_fo1 import FO1ForConditionalGeneration
    from vlmfo1.parsing import parse_answer
    from vlmfo1.processing.processing_fo1 import FO1Processor

    size = sum(path.stat().st_size for path in DEMO_MODEL.rglob("*") if path.is_file())
    assert size <= 20 * 2**20
    card = (DEMO_MODEL / "README.md").read_text()
    assert "vlmfo1 train-demo" in card and "mAP" in card and "counting" in card
    model = FO1ForConditionalGeneration.from_pretrained(str(DEMO_MODEL)).eval()
    processor = FO1Processor.from_pretrained(DEMO_MODEL)
    example = generate_example(index=0, seed=4242, split="test")
    record = next(r for r in example.fo1_records() if r.task == "detect_everything")
    inputs = processor(images=example.scene.image, boxes=record.bbox_list, text=record.prompt)
    ids = model.generate(**inputs, max_new_tokens=64, do_sample=False)
    text = processor.decode(ids[0, inputs["input_ids"].shape[1]:]).split("<|im_end|>")[0]
    # The grammar: one or more <ground>label</ground><objects><regionK>...</objects> groups.
    assert re.fullmatch(r"(<ground>[^<>]+</ground><objects>(<region\d+>)+</objects>)+", text), text
    parsed = parse_answer(text, record.bbox_list)
    assert parsed.groups and all(ref.box is not None for group in parsed.groups for ref in group.regions)
    assert {group.label for group in parsed.groups} <= set(SHAPES)  # detect-everything labels are shape names


@pytest.mark.slow
def test_the_demo_recipe_runs_end_to_end_from_the_cli(tmp_path):
    from vlmfo1.cli.main import build_app

    result = CliRunner().invoke(build_app(), ["train-demo", "--out", str(tmp_path), "--quick", "--threads", "1"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "recipe.json").read_text())
    assert set(report["wall_seconds"]) >= {"data", "tokenizer", "language0", "stage0", "alignment", "stage1", "stage2",
                                           "eval", "total"}
    assert set(report["alignment"]) == {"step", "loss", "nearest_label"}
    language = [json.loads(line)["task"] for line in (tmp_path / "data" / "language0.fo1.jsonl").read_text().splitlines()]
    assert language == ["text_repeat"] * 2 + ["text_lookup"] * 2
    checks = report["language_checks"]
    assert set(checks) == {"language0", "stage0"} and set(checks["language0"]) == {"copy", "lookup2", "lookup4", "lookup6"}
    assert report["metrics"]["detection_map"]["images"] == 4 and report["metrics"]["counting"]["num_items"] == 4
    assert (tmp_path / "model" / "model.safetensors").exists() and not (tmp_path / "model" / "checkpoint-2").exists()


def test_a_stage_plan_mixes_in_text_tasks_and_the_trainer_fills_their_slots(tmp_path):
    from vlmfo1.data.records import read_records
    from vlmfo1.training.recipes import DemoRecipe, StagePlan, make_data, stage_config
    from vlmfo1.training.trainer import train

    recipe = DemoRecipe.quick(train_scenes=3, eval_scenes=1, language=(), lookup_describe_share=0.0,
                              scene_overrides={"objects_per_image": [1, 2]},
                              stage0=StagePlan({}, steps=2, learning_rate=1e-3, batch_size=4,
                                               text={"repeat": 3, "slot_lookup": 5, "repeat_random": 2}, lookup_items=3,
                                               lookup_queries=1, lookup_present_share=1.0, lookup_turns=2))
    data = tmp_path / "data"
    make_data(recipe, data, log=lambda _: None)
    stage0 = list(read_records(data / "stage0.fo1.jsonl"))
    assert [r.task for r in stage0] == ["text_repeat"] * 5 + ["text_lookup"] * 5
    assert [r.id.split("-")[0] for r in stage0[:5]] == ["random0"] * 2 + ["repeat0"] * 3
    assert all(2 <= len(r.region_text) <= 3 for r in stage0[5:])
    # Two questions per list, each for one label the list holds.
    assert all(len(r.conversations) == 4 for r in stage0[5:])
    assert all(turn["value"].count("<ground>") == 1 for r in stage0[5:] for turn in r.conversations[1::2])
    for split in ("train", recipe.eval_split):  # the simpler world, for training and held-out scenes alike
        coco = json.loads((data / f"{split}.coco.json").read_text())
        per_image = Counter(a["image_id"] for a in coco["annotations"])
        assert per_image and max(per_image.values()) <= 2
    assert not any(r.task.startswith("text") for r in read_records(data / "stage1.fo1.jsonl"))
    train_small_tokenizer(shapeworld_corpus(20), vocab_size=400).save_pretrained(str(tmp_path / "tokenizer"))
    # 8 of the 10 records are drawn, so at least 3 slot records: a dropped `region_text_ids` would fail.
    result = train(stage_config(recipe, 0, data, tmp_path / "stage0", None))
    assert result.global_step == 2 and all(torch.isfinite(torch.tensor(result.losses)))
    # The recipe's stage 1 keeps the FO1 rows the earlier stages trained, and takes the plan's group rates.
    chain = DemoRecipe.language_first()
    stage1 = stage_config(chain, 1, data, tmp_path / "s1", tmp_path / "stage0")
    assert stage1["stage"]["init_new_token_rows"] is None and stage1["stage"]["train"] == ["region_encoder", "connector"]
    assert stage1["stage"]["learning_rates"] == {"connector": 1e-4}
    assert stage_config(DemoRecipe(), 1, data, tmp_path / "s1", tmp_path / "stage0")["stage"]["init_new_token_rows"] == "mean"
    language = stage_config(chain, "language1", data, tmp_path / "l1", None)
    assert language["stage"]["train"] == ["llm"] and language["model"]["tiny"]["fo1_row_scale"] == 8.0
    assert language["training"]["lr_scheduler_type"] == "constant_with_warmup"
    assert stage1["training"]["lr_scheduler_type"] == "cosine"
    with pytest.raises(ValueError, match="no stage 'language7'"):
        stage_config(chain, "language7", data, tmp_path / "l7", None)
    with pytest.raises(ValueError, match="unknown text task"):
        make_data(DemoRecipe.quick(stage0=StagePlan({}, steps=1, learning_rate=1e-3, text={"poems": 1})),
                  tmp_path / "bad", log=lambda _: None)


def test_word_slot_records_join_a_stage_and_alignment_runs_after_stage0(tmp_path):
    from vlmfo1.data.records import read_records
    from vlmfo1.training.recipes import DemoRecipe, StagePlan, _align, make_data, stage_config
    from vlmfo1.training.trainer import train

    recipe = DemoRecipe.quick(train_scenes=3, eval_scenes=1, language=(), alignment_steps=2,
                              stage0=StagePlan({"image_qa": 1}, steps=2, learning_rate=1e-3, batch_size=4,
                                               word_slots={"detection": 1}))
    data = tmp_path / "data"
    make_data(recipe, data, log=lambda _: None)
    stage0 = list(read_records(data / "stage0.fo1.jsonl"))
    words = [r for r in stage0 if r.region_text]
    assert [r.task for r in stage0].count("image_qa") == 3 and len(words) == 3
    assert all(r.image and r.id.endswith("-words") and len(r.region_text) == len(r.bbox_list) for r in words)
    train_small_tokenizer(shapeworld_corpus(20), vocab_size=400).save_pretrained(str(tmp_path / "tokenizer"))
    result = train(stage_config(recipe, 0, data, tmp_path / "stage0", None))
    assert result.global_step == 2 and all(torch.isfinite(torch.tensor(result.losses)))
    report: dict = {}
    aligned = _align(recipe, tmp_path / "stage0", data, tmp_path / "aligned", report, resume=True, log=lambda _: None)
    assert set(report["alignment"]) == {"step", "loss", "nearest_label"} and (aligned / "model.safetensors").exists()
    assert report["alignment"]["step"] == recipe.alignment_steps  # the values are the last step's
    stamp = (aligned / "alignment.json").stat().st_mtime_ns
    _align(recipe, tmp_path / "stage0", data, aligned, report, resume=True, log=lambda _: None)
    assert (aligned / "alignment.json").stat().st_mtime_ns == stamp  # resumed, not trained again
    assert stage_config(recipe, 1, data, tmp_path / "s1", aligned)["model"] == {"init_from": str(aligned)}


def test_the_words_to_pixels_chain_has_no_stage1_and_the_cli_names_its_recipes(tmp_path):
    from vlmfo1.cli.main import build_app
    from vlmfo1.training.recipes import RECIPES, DemoRecipe, all_tasks, stage_config, stage_plans

    chain = RECIPES["words-to-pixels"](threads=2)
    assert chain == DemoRecipe.words_to_pixels(threads=2)
    assert [name for name, _ in stage_plans(chain)] == ["language0", "language1", "language2", "stage0", "stage2"]
    assert chain.alignment_steps > 0 and chain.stage0.word_slots and chain.stage2.word_slots
    assert all_tasks(chain)["detect_everything"] >= 1  # word-slot tasks are generated for the train split
    with pytest.raises(ValueError, match="no stage 1 in the recipe"):
        stage_config(chain, 1, tmp_path, tmp_path / "s1", tmp_path)
    json.dumps(chain.to_dict())  # recipe.json holds it
    result = CliRunner().invoke(build_app(), ["train-demo", "--out", str(tmp_path), "--recipe", "fancy"])
    assert result.exit_code != 0 and "unknown recipe 'fancy'" in result.output
