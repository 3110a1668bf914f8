import re

import pytest

from vlmfo1.data.shapeworld.text_tasks import MARKERS, NONE_FOUND, lookup_records
from vlmfo1.data.shapeworld.vocab import COLOURS, SHAPES


def test_lookup_answers_name_exactly_the_fitting_items():
    records = lookup_records(300, seed=3)
    multi = none = 0
    for record in records:
        assert record.image is None and record.bbox_list == [] and "<" not in record.prompt + record.answer
        items = re.findall(r"\(([A-Z])\) (\w+) (\w+)", record.prompt)
        assert [letter for letter, _, _ in items] == list(MARKERS[: len(items)])
        for part in record.answer.split("; "):
            label, found = part.split(": ")
            words = label.split()
            colour = next((w for w in words if w in COLOURS), None)
            shape = next((s for s in SHAPES if s in (words[-1], words[-1].rstrip("s"), words[-1][:-2])), None)
            fitting = [m for m, c, s in items if colour in (None, c) and shape in (None, s)]
            if found == NONE_FOUND:
                assert fitting == []
                none += 1
            else:
                assert re.findall(r"\(([A-Z])\)", found) == fitting
                multi += len(fitting) > 1
    assert multi > 50 and none > 20


def test_lookup_records_are_seeded():
    assert lookup_records(5, seed=1) == lookup_records(5, seed=1) != lookup_records(5, seed=2)


def test_region_keyed_lookup_is_detection_over_region_tokens():
    from vlmfo1.data.records import FO1Record
    from vlmfo1.parsing import parse_answer

    records = lookup_records(300, seed=4, max_items=16, keys="regions")
    multi = none = 0
    for record in records:
        record.validate()
        listed, question = record.prompt.split("\n")
        items = re.findall(r"<region(\d+)> (\w+) (\w+)", listed)
        assert [int(k) for k, _, _ in items] == list(range(len(items))) and len(items) <= 16
        labels = re.fullmatch(r"Please detect (.+) in this image\. Answer the question with object indexes\.", question)
        assert labels is not None
        expected = {}
        for label in labels.group(1).split(", "):
            *colour, shape = label.split()
            assert shape in SHAPES and colour in ([], *[[c] for c in COLOURS])
            fitting = [int(k) for k, c, s in items if s == shape and (not colour or c == colour[0])]
            if fitting:
                expected[label] = fitting
        parsed = parse_answer(record.answer)
        assert {g.label: [r.index for r in g.regions] for g in parsed.groups} == expected
        assert (record.answer == "None") == (not expected)
        none += not expected
        multi += any(len(v) > 1 for v in expected.values())
    assert multi > 50 and none > 20
    assert isinstance(records[0], FO1Record) and records[0].image is None


def test_region_keyed_lookup_asks_about_single_regions_at_the_describe_share():
    records = lookup_records(400, seed=5, keys="regions", describe_share=0.5)
    described = [r for r in records if "described" in r.meta]
    assert 150 < len(described) < 250
    kinds = set()
    for record in described:
        record.validate()
        colour, shape = record.meta["items"][record.meta["described"]]
        question = record.prompt.split("\n")[1]
        region = f"<region{record.meta['described']}>"
        expected = {f"What shape is {region}?": shape, f"What colour is {region}?": colour,
                    f"Provide a brief description for {region}.": f"{colour} {shape}"}
        assert expected[question] == record.answer
        kinds.add(question.split()[1])
    assert kinds == {"shape", "colour", "a"}
    with pytest.raises(ValueError, match="keys='regions'"):
        lookup_records(2, seed=0, describe_share=0.5)


def test_repeat_records_ask_to_copy_words_and_region_tokens():
    from vlmfo1.data.shapeworld.text_tasks import REPEAT_PROMPT, repeat_records

    records = repeat_records(200, seed=1, min_words=2, max_words=5, region_share=0.3)
    lengths, regions = set(), 0
    for record in records:
        assert record.image is None and record.task == "text_repeat"
        assert record.prompt == f"{REPEAT_PROMPT} {record.answer}"
        words = record.answer.split(" ")
        lengths.add(len(words))
        regions += sum(w.startswith("<region") for w in words)
        assert all(w.startswith("<region") or w in COLOURS or w in SHAPES or w.isdigit() for w in words)
    assert lengths == {2, 3, 4, 5}
    assert 0.2 < regions / sum(len(r.answer.split(" ")) for r in records) < 0.4
    assert repeat_records(3, seed=1) == repeat_records(3, seed=1) != repeat_records(3, seed=2)
    with pytest.raises(ValueError, match="min_words"):
        repeat_records(1, seed=0, min_words=4, max_words=2)


def test_slot_keyed_lookup_moves_the_items_into_region_text():
    regions = lookup_records(50, seed=6, keys="regions", describe_share=0.3)
    slots = lookup_records(50, seed=6, keys="slots", describe_share=0.3)
    for by_text, by_slot in zip(regions, slots):
        listed, question = by_text.prompt.split("\n")
        assert by_slot.prompt == question and by_slot.answer == by_text.answer
        assert by_slot.region_text == [f"{c} {s}" for c, s in by_text.meta["items"]]
        assert listed == " ".join(f"<region{k}> {t}" for k, t in enumerate(by_slot.region_text))
        assert by_text.region_text == []
        by_slot.validate()


def test_random_repeat_words_are_short_letter_strings_and_region_tokens():
    from vlmfo1.data.shapeworld.text_tasks import repeat_records

    records = repeat_records(100, seed=2, vocabulary="random", region_share=0.2)
    words = [w for r in records for w in r.answer.split(" ")]
    plain = [w for w in words if not w.startswith("<region")]
    assert all(re.fullmatch(r"[a-z0-9]{1,4}", w) for w in plain)
    assert len(set(plain)) > 0.7 * len(plain)  # few words twice (one-letter ones repeat): nothing to memorise
    assert 0.1 < (len(words) - len(plain)) / len(words) < 0.3
    with pytest.raises(ValueError, match="vocabulary"):
        repeat_records(1, seed=0, vocabulary="klingon")


def test_present_share_takes_labels_from_the_list():
    """Freely drawn labels name nothing in a short list about two times in three; at present_share 1
    every label is a listed item's (or its shape's), so every answer names regions. Share 0 draws as
    before (same records)."""
    def none_share(records):
        return sum(record.answer == "None" for record in records) / len(records)

    free = lookup_records(300, seed=5, max_items=2, max_queries=1, keys="slots")
    present = lookup_records(300, seed=5, max_items=2, max_queries=1, keys="slots", present_share=1.0)
    assert none_share(free) > 0.5 and none_share(present) == 0.0
    for record in present:
        asked = re.fullmatch(r"Please detect (.+) in this image\. Answer the question with object indexes\.",
                             record.prompt.split("\n")[-1]).group(1)
        *colour, shape = asked.split()
        assert any(s == shape and (not colour or c == colour[0]) for c, s in record.meta["items"])
    assert lookup_records(50, seed=5, max_items=2, keys="slots", present_share=0.0) == lookup_records(50, seed=5, max_items=2, keys="slots")
    with pytest.raises(ValueError, match="present_share"):
        lookup_records(1, seed=0, keys="slots", present_share=1.5)


def test_turns_ask_several_questions_about_one_list(small_shapeworld_tokenizer):
    """Each turn is a detection over the same slots, answered from that turn's labels; the trainer's
    encoding puts labels on every answer."""
    from vlmfo1.parsing import parse_answer
    from vlmfo1.processing.image_processing import FO1ImageProcessor
    from vlmfo1.processing.processing_fo1 import FO1Processor
    from vlmfo1.training.data import encode_record

    records = lookup_records(50, seed=6, max_items=4, max_queries=1, keys="slots", turns=3, present_share=0.5)
    for record in records:
        record.validate()
        assert [turn["from"] for turn in record.conversations] == ["human", "gpt"] * 3
        items = record.meta["items"]
        assert record.region_text == [f"{c} {s}" for c, s in items]
        for question, answer in zip(record.conversations[::2], record.conversations[1::2]):
            labels = re.fullmatch(r"Please detect (.+) in this image\. Answer the question with object indexes\.",
                                  question["value"]).group(1)
            *colour, shape = labels.split()
            fitting = [k for k, (c, s) in enumerate(items) if s == shape and (not colour or c == colour[0])]
            parsed = parse_answer(answer["value"])
            assert [r.index for g in parsed.groups for r in g.regions] == fitting
            assert (answer["value"] == "None") == (not fitting)
    assert len(records[0].meta["more_queries"]) == 2

    processor = FO1Processor(FO1ImageProcessor(), small_shapeworld_tokenizer)
    sample = encode_record(records[0], None, processor)
    supervised = small_shapeworld_tokenizer.decode(sample["labels"][sample["labels"] != -100])
    assert supervised.count("<|im_end|>") == 3
    assert all(turn["value"] in supervised for turn in records[0].conversations[1::2])
    with pytest.raises(ValueError, match="turns"):
        lookup_records(1, seed=0, turns=2)  # letter keys: one question


def test_word_slot_records_put_each_objects_label_in_its_slot_and_drop_empty_boxes(tmp_path):
    import json

    from vlmfo1.data.records import read_records
    from vlmfo1.data.shapeworld import ShapeWorldConfig, write_dataset
    from vlmfo1.data.shapeworld.text_tasks import word_slot_records

    config = ShapeWorldConfig.train(objects_per_image=(2, 4), background_proposals=(1, 3), image_size=(96, 96),
                                    task_counts={"detection": 2, "counting": 1})
    write_dataset(tmp_path, n=4, seed=1, split="train", config=config, coordinates=False)
    records = list(read_records(tmp_path / "train.fo1.jsonl"))
    coco = json.loads((tmp_path / "train.coco.json").read_text())
    words = word_slot_records(records, coco)
    assert len(words) == len(records)
    label_at = {(a["image_id"], tuple(a["bbox"])): a["attributes"]["label"] for a in coco["annotations"]}
    box_of = {(a["image_id"], a["id"]): a["bbox"] for a in coco["annotations"]}
    named = lambda r: sorted(tuple(r.bbox_list[int(k)]) for k in re.findall(r"<region(\d+)>", r.answer))
    dropped = 0
    for before, after in zip(records, words):
        after.validate()
        assert after.image == before.image and after.id == before.id + "-words"
        assert named(after) == named(before)  # the answer names the same boxes
        objects = before.meta["proposal_objects"]
        dropped += sum(obj < 0 for obj in objects)
        assert len(after.bbox_list) == sum(obj >= 0 for obj in objects) == len(after.region_text)
        scene = before.meta["scene_index"]
        kept = [k for k, obj in enumerate(objects) if obj >= 0]
        for k, text in zip(kept, after.region_text):
            gt = box_of[(scene, scene * 100 + objects[k] + 1)]
            assert text == label_at[(scene, tuple(gt))]
    assert dropped > 0
    with pytest.raises(ValueError, match="not a ShapeWorld image record"):
        word_slot_records(lookup_records(1, seed=0), coco)
