"""The reproduction benchmark (benchmarks/reproduce.py) and the coordinate-answer parser/scorer it uses."""
from __future__ import annotations

import importlib.util
import json
import math
import shutil
import sys
from pathlib import Path

import pytest

from vlmfo1.evaluation.coordinates import (
    box_score,
    box_token_probability,
    parse_coordinate_answer,
    token_char_spans,
)
from vlmfo1.evaluation.metrics.counting import parse_count

REPO = Path(__file__).resolve().parents[1]

TWO_BOXES = (
    "```json\n[\n"
    '\t{"bbox_2d": [75, 173, 108, 207], "label": "circle"},\n'
    '\t{"bbox_2d": [58, 21, 103, 66], "label": "red square"}\n'
    "]\n```"
)


# ---------------------------------------------------------------------------------------------
# Parsing Qwen2.5-VL JSON box answers
# ---------------------------------------------------------------------------------------------


def test_parses_boxes_and_labels_in_answer_order():
    parsed = parse_coordinate_answer(TWO_BOXES)
    assert [box.box for box in parsed.boxes] == [(75, 173, 108, 207), (58, 21, 103, 66)]
    assert [box.label for box in parsed.boxes] == ["circle", "red square"]
    assert parsed.remainder == ""
    assert parsed.warnings == []
    assert not parsed.is_none


def test_spans_cover_the_numbers_and_the_label():
    parsed = parse_coordinate_answer(TWO_BOXES)
    first, second = parsed.boxes
    assert [TWO_BOXES[start:end] for start, end in first.spans] == ["75, 173, 108, 207", "circle"]
    assert [TWO_BOXES[start:end] for start, end in second.spans] == ["58, 21, 103, 66", "red square"]


def test_counting_answer_keeps_the_number_outside_the_json():
    answer = '```json\n[\n\t{"bbox_2d": [104, 130, 125, 149], "label": "hearts"}\n]\n```\n1'
    parsed = parse_coordinate_answer(answer)
    assert parsed.remainder == "1"
    assert len(parsed.boxes) == 1
    # The count protocol reads the first integer: on the raw answer, the 2 of "bbox_2d".
    assert parse_count(answer) == 2 and parse_count(parsed.remainder) == 1


def test_grounded_caption_text_before_the_json_is_the_remainder():
    answer = "The image shows two green squares.\n" + TWO_BOXES
    parsed = parse_coordinate_answer(answer)
    assert parsed.remainder == "The image shows two green squares."
    assert len(parsed.boxes) == 2


@pytest.mark.parametrize("answer", ["None", "None.", " None\n<|im_end|>"])
def test_none_answer_names_no_box(answer):
    parsed = parse_coordinate_answer(answer)
    assert parsed.is_none and parsed.boxes == []


def test_answer_cut_off_inside_an_entry_keeps_the_complete_entries_and_warns():
    answer = TWO_BOXES.replace("\n]\n```", ',\n\t{"bbox_2d": [1, 2, 3')
    parsed = parse_coordinate_answer(answer)
    assert [box.label for box in parsed.boxes] == ["circle", "red square"]
    assert any("cut off" in warning for warning in parsed.warnings)
    assert parsed.remainder == ""


def test_unfenced_json_with_label_first():
    parsed = parse_coordinate_answer('[{"label": "star", "bbox_2d": [1, 2, 30, 40.5]}] 2')
    assert [(box.box, box.label) for box in parsed.boxes] == [((1, 2, 30, 40.5), "star")]
    assert parsed.remainder == "2"


def test_swapped_corners_are_ordered_and_outside_boxes_clipped_with_warnings():
    answer = '[{"bbox_2d": [50, 40, 10, 5], "label": "a"}, {"bbox_2d": [-5, 0, 300, 20], "label": "b"}]'
    parsed = parse_coordinate_answer(answer, image_size=(256, 128))
    assert [box.box for box in parsed.boxes] == [(10, 5, 50, 40), (0, 0, 256, 20)]
    assert any("swapped" in warning for warning in parsed.warnings)
    assert any("clipped" in warning for warning in parsed.warnings)


def test_unusable_entries_are_dropped_with_a_warning_each():
    answer = (
        '[{"bbox_2d": [1, 2, 3], "label": "three numbers"},\n'
        '{"bbox_2d": [1, "a", 3, 4], "label": "text"},\n'
        '{"bbox_2d": [5, 5, 5, 9], "label": "no area"},\n'
        '{"bbox_2d": [1, 2, 3, 4]}]'
    )
    parsed = parse_coordinate_answer(answer)
    assert [(box.box, box.label) for box in parsed.boxes] == [((1, 2, 3, 4), None)]
    assert len(parsed.warnings) == 4  # three drops and one missing label


def test_escaped_label_is_decoded():
    parsed = parse_coordinate_answer('[{"bbox_2d": [1, 2, 3, 4], "label": "caf\\u00e9 \\"sign\\""}]')
    assert parsed.boxes[0].label == 'café "sign"'


# ---------------------------------------------------------------------------------------------
# Box scores from token probabilities
# ---------------------------------------------------------------------------------------------


def _overlaps(span, start, end):
    return span[0] < end and span[1] > start


def test_token_spans_partition_the_decoded_text(small_shapeworld_tokenizer):
    ids = small_shapeworld_tokenizer(TWO_BOXES)["input_ids"]
    text, spans = token_char_spans(small_shapeworld_tokenizer, ids)
    assert text == TWO_BOXES
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))


def test_token_spans_of_a_character_split_across_byte_tokens(small_shapeworld_tokenizer):
    ids = small_shapeworld_tokenizer("café")["input_ids"]
    text, spans = token_char_spans(small_shapeworld_tokenizer, ids)
    assert text == "café"
    assert spans[-1][1] == len(text) and all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    # "é" (index 3) belongs to exactly one token (the one that completes it).
    assert sum(start <= 3 < end for start, end in spans) == 1


def test_each_box_is_scored_by_the_tokens_that_write_it(small_shapeworld_tokenizer):
    ids = small_shapeworld_tokenizer(TWO_BOXES)["input_ids"]
    text, spans = token_char_spans(small_shapeworld_tokenizer, ids)
    # Probabilities set by position in the text: 0.25 on the second box's numbers and label,
    # 0.5 on the first box's numbers, 1.0 on its label, 0.01 on everything else (JSON syntax).
    second = [(text.find("58, 21, 103, 66"), text.find("58, 21, 103, 66") + 15),
              (text.find("red square"), text.find("red square") + 10)]
    first_numbers = (text.find("75, 173"), text.find("108, 207") + 8)
    first_label = (text.find("circle"), text.find("circle") + 6)
    probabilities = []
    for span in spans:
        if any(_overlaps(span, *part) for part in second):
            probabilities.append(0.25)
        elif _overlaps(span, *first_numbers):
            probabilities.append(0.5)
        elif _overlaps(span, *first_label):
            probabilities.append(1.0)
        else:
            probabilities.append(0.01)
    first_box, second_box = parse_coordinate_answer(text).boxes
    assert box_token_probability(second_box, spans, probabilities) == pytest.approx(0.25)
    number_tokens = sum(_overlaps(span, *first_numbers) for span in spans)
    label_tokens = sum(_overlaps(span, *first_label) for span in spans)
    expected = math.exp(number_tokens * math.log(0.5) / (number_tokens + label_tokens))
    assert box_token_probability(first_box, spans, probabilities) == pytest.approx(expected)
    assert box_score("constant", first_box, spans, probabilities) == 1.0


def test_box_scoring_errors():
    box = parse_coordinate_answer(TWO_BOXES).boxes[0]
    with pytest.raises(ValueError, match="unknown box scoring"):
        box_score("mean", box, [(0, len(TWO_BOXES))], [0.5])
    with pytest.raises(ValueError, match="probabilities for"):
        box_token_probability(box, [(0, 5)], [0.5, 0.5])
    with pytest.raises(ValueError, match="no token covers"):
        box_token_probability(box, [(0, 3)], [0.5])


def test_answer_coordinate_records_scores_what_the_generator_emitted(tmp_path, small_shapeworld_tokenizer, monkeypatch):
    """The glue from generated tokens to scored boxes: the end-of-turn token is not part of the
    answer, probabilities stay aligned with their tokens, a cut-off answer is flagged."""
    from vlmfo1.data.records import read_records
    from vlmfo1.data.shapeworld import ShapeWorldConfig, write_dataset
    from vlmfo1.evaluation.coordinates import answer_coordinate_records
    from vlmfo1.pipeline import generation
    from vlmfo1.training.tiny import init_tiny

    write_dataset(tmp_path, n=1, seed=0, split="t", config=ShapeWorldConfig.train(task_counts={"counting": 1, "image_qa": 1}))
    records = list(read_records(tmp_path / "t.coords.jsonl"))
    model, processor = init_tiny(None, size="tiny", tokenizer=small_shapeworld_tokenizer)
    tokenizer = processor.tokenizer
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    ids = tokenizer(TWO_BOXES + "\n2")["input_ids"]
    asked = []

    def generate(self, calls):
        asked.extend(calls)
        return [generation.Generated(ids + [eos], [0.5] * len(ids) + [0.9], finished=True),
                generation.Generated(ids[:-3], [0.2] * (len(ids) - 3), finished=False)]

    monkeypatch.setattr(generation.FO1Generator, "generate", generate)
    done, cut = answer_coordinate_records(model, processor, records, tmp_path, max_new_tokens=64)
    assert [call.messages[0]["content"] for call in asked] == [r.prompt for r in records]
    assert all(len(call.boxes) == 0 for call in asked)  # the twin is given no regions
    assert done.answer == TWO_BOXES + "\n2" and done.parsed.remainder == "2" and done.finished
    assert done.scores["token_probability"] == pytest.approx([0.5, 0.5])
    assert done.scores["constant"] == [1.0, 1.0]
    assert done.num_tokens == len(ids) + 1
    row = cut.to_dict()
    assert not row["finished"] and "answer cut off at max_new_tokens" in row["warnings"]
    assert [box["token_probability"] for box in row["boxes"]] == pytest.approx([0.2, 0.2])


# ---------------------------------------------------------------------------------------------
# The benchmark script
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reproduce():
    spec = importlib.util.spec_from_file_location("reproduce_benchmark", REPO / "benchmarks" / "reproduce.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_snapshot_steps(reproduce):
    assert reproduce.snapshot_steps(2, 2) == [1]
    assert reproduce.snapshot_steps(250, 4) == [62, 125, 188]
    assert reproduce.snapshot_steps(1, 4) == []


def test_budgets_share_the_recipe_plans(reproduce):
    from vlmfo1.training.recipes import DemoRecipe

    tuned = DemoRecipe.words_to_pixels()
    full, small = reproduce.budget("full"), reproduce.budget("small")
    assert full.recipe == tuned and full.seeds == (0, 1, 2)
    for name in ("stage0", "stage2"):
        plan, small_plan = getattr(tuned, name), getattr(small.recipe, name)
        assert (small_plan.tasks, small_plan.word_slots, small_plan.learning_rate, small_plan.batch_size) == (
            plan.tasks, plan.word_slots, plan.learning_rate, plan.batch_size)
    assert small.recipe.scene_overrides == tuned.scene_overrides and small.recipe.alignment_steps > 0
    assert full.twin_rate() == tuned.stage2.learning_rate
    # The held-out world is the training world made harder.
    from vlmfo1.data.shapeworld import ShapeWorldConfig

    trained = ShapeWorldConfig.train(**tuned.scene_overrides)
    harder, same = full.heldout_world("harder"), full.heldout_world("same_world")
    assert list(full.heldout_splits) == ["harder", "same_world"]
    assert harder.objects_per_image[1] > trained.objects_per_image[1] and harder.clutter > trained.clutter
    assert harder.size_range == trained.size_range
    assert (same.objects_per_image, same.clutter) == (trained.objects_per_image, trained.clutter)
    assert same.rejection_share == harder.rejection_share == 1.0
    assert full.split_seed("harder") != full.split_seed("same_world")
    assert [(p.tasks, p.learning_rate, p.schedule) for p in small.recipe.language] == [
        (p.tasks, p.learning_rate, p.schedule) for p in tuned.language]
    # A shorter plan keeps its mix: its text records scale with it (at least one of each kind).
    plan = reproduce.StagePlan({"image_qa": 4}, steps=1000, learning_rate=1e-3, text={"slot_lookup": 640, "repeat": 3})
    short = reproduce._steps(plan, 100, text_scale=0.1)
    assert (short.steps, short.text, short.tasks, short.batch_size) == (100, {"slot_lookup": 64, "repeat": 1}, plan.tasks, plan.batch_size)
    with pytest.raises(ValueError, match="unknown budget"):
        reproduce.budget("huge")


def test_rejection_is_a_finished_answer_that_names_no_box(reproduce):
    """A rejection cut off before its first box names no box but did not decline: it counts as wrong,
    and its generation limit is a detection answer's, so a model that does not reject can show it."""
    record = reproduce.FO1Record.single_turn
    items = [record(f"r{k}", "0.png", "Detect squares.", "None.", [[0, 0, 10, 10]], [1.0], task="rejection") for k in range(3)]
    box = ("square", [0.0, 0.0, 10.0, 10.0], {"proposal": 1.0})
    predictions = {"r0": reproduce.Prediction("None.", []),  # declined
                   "r1": reproduce.Prediction("", [], cut_off=True),  # ran out of tokens before any box
                   "r2": reproduce.Prediction("", [box])}  # named a box
    scores = reproduce.score_items(items, predictions, {}, ("proposal",))
    assert scores["rejection"] == {"accuracy": pytest.approx(1 / 3), "num_items": 3}
    assert reproduce.Prediction.from_dict(predictions["r1"].to_dict()) == predictions["r1"]
    older = {key: value for key, value in predictions["r1"].to_dict().items() if key != "cut_off"}
    with pytest.raises(ValueError, match="older version"):
        reproduce.Prediction.from_dict(older)

    everything = [record("e0", "0.png", "Detect all.", "<ground>square</ground><objects><region0></objects>",
                         [[0, 0, 10, 10]], [1.0], task="detect_everything")]
    counting = [record("c0", "0.png", "How many?", "1", task="counting")]
    by_task = {"rejection": items, "detect_everything": everything, "counting": counting}
    assert reproduce.limit_references("rejection", by_task) == items + everything
    assert reproduce.limit_references("counting", by_task) == counting
    assert reproduce.limit_references("rejection", {"rejection": items}) == items


def test_answer_floors(reproduce):
    record = reproduce.FO1Record.single_turn
    # Two proposals, one on the referent: a random pick is right half the time; a one-referent
    # expression only (the two-referent one is left out, as in REC scoring).
    rec = record("r", "0.png", "Where?", "<region0>", [[0, 0, 10, 10], [50, 50, 60, 60]], [1.0, 1.0], task="rec",
                 meta={"gt_boxes": [[0, 0, 10, 10]]})
    two = record("t", "0.png", "Where?", "<region0>", [[0, 0, 10, 10]], [1.0], task="rec",
                 meta={"gt_boxes": [[0, 0, 10, 10], [50, 50, 60, 60]]})
    counts = [record(f"c{k}", "0.png", "How many?", str(n), task="counting", meta={"count": n}) for k, n in enumerate([2, 1, 2])]
    floors = reproduce.answer_floors([rec, two] + counts)
    assert floors == {"rec_random_proposal": pytest.approx(0.5),
                      "counting_most_common": {"count": 2, "accuracy": pytest.approx(2 / 3)}}


def test_claims_are_paired_differences_per_seed(reproduce):
    """Each claim's difference is taken within a seed (both arms from that seed's base), signed so that
    positive is what the paper says; a tie is counted as neither."""
    def scores(map_, others, qa=0.5):
        return {"same_world": {"detection": {"proposal": {"AP": map_, "AP50": map_}, "token_probability": {"AP": map_}},
                               "rec": {"accuracy": others}, "counting": {"accuracy": others},
                               "rejection": {"accuracy": others}, "caption": {"semantic_similarity": others},
                               "image_qa": {"accuracy": qa}}}

    def seed(seed, unfrozen_others, fo1_qa):
        arms = {"fo1": scores(0.3, 0.5, fo1_qa), "coordinates": scores(0.0, 0.2), "aux_only": scores(0.1, 0.5),
                "primary_simple_fp": scores(0.2, 0.5), "primary_no_simple_fp": scores(0.1, 0.4),
                "fo1_vit_unfrozen": scores(0.3, unfrozen_others)}
        return {"seed": seed, "arms": {name: {"scores": s} for name, s in arms.items()},
                "base": {"scores": scores(0.0, 0.0, qa=0.5)}}

    table = reproduce.claims_table([seed(0, 0.6, 0.5), seed(1, 0.45, 0.45)], "same_world")
    rows = {row["favour"] + "-" + row["against"]: row for row in table["rows"]}
    assert rows["fo1-coordinates"]["per_seed"] == {"0": pytest.approx(0.3), "1": pytest.approx(0.3)}
    # average = mean of mAP and four metrics at `others`: fo1 (0.3 + 4 * 0.5) / 5 = 0.46
    assert rows["fo1-aux_only"]["difference"]["mean"] == pytest.approx(0.46 - 0.42)
    assert rows["primary_simple_fp-primary_no_simple_fp"]["difference"]["mean"] == pytest.approx(0.44 - 0.34)
    frozen = rows["fo1-fo1_vit_unfrozen"]
    assert frozen["per_seed"] == {"0": pytest.approx(-0.08), "1": pytest.approx(0.04)}
    assert frozen["seeds_by_sign"] == {"positive": 1, "zero": 0, "negative": 1}
    assert frozen["difference"]["std"] == pytest.approx(math.sqrt(2 * 0.06 ** 2))  # sample std of -0.08, 0.04
    forgetting = rows["fo1-base"]
    assert forgetting["per_seed"] == {"0": 0.0, "1": pytest.approx(-0.05)}
    assert forgetting["seeds_by_sign"] == {"positive": 0, "zero": 1, "negative": 1}
    assert "| perception without forgetting (Table 7) | fo1 − base | image QA | +0.0, -5.0 | -2.5 ± 3.5 | 0 / 1 / 1 |" in table["markdown"]


def test_spearman_ranks_ties_by_their_mean_rank(reproduce):
    assert reproduce.spearman([1, 2, 3], [10, 20, 35]) == pytest.approx(1.0)
    assert reproduce.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # ranks (0, 1.5, 1.5, 3) and (0, 2, 1, 3): covariance 4.5 over sqrt(4.5 * 5)
    assert reproduce.spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(math.sqrt(0.9))
    assert reproduce.spearman([1, 1, 1], [1, 2, 3]) is None  # a constant side has no ranking
    assert reproduce.spearman([1], [2]) is None


def test_alignment_table_pairs_every_fo1_arm_of_every_seed(reproduce):
    """Each FO1 arm's final alignment loss and nearest-own-label share against its held-out mAP; the
    twin has no alignment and an arm without one counts as missing, not as zero."""
    fo1_arms = [arm.name for arm in reproduce.ARMS if arm.kind == "fo1"]

    def arm(loss, nearest, map_):
        scores = {"same_world": {"detection": {"proposal": {"AP": map_, "AP50": map_}}, "rec": {"accuracy": 0.5},
                                 "counting": {"accuracy": 0.5}, "rejection": {"accuracy": 0.5},
                                 "caption": {"semantic_similarity": 0.5}, "image_qa": {"accuracy": 0.5}}}
        phases = [{"steps": 10, "last_loss": 1.0}]
        if loss is not None:
            phases.insert(0, {"steps": 10, "last_loss": loss, "nearest_label": nearest})
        return {"scores": scores, "phases": phases}

    def seed(number, offset):
        arms = {name: arm(0.5 - 0.1 * i, 0.1 * i, 0.05 * i + offset) for i, name in enumerate(fo1_arms)}
        arms["coordinates"] = {"scores": {}, "phases": [{"steps": 20, "last_loss": 0.1}]}
        return {"seed": number, "arms": arms}

    results = [seed(0, 0.0), seed(1, 0.01)]
    table = reproduce.alignment_table(results, "same_world")
    assert len(table["pairs"]) == 2 * len(fo1_arms)
    rows = {row["measure"]: row for row in table["rows"]}
    assert rows["alignment_loss"]["spearman"] == pytest.approx(-1.0, abs=0.1)  # lower loss, higher mAP
    assert rows["nearest_label"]["spearman"] > 0.9
    results[1]["arms"][fo1_arms[0]] = arm(None, None, 0.3)
    rows = {row["measure"]: row for row in reproduce.alignment_table(results, "same_world")["rows"]}
    assert rows["alignment_loss"]["pairs"] == 2 * len(fo1_arms) - 1
    assert "| final alignment loss | 9 |" in reproduce.alignment_table(results, "same_world")["markdown"]


def untimed(value):
    """`value` without its wall-clock fields (keys naming seconds), which differ between runs."""
    if isinstance(value, dict):
        return {k: untimed(v) for k, v in value.items() if "seconds" not in k}
    if isinstance(value, list):
        return [untimed(v) for v in value]
    return value


def test_seed_compute_names_what_its_records_noted(reproduce):
    def phase(threads, device="cpu"):
        return {"steps": 1, "torch_threads": threads, "device": device}

    result = {"base": {"train": {**phase(2), "language_stages": [phase(2), phase(2)]}},
              "arms": {"fo1": {"phases": [phase(2), phase(1)]}, "coordinates": {"phases": [phase(2, "NVIDIA H100")]}}}
    assert reproduce.seed_compute(result) == "NVIDIA H100, 2 threads; cpu, 1 thread; cpu, 2 threads"
    result["arms"]["fo1"]["phases"][1] = {"steps": 1}  # a record from before compute was noted
    assert reproduce.seed_compute(result) == "NVIDIA H100, 2 threads; cpu, 2 threads; 1 of 6 pieces not noted"


def test_arms_must_be_known(reproduce, tmp_path, capsys):
    with pytest.raises(SystemExit):
        reproduce.main(["--budget", "tiny", "--out", str(tmp_path), "--arms", "fo1,fo2"])
    assert "--arms takes arm names" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown arms"):
        reproduce.run(reproduce.budget("tiny"), tmp_path, arms=("fo2",))
    assert not any(tmp_path.iterdir())


def test_keep_refuses_another_budgets_folder(reproduce, tmp_path):
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "budget.json").write_text(json.dumps(reproduce.budget("small").identity()))
    with pytest.raises(SystemExit, match="another budget"):
        reproduce.main(["--budget", "tiny", "--out", str(tmp_path / "run"), "--keep", str(keep)])
    assert not (tmp_path / "run" / "heldout").exists() and sorted(p.name for p in keep.iterdir()) == ["budget.json"]


def test_report_only_needs_a_finished_seed_and_trains_none(reproduce, tmp_path, capsys):
    with pytest.raises(SystemExit, match="no finished seed"):
        reproduce.main(["--budget", "tiny", "--out", str(tmp_path / "empty"), "--report-only"])
    with pytest.raises(SystemExit):
        reproduce.main(["--budget", "tiny", "--out", str(tmp_path), "--report-only", "--seeds", "0"])
    assert "leave --seeds and --arms out" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        reproduce.main(["--budget", "tiny", "--out", str(tmp_path), "--report-only", "--reference-only"])
    assert not any(tmp_path.rglob("*.safetensors"))


def test_tiny_budget_end_to_end_and_resume(reproduce, tmp_path, one_torch_thread):
    out = tmp_path / "run"
    budget = reproduce.budget("tiny")
    keep = tmp_path / "keep"
    summary = reproduce.main(["--budget", "tiny", "--out", str(out), "--threads", "1", "--keep", str(keep)])
    arms = [arm.name for arm in reproduce.ARMS]
    # --keep copies the budget and every finished result.json, in the run folder's layout, and nothing else.
    assert sorted(str(path.relative_to(keep)) for path in keep.rglob("*") if path.is_file()) == sorted(
        ["budget.json", "seed0/result.json"] + [f"seed0/{arm}/result.json" for arm in arms])
    assert (keep / "seed0" / "result.json").read_bytes() == (out / "seed0" / "result.json").read_bytes()

    results = json.loads((out / "results.json").read_text())
    assert list(results["tables"]) == list(budget.heldout_splits)
    tables = results["tables"]["harder"]
    assert [(row["arm"], row["scoring"]) for row in tables["table1"]["rows"]] == [
        ("coordinates", "token_probability"), ("coordinates", "constant"), ("fo1", "proposal")]
    assert [row["arm"] for row in tables["table8"]["rows"]] == ["fo1", "fo1_vit_unfrozen", "aux_only", "primary_simple_fp"]
    assert [row["arm"] for row in tables["table9"]["rows"]] == ["primary_simple_fp", "primary_no_simple_fp"]
    assert all(0.0 <= row["aligned"]["mean"] <= 1.0 for row in tables["table8"]["rows"] + tables["table9"]["rows"])
    assert [row["arm"] for row in tables["table7"]["rows"]] == ["base"] + arms
    for row in tables["table1"]["rows"] + tables["table8"]["rows"] + tables["table9"]["rows"]:
        for metric in ("map", "rec_acc50", "counting", "rejection", "caption_ss"):
            assert row[metric]["n"] == 1 and 0.0 <= row[metric]["mean"] <= 1.0, (row["arm"], metric)
    for row in tables["table7"]["rows"]:
        assert 0.0 <= row["overall"]["mean"] <= 1.0

    # The reference answers through the same scoring: JSON boxes are the COCO boxes (all 100 %);
    # region indexes name jittered proposals (IoU >= 0.7: AP50 100 %, AP below it).
    coordinates, fo1 = tables["table1"]["ceilings"]["coordinates"], tables["table1"]["ceilings"]["fo1"]
    assert all(coordinates[key] == pytest.approx(1.0) for key in ("map", "ap50", "rec_acc50", "counting", "rejection", "image_qa"))
    assert fo1["ap50"] == pytest.approx(1.0) and fo1["map"] < 0.9
    assert fo1["rec_acc50"] == pytest.approx(1.0) and fo1["counting"] == pytest.approx(1.0)
    # ... and what answering without looking scores: a random proposal, the most common count.
    floors = tables["table1"]["floors"]
    assert 0.0 < floors["rec_random_proposal"] < 1.0 and 0.0 < floors["counting_most_common"]["accuracy"] <= 1.0
    assert "Floors of this split" in tables["table1"]["markdown"]

    report = (out / "report.md").read_text()
    for title in ("Table 1 style", "Table 8 style", "Table 9 style", "Table 7 style", "The claims, seed by seed",
                  "Alignment vs. held-out mAP"):
        assert report.count(title) == 2  # once per held-out split
    alignment_pairs = tables["alignment"]["pairs"]
    assert sorted(p["arm"] for p in alignment_pairs) == sorted(a.name for a in reproduce.ARMS if a.kind == "fo1")
    assert all(p["alignment_loss"] > 0 and 0.0 <= p["nearest_label"] <= 1.0 for p in alignment_pairs)
    assert "Held-out split `harder`" in report and "Held-out split `same_world`" in report
    # The base's language skills, measured once per seed and cached.
    checks = results["base_skills"]["rows"]
    assert [row["check"] for row in checks] == ["copy", "lookup2", "lookup4", "lookup6"]
    assert all(0.0 <= row["region"]["mean"] <= 1.0 for row in checks) and 0.0 < checks[1]["chance"]["mean"] <= 1.0
    assert "language skills" in report and (out / "seed0" / "base_language_checks.json").exists()
    for arm in reproduce.ARMS:
        assert arm.title in report

    # Equal budget: the same steps for the twin and FO1 (alignment + stage 2); the twin trains ViT + LLM.
    seed = results["per_seed"][0]
    # Every training piece notes the compute it ran with (a seed reproduces only with the same).
    pieces = [seed["base"]["train"], *seed["base"]["train"]["language_stages"]]
    pieces += [phase for name in arms for phase in seed["arms"][name]["phases"]]
    assert {(p["device"], p["torch_threads"]) for p in pieces} == {("cpu", 1)}
    assert "Training compute of each seed (a seed's numbers reproduce only with the same): seed 0: cpu, 1 thread." in report
    expected_steps = budget.recipe.alignment_steps + budget.recipe.stage2.steps
    assert {name: seed["arms"][name]["steps"] for name in arms} == dict.fromkeys(arms, expected_steps)
    twin_stage = json.loads((out / "seed0" / "coordinates" / "coordinates" / reproduce.TRAIN_RECORD).read_text())["stage"]
    assert twin_stage["train"] == ["vision", "image_projector", "llm"]
    # The twin's records are FO1's stage-2 records, in the same order: image records as their
    # coordinate twins (a word-slot record as its source's), text-only records (slot look-ups) unchanged.
    twin_records = list(reproduce.read_records(out / "seed0" / "data" / "stage2.coords.jsonl"))
    fo1_records = list(reproduce.read_records(out / "seed0" / "data" / "stage2.fo1.jsonl"))
    words = [r for r in fo1_records if r.region_text]
    assert words and len(twin_records) == len(fo1_records)
    assert [r.meta["fo1_id"] if r.image else r.id for r in twin_records] == [
        r.id.removesuffix(reproduce.WORD_SLOT_SUFFIX) for r in fo1_records]
    text_only = [r for r in fo1_records if r.image is None]
    assert text_only and [r for r in twin_records if r.image is None] == text_only
    # FO1's first phase is the alignment: the region encoders and connector, the primary ViT only
    # where the arm unfreezes it.
    for name, vit in (("fo1", False), ("fo1_vit_unfrozen", True), ("aux_only", False)):
        alignment = json.loads((out / "seed0" / name / "aligned" / reproduce.TRAIN_RECORD).read_text())
        assert alignment["steps"] == budget.recipe.alignment_steps
        assert [step for step, _ in alignment["losses"]] == [budget.recipe.alignment_steps]  # logged at the last step
        assert ("vision" in alignment["stage"]["train"]) == vit and "region_encoder" in alignment["stage"]["train"]
    # The base is the recipe's language stage, then stage 0, trained from the language stage's weights.
    base_record = seed["base"]["train"]
    language_record = json.loads((out / "seed0" / "language0" / reproduce.TRAIN_RECORD).read_text())
    assert language_record["stage"]["train"] == ["llm"]
    assert base_record["steps"] == budget.recipe.language[0].steps + budget.recipe.stage0.steps
    unfrozen = json.loads((out / "seed0" / "fo1_vit_unfrozen" / "stage2" / reproduce.TRAIN_RECORD).read_text())["stage"]
    assert "vision" in unfrozen["train"]
    for name, flags in (("aux_only", {"use_primary_features": False}),
                        ("primary_no_simple_fp", {"use_aux_features": False, "use_simple_fp": False})):
        config = json.loads((out / "seed0" / name / "init" / "config.json").read_text())
        assert {key: config[key] for key in flags} == flags

    # The derived models keep the base's ViT and LLM weights.
    from safetensors.torch import load_file

    base = load_file(str(out / "seed0" / "base" / "model.safetensors"))
    derived = load_file(str(out / "seed0" / "aux_only" / "init" / "model.safetensors"))
    shared = [key for key in derived if not key.startswith("region_encoder.")]
    assert shared and all((derived[key] == base[key]).all() for key in shared)
    # ... and FO1's primary ViT stays the base's through both phases; unfrozen, it moves.
    vit = [key for key in base if ".visual.blocks." in key]
    assert vit
    for name, moved in (("fo1", False), ("fo1_vit_unfrozen", True)):
        final = load_file(str(out / "seed0" / name / "stage2" / "model.safetensors"))
        assert any(not (final[key] == base[key]).all() for key in vit) == moved, name

    # mAP vs steps for (a) and (b), at the same steps (the end of FO1's alignment, mid stage 2, the end),
    # and the twin's also during the alignment's span.
    curve = (out / "curve.csv").read_text().splitlines()[1:]
    steps = {(line.split(",")[0], line.split(",")[1]): set() for line in curve}
    for line in curve:
        arm, scoring, _, step, _ = line.split(",")
        steps[(arm, scoring)].add(int(step))
    assert steps == {("coordinates", "token_probability"): {1, 2, 3, 4}, ("coordinates", "constant"): {1, 2, 3, 4},
                     ("fo1", "proposal"): {2, 3, 4}}  # the twin trains its LLM through FO1's alignment too

    # A rerun trains and evaluates nothing again and reports the same numbers.
    kept = sorted(out.rglob(reproduce.TRAIN_RECORD)) + sorted(out.rglob(reproduce.SCORES_FILE))
    stamps = {path: path.stat().st_mtime_ns for path in kept}
    again = reproduce.main(["--budget", "tiny", "--out", str(out), "--threads", "1"])
    assert {path: path.stat().st_mtime_ns for path in kept} == stamps
    assert again["tables"] == summary["tables"]

    # The seeds' result.json files alone (as kept: no data, checkpoints or answers) rebuild the
    # same tables, training nothing; the held-out splits and the tokenizer are remade.
    archive = tmp_path / "archive"
    (archive / "seed0").mkdir(parents=True)
    shutil.copy(keep / "budget.json", archive / "budget.json")
    shutil.copy(keep / "seed0" / "result.json", archive / "seed0" / "result.json")
    rebuilt = reproduce.main(["--budget", "tiny", "--out", str(archive), "--report-only"])
    assert rebuilt["tables"] == summary["tables"] and rebuilt["seeds"] == [0] and rebuilt["seeds_run_now"] == []
    assert sorted(path.name for path in (archive / "seed0").iterdir()) == ["result.json", "tokenizer"]
    assert (archive / "report.md").read_text().count("The claims, seed by seed") == 2

    # A seed's arms split over two commands (as parallel commands would run them): the first finishes
    # no seed and writes no report, the second completes the seed with the single command's numbers.
    split = tmp_path / "split"
    first = reproduce.main(["--budget", "tiny", "--out", str(split), "--threads", "1", "--arms", ",".join(arms[:2])])
    assert first is None and not (split / "seed0" / "result.json").exists() and not (split / "report.md").exists()
    assert sorted(p.parent.name for p in (split / "seed0").glob("*/result.json")) == sorted(arms[:2])
    second = reproduce.main(["--budget", "tiny", "--out", str(split), "--threads", "1", "--arms", ",".join(arms[2:])])
    assert set(second["per_seed"][0]["arms"]) == set(arms)
    for name in arms:
        assert untimed(second["per_seed"][0]["arms"][name]["scores"]) == untimed(seed["arms"][name]["scores"]), name

    # A lost folder rebuilt from its kept arm results: the base is trained again (the same weights:
    # its sha256 is checked against the arms'), the kept arms are not, the others are.
    kept = tmp_path / "kept"
    for name in ["budget.json"] + [f"seed0/{arm}/result.json" for arm in arms[:3]]:
        (kept / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(keep / name, kept / name)
    assert all(seed["arms"][name]["base_sha256"] == seed["base"]["sha256"] for name in arms)
    tampered = json.loads((kept / "seed0" / arms[0] / "result.json").read_text())
    (kept / "seed0" / arms[0] / "result.json").write_text(json.dumps({**tampered, "base_sha256": "0" * 64}))
    with pytest.raises(SystemExit, match="another base"):
        reproduce.main(["--budget", "tiny", "--out", str(kept), "--threads", "1"])
    (kept / "seed0" / arms[0] / "result.json").write_text(json.dumps(tampered))
    resumed = reproduce.main(["--budget", "tiny", "--out", str(kept), "--threads", "1"])
    assert resumed["per_seed"][0]["base"]["sha256"] == seed["base"]["sha256"]
    assert [name for name in arms if (kept / "seed0" / name / "eval").exists()] == arms[3:]
    for name in arms:
        assert untimed(resumed["per_seed"][0]["arms"][name]["scores"]) == untimed(seed["arms"][name]["scores"]), name

    # Another budget in the same folder is refused before anything runs.
    with pytest.raises(SystemExit, match="another budget"):
        reproduce.run(reproduce.budget("small"), out)


def test_kept_full_results_are_of_the_full_budget(reproduce):
    """The repository keeps the full budget's finished seeds (benchmarks/results/reproduce-full): they
    must be of the budget `--budget full` runs today, and each seed complete."""
    kept = REPO / "benchmarks" / "results" / "reproduce-full"
    assert json.loads((kept / "budget.json").read_text()) == reproduce.budget("full").identity()
    splits = set(reproduce.budget("full").heldout_splits)
    for path in sorted(kept.glob("seed*/result.json")):
        result = json.loads(path.read_text())
        assert path.parent.name == f"seed{result['seed']}"
        assert set(result["arms"]) == {arm.name for arm in reproduce.ARMS}
        assert set(result["base"]["scores"]) == splits
    for path in sorted(kept.glob("seed*/*/result.json")):  # finished arms of seeds still running
        assert path.parent.name in reproduce.ARMS_BY_NAME
        assert set(json.loads(path.read_text())["scores"]) == splits


def test_parallel_commands_on_one_folder_take_turns(reproduce, tmp_path):
    """Seeds run as parallel commands share the folder's held-out splits and report: `exclusive`
    lets one writer in at a time (flock is per open file, so a second holder blocks even in-process)."""
    import threading

    lock = tmp_path / "run" / ".lock"
    entered = threading.Event()

    def second_writer():
        with reproduce.exclusive(lock):
            entered.set()

    with reproduce.exclusive(lock):
        thread = threading.Thread(target=second_writer, daemon=True)
        thread.start()
        assert not entered.wait(0.5)  # blocked while the first holds the lock
    assert entered.wait(10)  # and let in once it is released
    thread.join(10)
