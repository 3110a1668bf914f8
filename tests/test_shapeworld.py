"""ShapeWorld: determinism, annotation exactness, and every task's answer checked against the geometry.

The checks re-derive each answer from the scene's objects with their own (deliberately plain)
code; they do not call the generator's helpers that produced the answer.
"""
import hashlib
import json
import math
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from vlmfo1 import prompts
from vlmfo1.data.records import read_records
from vlmfo1.data.shapeworld import (
    COLOURS,
    SHAPES,
    TASKS,
    ShapeWorldConfig,
    coco_annotations,
    encode_image,
    generate_example,
    generate_scene,
    make_task_records,
    write_dataset,
)
from vlmfo1.parsing import parse_answer

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = REPO_ROOT / "examples" / "shapeworld"
PLURALS = {("crosses" if s == "cross" else s + "s"): s for s in SHAPES}


# ---------------------------------------------------------------------------------------------
# Plain re-derivations used by the checks
# ---------------------------------------------------------------------------------------------


def phrase_of(text):
    """(category, colour, texture) named by a label such as "red circle", "striped stars", "blue shapes"."""
    category = colour = texture = None
    for word in text.split():
        if word in COLOURS:
            colour = word
        elif word in ("striped", "dotted"):
            texture = word
        elif word in SHAPES:
            category = word
        elif word in PLURALS:
            category = PLURALS[word]
        elif word not in ("shape", "shapes"):
            raise AssertionError(f"unexpected word {word!r} in label {text!r}")
    return category, colour, texture


def fits(obj, phrase):
    category, colour, texture = phrase
    return (category in (None, obj.category)) and (colour in (None, obj.colour)) and (texture in (None, obj.texture))


def fitting(scene, phrase, exclude=None):
    return sorted(obj.id for obj in scene.objects if fits(obj, phrase) and obj.id != exclude)


def side_gap(a, b, relation):
    """How far box a lies wholly on `relation`'s side of box b (negative: it does not)."""
    return {
        "left of": b[0] - a[2],
        "right of": a[0] - b[2],
        "above": b[1] - a[3],
        "below": a[1] - b[3],
    }[relation]


def centre(box):
    return ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)


def box_area(box):
    return max(0, box[2] - box[0]) * max(0, box[3] - box[1])


def overlap(a, b):
    return max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))


def iou(a, b):
    inter = overlap(a, b)
    return inter / (box_area(a) + box_area(b) - inter)


def amodal_size(obj):
    x1, y1, x2, y2 = obj.amodal_bbox
    return (x2 - x1) * (y2 - y1)


def answered_objects(record):
    """{label: sorted object ids} read from the FO1 answer with the project's parser."""
    parsed = parse_answer(record.answer, record.bbox_list, record.score_list)
    assert parsed.warnings == [], (record.id, parsed.warnings)
    holders = record.meta["proposal_objects"]
    groups = {}
    for group in parsed.groups:
        ids = [holders[ref.index] for ref in group.regions]
        assert all(i >= 0 for i in ids), f"{record.id}: answer names a region that holds no object"
        groups[group.label] = sorted(ids)
    return groups, parsed


def region_object(record, index):
    return record.meta["proposal_objects"][index]


# ---------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def examples():
    train = [generate_example(ShapeWorldConfig.train(), i, seed=3, split="train") for i in range(40)]
    heldout = [generate_example(ShapeWorldConfig.heldout(), i, seed=3, split="heldout") for i in range(12)]
    return train + heldout


@pytest.fixture(scope="module")
def records(examples):
    return [(example, record) for example in examples for record in example.fo1_records()]


def of_task(records, task):
    found = [(example, record) for example, record in records if record.task == task]
    assert found, f"no {task} records were made"
    return found


# ---------------------------------------------------------------------------------------------
# Determinism
# ---------------------------------------------------------------------------------------------


def folder_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def test_same_seed_gives_byte_identical_files_in_any_number_of_processes(tmp_path):
    config = ShapeWorldConfig.train(objects_per_image=(3, 12))
    write_dataset(tmp_path / "a", 8, seed=11, split="train", config=config, workers=1)
    write_dataset(tmp_path / "b", 8, seed=11, split="train", config=config, workers=1)
    write_dataset(tmp_path / "c", 8, seed=11, split="train", config=config, workers=2)
    write_dataset(tmp_path / "d", 8, seed=12, split="train", config=config, workers=1)
    digests = {name: folder_digest(tmp_path / name) for name in "abcd"}
    assert digests["a"] == digests["b"] == digests["c"]
    assert digests["d"] != digests["a"]


def test_any_scene_can_be_made_alone_and_matches_the_dataset(tmp_path):
    config = ShapeWorldConfig.train()
    write_dataset(tmp_path, 6, seed=5, split="val", config=config)
    scene = generate_scene(config, 4, seed=5, split="val")
    assert (tmp_path / scene.file_name).read_bytes() == encode_image(scene, config.image_format)
    coco = json.loads((tmp_path / "val.coco.json").read_text())
    assert [a for a in coco["annotations"] if a["image_id"] == 4] == coco_annotations(scene)
    written = [r.to_dict() for r in read_records(tmp_path / "val.fo1.jsonl") if r.meta["scene_index"] == 4]
    assert written == [r.to_dict() for r in make_task_records(scene, config=config)]


def test_split_name_is_part_of_the_seed():
    config = ShapeWorldConfig.train()
    a = generate_scene(config, 0, seed=1, split="train")
    b = generate_scene(config, 0, seed=1, split="heldout")
    assert np.asarray(a.image).tobytes() != np.asarray(b.image).tobytes()


# ---------------------------------------------------------------------------------------------
# Scenes and their annotations
# ---------------------------------------------------------------------------------------------


def test_boxes_are_exactly_the_drawn_pixels_when_nothing_overlaps():
    config = ShapeWorldConfig.train(
        objects_per_image=(4, 10), occlusion=0.0, clutter=0.0, noise=0, distractors=(0, 0),
        texture_prob=0.5, outline_prob=0.5, word_prob=1.0,
    )
    for index in range(15):
        scene = generate_scene(config, index, seed=2)
        pixels = np.asarray(scene.image).astype(int)
        painted = np.any(pixels != np.array(scene.background), axis=2)
        claimed = np.zeros_like(painted)
        for obj in scene.objects:
            x1, y1, x2, y2 = obj.bbox
            window = painted[y1:y2, x1:x2]
            rows, cols = np.nonzero(window.any(axis=1))[0], np.nonzero(window.any(axis=0))[0]
            assert (rows[0], rows[-1] + 1, cols[0], cols[-1] + 1) == (0, y2 - y1, 0, x2 - x1), (index, obj)
            assert obj.area == int(window.sum())
            assert obj.visible_fraction == 1.0
            claimed[y1:y2, x1:x2] = True
        assert not (painted & ~claimed).any(), f"scene {index}: drawn pixels outside every box"


def test_noise_is_bounded_and_never_wraps():
    quiet = generate_scene(ShapeWorldConfig.train(noise=0), 7)
    noisy = generate_scene(ShapeWorldConfig.train(noise=8), 7)
    difference = np.abs(np.asarray(quiet.image).astype(int) - np.asarray(noisy.image).astype(int))
    # colours are pulled 8 away from 0 and 255 before +-8 noise: no pixel moves more than 16
    assert difference.max() <= 16
    assert difference.mean() > 2


def test_occlusion_is_controlled_and_shapes_stay_visible():
    for config in (ShapeWorldConfig.train(), ShapeWorldConfig.heldout(), ShapeWorldConfig.train(occlusion=0.0, objects_per_image=(10, 20))):
        for index in range(8):
            scene = generate_scene(config, index)
            objects = scene.objects
            for i, below in enumerate(objects):
                covered = sum(overlap(below.amodal_bbox, above.amodal_bbox) for above in objects[i + 1:])
                assert covered <= config.occlusion * box_area(below.amodal_bbox) + 1.0
                assert below.visible_fraction >= config.min_visible
                for above in objects[i + 1:]:
                    if overlap(below.amodal_bbox, above.amodal_bbox) > 0:
                        assert below.colour != above.colour, "overlapping shapes of one colour"


def test_scene_respects_knobs():
    config = ShapeWorldConfig.train(objects_per_image=(5, 9), categories=("circle", "ring", "star"),
                                    colours=("red", "blue"), image_size=(320, 200))
    short_side = 200
    bands = config.size_bands()
    for index in range(10):
        scene = generate_scene(config, index)
        assert scene.image.size == (320, 200)
        assert 5 <= scene.requested_objects <= 9 and len(scene.objects) == scene.requested_objects
        for obj in scene.objects:
            assert obj.category in config.categories and obj.colour in config.colours
            x1, y1, x2, y2 = obj.bbox
            assert 0 <= x1 < x2 <= 320 and 0 <= y1 < y2 <= 200
            if obj.category in ("circle", "ring"):
                low, high = bands[obj.size]
                diameter = (obj.amodal_bbox[2] - obj.amodal_bbox[0]) / short_side
                assert low - 1e-3 <= diameter <= high + 1e-3


def test_words_sit_inside_their_shape_and_nothing_covers_them():
    config = ShapeWorldConfig.train(word_prob=1.0, objects_per_image=(6, 14))
    seen = 0
    for index in range(12):
        scene = generate_scene(config, index)
        for i, obj in enumerate(scene.objects):
            if not obj.word:
                continue
            seen += 1
            wx1, wy1, wx2, wy2 = obj.word_bbox
            ax1, ay1, ax2, ay2 = obj.amodal_bbox
            assert ax1 <= wx1 and ay1 <= wy1 and wx2 <= ax2 and wy2 <= ay2
            assert obj.category in ("circle", "square", "hexagon") and obj.size != "small"
            for above in scene.objects[i + 1:]:
                assert overlap(obj.word_bbox, above.amodal_bbox) == 0
    assert seen >= 5


def test_heldout_is_harder_than_train():
    def mean_objects(config):
        return np.mean([len(generate_scene(config, i).objects) for i in range(10)])

    assert mean_objects(ShapeWorldConfig.heldout()) > 2 * mean_objects(ShapeWorldConfig.train())


def test_crowded_scenes_keep_what_fits_and_say_so():
    config = ShapeWorldConfig.train(image_size=(64, 64), objects_per_image=(60, 60), size_weights=(0, 0, 1))
    scene = generate_scene(config, 0)
    assert scene.requested_objects == 60
    assert 1 <= len(scene.objects) < 60


# ---------------------------------------------------------------------------------------------
# Proposals
# ---------------------------------------------------------------------------------------------


def test_every_object_has_exactly_one_close_proposal_and_negatives_hold_nothing(examples):
    for example in examples:
        scene, proposals = example.scene, example.proposals
        assert len(proposals.boxes) == len(proposals.scores) == len(proposals.object_ids) <= prompts.MAX_REGIONS
        holders = Counter(obj for obj in proposals.object_ids if obj >= 0)
        assert holders == Counter(range(len(scene.objects)))
        for box, holder in zip(proposals.boxes, proposals.object_ids):
            if holder >= 0:
                assert iou(box, scene.objects[holder].bbox) >= 0.7
            else:
                assert all(iou(box, obj.bbox) < 0.5 for obj in scene.objects)
        assert all(0 <= s <= 1 for s in proposals.scores)


def test_proposal_order_carries_no_information(examples):
    """Objects are shuffled among the proposals, not listed first."""
    first_holds_object_zero = sum(ex.proposals.object_ids[0] == 0 for ex in examples if len(ex.proposals) > 3)
    assert first_holds_object_zero < len(examples) / 2


def test_every_record_validates_and_points_inside_its_proposals(records):
    for example, record in records:
        record.validate()
        assert record.image == example.scene.file_name
        assert record.id.startswith(f"{example.scene.split}-{example.scene.index:06d}-{record.task}-")
        assert record.task in TASKS
        if "gt_boxes" in record.meta:
            assert record.meta["gt_boxes"] == [list(example.scene.objects[i].bbox) for i in record.meta["object_ids"]]
        if "targets" in record.meta:
            assert sorted(region_object(record, k) for k in record.meta["targets"]) == record.meta["object_ids"]
    ids = [record.id for _, record in records]
    assert len(ids) == len(set(ids))


def test_all_tasks_are_made(records):
    made = {record.task for _, record in records}
    assert made == set(TASKS)


# ---------------------------------------------------------------------------------------------
# Each task's answer against the geometry
# ---------------------------------------------------------------------------------------------


def test_detection_answers_every_matching_object_and_only_those(records):
    partial = 0
    for example, record in of_task(records, "detection"):
        labels = [q["label"] for q in record.meta["queries"]]
        assert record.prompt == prompts.detection_prompt(labels)
        groups, _ = answered_objects(record)
        expected = {label: fitting(example.scene, phrase_of(label)) for label in labels}
        assert groups == {label: ids for label, ids in expected.items() if ids}
        assert any(expected.values()), "a detection record must find something"
        partial += any(not ids for ids in expected.values())
    assert partial > 0, "no detection record mixed an absent label in"


def test_rejection_records_ask_only_for_absent_labels(records):
    for example, record in of_task(records, "rejection"):
        labels = [q["label"] for q in record.meta["queries"]]
        assert record.answer == prompts.NO_OBJECT_ANSWER
        for label in labels:
            category, colour, _ = phrase_of(label)
            assert category in ShapeWorldConfig.train().categories
            assert fitting(example.scene, (category, colour, None)) == [], f"{label} is in the scene"


def test_rejection_labels_are_absent_even_when_most_labels_are_present():
    config = ShapeWorldConfig.train(categories=("circle", "star", "ring"), colours=("red", "blue"),
                                    objects_per_image=(3, 6), task_counts={"detection": 5}, rejection_share=1.0)
    rejections = 0
    for index in range(20):
        scene = generate_scene(config, index)
        present = {(obj.category, obj.colour) for obj in scene.objects}
        for record in make_task_records(scene, config=config):
            if record.task == "detection":  # only when no absent label exists
                assert len(present) == 6
                continue
            rejections += 1
            assert record.answer == prompts.NO_OBJECT_ANSWER
            for query in record.meta["queries"]:
                category, colour, _ = phrase_of(query["label"])
                assert fitting(scene, (category, colour, None)) == []
    assert rejections >= 80


def test_rejection_share(tmp_path):
    def rejection_share(share):
        config = ShapeWorldConfig.train(task_counts={"detection": 20}, rejection_share=share)
        tasks = [r.task for i in range(20) for r in make_task_records(generate_scene(config, i), config=config)]
        assert len(tasks) == 400
        return tasks.count("rejection") / len(tasks)

    assert rejection_share(0.0) == 0.0
    assert rejection_share(1.0) == 1.0
    assert 0.14 <= rejection_share(0.2) <= 0.26


def test_counting_number_equals_the_regions_listed_and_the_matching_objects(records):
    zero = 0
    for example, record in of_task(records, "counting"):
        label = record.meta["label"]
        assert record.prompt == prompts.counting_prompt(label)
        groups, parsed = answered_objects(record)
        expected = fitting(example.scene, phrase_of(label))
        assert parsed.count == len(expected) == record.meta["count"]
        assert groups == ({label: expected} if expected else {})
        zero += not expected
    assert zero > 0


def test_rec_answers_follow_the_geometry(records):
    templates = Counter()
    for example, record in of_task(records, "rec"):
        scene, meta = example.scene, record.meta
        expression = meta["expression"]
        assert record.prompt == prompts.detection_prompt(expression)
        groups, _ = answered_objects(record)
        targets = groups.get(expression, [])
        assert set(groups) <= {expression}
        assert meta["no_target"] == (not targets)
        template = meta["template"]
        templates[template] += 1
        objects = scene.objects
        if template == "attribute":
            phrase = (meta["phrase"]["category"], meta["phrase"]["colour"], meta["phrase"]["texture"])
            assert targets == fitting(scene, phrase)
        elif template == "superlative":
            phrase = (meta["phrase"]["category"], meta["phrase"]["colour"], meta["phrase"]["texture"])
            candidates = [objects[i] for i in fitting(scene, phrase)]
            if not targets:
                assert candidates == []
                continue
            key = {
                "largest": lambda o: -amodal_size(o), "smallest": amodal_size,
                "leftmost": lambda o: centre(o.bbox)[0], "rightmost": lambda o: -centre(o.bbox)[0],
                "topmost": lambda o: centre(o.bbox)[1], "bottommost": lambda o: -centre(o.bbox)[1],
            }[meta["superlative"]]
            ranked = sorted(candidates, key=key)
            assert targets == [ranked[0].id] and key(ranked[0]) < key(ranked[1])
        elif template == "relation":
            anchor = objects[meta["anchor_object_id"]]
            anchor_text = expression.split(f" {meta['relation']} the ", 1)[1]
            assert fitting(scene, phrase_of(anchor_text)) == [anchor.id], "the anchor phrase must be unique"
            phrase = (meta["phrase"]["category"], meta["phrase"]["colour"], meta["phrase"]["texture"])
            candidates = fitting(scene, phrase, exclude=anchor.id)
            wholly_on_side = [i for i in candidates if side_gap(objects[i].bbox, anchor.bbox, meta["relation"]) >= 0]
            assert targets == wholly_on_side
        elif template == "closest":
            anchor = objects[meta["anchor_object_id"]]
            phrase = (meta["phrase"]["category"], meta["phrase"]["colour"], meta["phrase"]["texture"])
            candidates = fitting(scene, phrase, exclude=anchor.id)
            nearest = min(candidates, key=lambda i: math.dist(centre(objects[i].bbox), centre(anchor.bbox)))
            assert targets == [nearest]
        elif template == "word":
            assert targets == sorted(o.id for o in objects if o.word == meta["word"])
        else:
            raise AssertionError(f"unknown template {template}")
    assert set(templates) >= {"attribute", "superlative", "relation", "closest"}
    no_target = sum(record.meta["no_target"] for _, record in of_task(records, "rec"))
    assert 0 < no_target < len(of_task(records, "rec"))


def test_region_captions_describe_the_object_in_the_region(records):
    for task in ("region_caption_brief", "region_caption_detailed"):
        for example, record in of_task(records, task):
            (region,) = record.meta["regions"]
            token = prompts.region_token(region)
            build = prompts.brief_caption_prompt if task.endswith("brief") else prompts.detailed_caption_prompt
            assert record.prompt == build([region])
            holder = region_object(record, region)
            caption = record.answer.lower()
            if holder < 0:
                assert "blob" in caption
                continue
            obj = example.scene.objects[holder]
            assert f"{obj.colour} {obj.category}" in caption
            if task.endswith("detailed"):
                column = ("left", None, "right")[min(2, int(3 * centre(obj.bbox)[0] / example.scene.width))]
                row = ("top", None, "bottom")[min(2, int(3 * centre(obj.bbox)[1] / example.scene.height))]
                for word in (column, row):
                    if word:
                        assert word in caption
                assert ("hidden" in caption) == (obj.visible_fraction < 0.9)
                if obj.word:
                    assert obj.word.lower() in caption
            assert token not in record.answer


def test_region_ocr_reads_the_word_of_the_region(records):
    for example, record in of_task(records, "region_ocr"):
        (region,) = record.meta["regions"]
        assert record.prompt == prompts.ocr_prompt([region])
        obj = example.scene.objects[region_object(record, region)]
        assert obj.word and record.answer == obj.word


def test_region_vqa_answers_are_true(records):
    kinds = Counter()
    for example, record in of_task(records, "region_vqa"):
        objects = [example.scene.objects[region_object(record, k)] for k in record.meta["regions"]]
        for k in record.meta["regions"]:
            assert prompts.region_token(k) in record.prompt
        kind = record.meta["question_type"]
        kinds[kind] += 1
        answer = record.answer
        if kind == "colour":
            assert answer == objects[0].colour
        elif kind == "shape":
            assert answer == objects[0].category
        elif kind == "size":
            assert answer == objects[0].size
        elif kind == "relation":
            relation = next(r for r in ("left of", "right of", "above", "below") if f" {r} " in record.prompt)
            assert answer == ("Yes" if side_gap(objects[0].bbox, objects[1].bbox, relation) >= 0 else "No")
        elif kind == "same_colour":
            assert answer == ("Yes" if objects[0].colour == objects[1].colour else "No")
        elif kind == "same_shape":
            assert answer == ("Yes" if objects[0].category == objects[1].category else "No")
        elif kind == "larger":
            assert answer == ("Yes" if amodal_size(objects[0]) > amodal_size(objects[1]) else "No")
        else:
            raise AssertionError(kind)
    assert len(kinds) >= 4


def test_visual_prompt_detection_finds_every_object_of_the_reference_category(records):
    for example, record in of_task(records, "visual_prompt_detection"):
        (region,) = record.meta["regions"]
        assert record.prompt == prompts.visual_prompt_detection_prompt([region])
        reference = example.scene.objects[region_object(record, region)]
        groups, _ = answered_objects(record)
        same = sorted(o.id for o in example.scene.objects if o.category == reference.category)
        assert groups == {reference.category: same} and reference.id in same


def test_grounded_caption_phrases_name_their_objects(records):
    numbers = {"a": 1, "an": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
               "nine": 9, "ten": 10, "eleven": 11, "twelve": 12}
    for example, record in of_task(records, "grounded_caption"):
        groups, parsed = answered_objects(record)
        assert parsed.plain_text.startswith("The image shows")
        mentioned = set()
        for phrase, ids in groups.items():
            count_word, rest = phrase.split(" ", 1)
            category, colour, _ = phrase_of(rest)
            assert ids == fitting(example.scene, (category, colour, None))
            assert len(ids) == (numbers[count_word] if count_word in numbers else int(count_word))
            mentioned |= set(ids)
        if record.meta["mentions_all"]:
            assert mentioned == set(range(len(example.scene.objects)))


def test_detect_everything_lists_all_objects_by_category(records):
    for example, record in of_task(records, "detect_everything"):
        groups, _ = answered_objects(record)
        expected = {}
        for obj in example.scene.objects:
            expected.setdefault(obj.category, []).append(obj.id)
        assert groups == expected


def test_image_questions_have_true_answers_and_no_regions(records):
    kinds = Counter()
    for example, record in of_task(records, "image_qa"):
        assert record.bbox_list == [] and "<region" not in record.prompt + record.answer
        objects = example.scene.objects
        kind = record.meta["question_type"]
        kinds[kind] += 1
        question, answer = record.prompt, record.answer
        if kind == "count_all":
            assert answer == str(len(objects))
        elif kind == "count_colour":
            colour = question.split()[2]
            assert answer == str(sum(o.colour == colour for o in objects))
        elif kind == "exists":
            label = re.match(r"Is there an? (.+) in this image\?", question).group(1)
            assert answer == ("Yes" if fitting(example.scene, phrase_of(label)) else "No")
        elif kind == "largest_colour":
            ranked = sorted(objects, key=amodal_size, reverse=True)
            assert answer == ranked[0].colour and amodal_size(ranked[0]) > amodal_size(ranked[1])
        elif kind == "extreme_shape":
            direction = question.rstrip("?").split()[-1]
            axis, sign = {"left": (0, 1), "right": (0, -1), "top": (1, 1), "bottom": (1, -1)}[direction]
            ranked = sorted(objects, key=lambda o: sign * centre(o.bbox)[axis])
            assert answer == f"{ranked[0].colour} {ranked[0].category}"
        elif kind == "most_common_colour":
            tally = Counter(o.colour for o in objects).most_common()
            assert answer == tally[0][0] and (len(tally) == 1 or tally[0][1] > tally[1][1])
        elif kind == "word":
            assert [o.word for o in objects if o.word] == [answer]
        elif kind == "choice":
            options = re.findall(r"\(([A-D])\) ([a-z ]+?)(?= \(|$)", question)
            fits = [(letter, text) for letter, text in options if fitting(example.scene, phrase_of(text))]
            assert len(options) >= 2 and len(fits) == 1
            assert answer == f"({fits[0][0]}) {fits[0][1]}"
        else:
            raise AssertionError(kind)
    assert len(kinds) >= 4


# ---------------------------------------------------------------------------------------------
# The coordinate twin
# ---------------------------------------------------------------------------------------------


def json_boxes(text):
    block = re.search(r"```json\n(.*?)\n```", text, re.S)
    return (json.loads(block.group(1)), text[: block.start()] + text[block.end():]) if block else ([], text)


def test_coordinate_twins_carry_the_same_content_as_pixel_boxes(examples):
    for example in examples:
        scene = example.scene
        for fo1, twin in zip(example.fo1_records(), example.coordinate_records()):
            twin.validate()
            assert twin.id == fo1.id + "-coords" and twin.task == fo1.task and twin.image == fo1.image
            assert twin.bbox_list == [] and "<region" not in twin.prompt + twin.answer
            for box in twin.meta.get("region_boxes", []):
                assert "[" + ", ".join(str(round(v)) for v in box) + "]" in twin.prompt
            if "groups" not in fo1.meta:
                assert twin.answer == fo1.answer
                continue
            entries, rest = json_boxes(twin.answer)
            expected = sorted((g["label"], tuple(scene.objects[i].bbox)) for g in fo1.meta["groups"] for i in g["object_ids"])
            assert sorted((e["label"], tuple(e["bbox_2d"])) for e in entries) == expected
            if not expected:
                assert prompts.NO_OBJECT_ANSWER in twin.answer
            if fo1.task == "counting":
                assert rest.strip().endswith(str(fo1.meta["count"]))
            if fo1.task == "grounded_caption":
                plain = re.sub(r"<objects>.*?</objects>|</?ground>", "", fo1.answer)
                assert rest.strip() == plain


# ---------------------------------------------------------------------------------------------
# Dataset files, COCO, CLI, examples
# ---------------------------------------------------------------------------------------------


def test_written_dataset_is_complete_and_consistent(tmp_path):
    summary = write_dataset(tmp_path, 5, seed=0, split="train", previews=2)
    coco = json.loads((tmp_path / "train.coco.json").read_text())
    assert [image["id"] for image in coco["images"]] == list(range(5))
    assert [c["name"] for c in coco["categories"]] == list(SHAPES)
    assert len(coco["annotations"]) == summary.objects
    for annotation in coco["annotations"]:
        x, y, w, h = annotation["bbox"]
        assert w > 0 and h > 0 and annotation["iscrowd"] == 0 and annotation["area"] <= w * h
        assert set(annotation["attributes"]) >= {"colour", "size", "texture", "outline", "word"}
    for image in coco["images"]:
        assert (tmp_path / image["file_name"]).is_file()
    fo1 = list(read_records(tmp_path / "train.fo1.jsonl"))
    coords = list(read_records(tmp_path / "train.coords.jsonl"))
    assert len(fo1) == len(coords) == sum(summary.records.values())
    assert Counter(r.task for r in fo1) == Counter(summary.records)
    assert sorted(p.name for p in (tmp_path / "previews" / "train").iterdir()) == ["000000.png", "000001.png"]
    assert ShapeWorldConfig.from_dict(json.loads((tmp_path / "train.config.json").read_text())["config"]) == ShapeWorldConfig()
    assert not list(tmp_path.glob("*.partial"))


def test_coco_ground_truth_scores_perfectly_with_pycocotools(tmp_path):
    pytest.importorskip("pycocotools")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    write_dataset(tmp_path, 4, seed=1, split="val", config=ShapeWorldConfig.heldout(), coordinates=False)
    assert not (tmp_path / "val.coords.jsonl").exists()
    ground_truth = COCO(str(tmp_path / "val.coco.json"))
    detections = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
                  for a in ground_truth.dataset["annotations"]]
    evaluation = COCOeval(ground_truth, ground_truth.loadRes(detections), "bbox")
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    assert evaluation.stats[0] == pytest.approx(1.0)


def test_config_validation_names_the_bad_knob():
    bad = [
        (dict(objects_per_image=(0, 5)), "objects_per_image"),
        (dict(objects_per_image=(1, 61)), "objects_per_image"),
        (dict(categories=("circle", "blob")), "categories"),
        (dict(colours=()), "colours"),
        (dict(occlusion=1.5), "occlusion"),
        (dict(image_size=(32, 32)), "image_size"),
        (dict(size_range=(0.3, 0.1)), "size_range"),
        (dict(max_proposals=10, objects_per_image=(1, 20)), "max_proposals"),
        (dict(task_counts={"rejection": 1}), "rejection records come from detection"),
        (dict(task_counts={"dance": 1}), "unknown task"),
        (dict(image_format="gif"), "image_format"),
        (dict(max_rotation=90), "max_rotation"),
    ]
    for overrides, message in bad:
        with pytest.raises(ValueError, match=message):
            ShapeWorldConfig(**overrides)
    with pytest.raises(ValueError, match="preset"):
        ShapeWorldConfig.preset("hard")
    with pytest.raises(ValueError, match="unknown ShapeWorld config"):
        ShapeWorldConfig.from_dict({"colour_count": 3})
    config = ShapeWorldConfig.heldout(categories=("star", "heart"))
    assert ShapeWorldConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="seed"):
        generate_scene(ShapeWorldConfig(), 0, seed=-1)
    with pytest.raises(ValueError, match="split"):
        write_dataset("/tmp/unused", 1, split="../x")


def cli_app():
    from vlmfo1.cli import data

    app = typer.Typer()
    data.register(app)
    return app


def test_cli_writes_a_dataset(tmp_path):
    result = CliRunner().invoke(cli_app(), [
        "data", "shapeworld", "--out", str(tmp_path), "--n", "3", "--seed", "4", "--split", "heldout",
        "--workers", "1", "--no-progress", "--categories", "circle,star", "--max-objects", "6", "--format", "png",
    ])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout[result.stdout.index("{"):])
    assert summary["images"] == 3
    config = json.loads((tmp_path / "heldout.config.json").read_text())["config"]
    assert config["categories"] == ["circle", "star"] and config["objects_per_image"][1] == 6
    assert config["occlusion"] == ShapeWorldConfig.heldout().occlusion  # split name picks the preset
    assert sorted(p.suffix for p in (tmp_path / "images" / "heldout").iterdir()) == [".png"] * 3


def test_cli_reports_bad_input_clearly(tmp_path):
    result = CliRunner().invoke(cli_app(), ["data", "shapeworld", "--out", str(tmp_path), "--n", "2", "--categories", "circle,blob"])
    assert result.exit_code == 2 and "categories" in result.output
    result = CliRunner().invoke(cli_app(), ["data", "shapeworld", "--out", str(tmp_path), "--n", "2", "--tasks", "rejection"])
    assert result.exit_code == 2 and "rejection" in result.output


def test_cli_is_registered_in_the_main_app():
    from vlmfo1.cli.main import COMMAND_MODULES

    assert "vlmfo1.cli.data" in COMMAND_MODULES


def test_committed_examples_are_valid_small_and_reproducible(tmp_path):
    if not (EXAMPLES / "train.config.json").is_file():
        pytest.skip("examples/shapeworld is not present")
    total = sum(p.stat().st_size for p in EXAMPLES.rglob("*") if p.is_file())
    assert total <= 2 * 1024 * 1024
    settings = json.loads((EXAMPLES / "train.config.json").read_text())
    config = ShapeWorldConfig.from_dict(settings["config"])
    write_dataset(tmp_path, settings["n"], seed=settings["seed"], split=settings["split"], config=config)
    for name in ("train.fo1.jsonl", "train.coords.jsonl", "train.coco.json"):
        assert (tmp_path / name).read_bytes() == (EXAMPLES / name).read_bytes(), f"{name} differs: regenerate the examples"
    for record in read_records(EXAMPLES / "train.fo1.jsonl"):
        assert (EXAMPLES / record.image).is_file()
    from PIL import Image

    for image in sorted((EXAMPLES / "images").rglob("*.jpg")):
        fresh = np.asarray(Image.open(tmp_path / image.relative_to(EXAMPLES)), dtype=int)
        # JPEG decoders may differ by a unit here and there across library versions.
        assert np.abs(fresh - np.asarray(Image.open(image), dtype=int)).mean() < 1.0
