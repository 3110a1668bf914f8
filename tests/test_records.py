import json

import pytest

from vlmfo1 import prompts
from vlmfo1.data.records import FO1Record, RecordError, read_records, write_records


def make_record(**changes):
    data = {
        "id": "r0",
        "image": "images/a.jpg",
        "task": "detection",
        "bbox_list": [[0, 0, 10, 10], [5.5, 5, 20, 30]],
        "score_list": [0.9, 0.4],
        "conversations": [
            {"from": "human", "value": "<image>\nPlease detect circle in this image. Answer the question with object indexes."},
            {"from": "gpt", "value": "<ground>circle</ground><objects><region1></objects>"},
        ],
        "meta": {"targets": [1]},
    }
    data.update(changes)
    return data


def test_round_trip_through_dict_and_json_keeps_every_field():
    data = make_record()
    record = FO1Record.from_dict(data)
    assert record.to_dict() == data
    assert json.loads(record.to_json()) == data
    assert record.prompt.startswith("Please detect circle")
    assert record.answer == "<ground>circle</ground><objects><region1></objects>"


def test_single_turn_puts_the_image_tag_first_and_validates():
    record = FO1Record.single_turn("x", "img.png", "How many stars?", "3", bbox_list=[[1, 2, 3, 4]], score_list=[0.5], task="counting")
    assert record.conversations[0] == {"from": "human", "value": f"{prompts.IMAGE_TAG}\nHow many stars?"}
    assert record.conversations[1] == {"from": "gpt", "value": "3"}
    record.validate()
    assert record.prompt == "How many stars?"


def test_upstream_style_record_without_task_or_meta_reads_with_defaults():
    data = make_record()
    del data["task"], data["meta"]
    record = FO1Record.from_dict(data)
    assert record.task == "unknown" and record.meta == {}


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"id": ""}, "non-empty"),
        ({"image": None}, "image"),
        ({"task": ""}, "task"),
        ({"meta": []}, "meta"),
        ({"bbox_list": [[0, 0, 10]], "score_list": [0.1]}, "box 0"),
        ({"bbox_list": [[0, 0, float("nan"), 4]], "score_list": [0.1]}, "finite"),
        ({"bbox_list": [[0, 0, True, 4]], "score_list": [0.1]}, "finite"),
        ({"bbox_list": [[10, 0, 5, 4]], "score_list": [0.1]}, "x2 < x1"),
        ({"score_list": [0.9]}, "1 scores for 2 boxes"),
        ({"score_list": [0.9, "high"]}, "score 1"),
        ({"bbox_list": [[0, 0, 1, 1]] * 101, "score_list": [0.5] * 101}, "at most 100"),
    ],
)
def test_malformed_fields_are_rejected_with_the_rule_named(changes, message):
    with pytest.raises(RecordError, match=message):
        FO1Record.from_dict(make_record(**changes))


def test_missing_and_unknown_fields_are_errors_not_silently_dropped():
    data = make_record()
    del data["conversations"]
    with pytest.raises(RecordError, match="missing field"):
        FO1Record.from_dict(data)
    with pytest.raises(RecordError, match=r"unknown field\(s\) \['width'\]"):
        FO1Record.from_dict(make_record(width=640))
    with pytest.raises(RecordError, match="JSON object"):
        FO1Record.from_dict([1, 2])


def human(text):
    return {"from": "human", "value": text}


def gpt(text):
    return {"from": "gpt", "value": text}


@pytest.mark.parametrize(
    "turns, message",
    [
        ([human("<image>\nhi")], "at least one human and one gpt"),
        ([gpt("x"), human("<image>\nhi")], "expected 'human'"),
        ([human("hi <image>"), gpt("x")], "must start with"),
        ([human("<image>\nhi"), gpt("x"), human("<image>\nagain"), gpt("y")], "2 <image> tags"),
        ([human("<image>\nhi"), gpt("x"), human("more?")], "ends with a human turn"),
        ([human("<image>\nWhat is <region2>?"), gpt("x")], "names <region2> but bbox_list has 2 boxes"),
        ([human("<image>\nhi"), gpt("<region7>")], "<region7>"),
        ([human("<image>\nhi"), {"from": "gpt", "value": "x", "extra": 1}], "turn 1 must be"),
        ([human("<image>\nhi"), gpt(3)], "value must be a string"),
    ],
)
def test_conversation_rules(turns, message):
    with pytest.raises(RecordError, match=message):
        FO1Record.from_dict(make_record(conversations=turns))


def test_multi_turn_conversation_is_valid():
    turns = [human("<image>\nWhat colour is <region0>?"), gpt("red"), human("And <region1>?"), gpt("blue")]
    assert len(FO1Record.from_dict(make_record(conversations=turns)).conversations) == 4


def test_write_then_read_gives_the_same_records(tmp_path):
    records = [FO1Record.from_dict(make_record(id=f"r{i}")) for i in range(3)]
    path = tmp_path / "records.jsonl"
    assert write_records(path, records) == 3
    assert [r.to_dict() for r in read_records(path)] == [r.to_dict() for r in records]
    assert len(path.read_text(encoding="utf-8").splitlines()) == 3


def test_write_refuses_an_invalid_record_and_leaves_no_file(tmp_path):
    good = FO1Record.from_dict(make_record())
    bad = FO1Record.from_dict(make_record(id="bad"))
    bad.score_list = [0.1]
    path = tmp_path / "records.jsonl"
    with pytest.raises(RecordError, match="'bad'"):
        write_records(path, [good, bad])
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


def test_write_failure_keeps_the_previous_file(tmp_path):
    path = tmp_path / "records.jsonl"
    write_records(path, [FO1Record.from_dict(make_record())])
    before = path.read_bytes()
    bad = FO1Record.from_dict(make_record())
    bad.bbox_list = [[0, 0, 1]]
    with pytest.raises(RecordError):
        write_records(path, [bad])
    assert path.read_bytes() == before


def test_read_names_file_and_line_of_a_bad_line_and_skips_blank_lines(tmp_path):
    path = tmp_path / "records.jsonl"
    good = json.dumps(make_record())
    path.write_text(good + "\n\n" + good + "\n", encoding="utf-8")
    assert len(list(read_records(path))) == 2
    path.write_text(good + "\n{not json\n", encoding="utf-8")
    with pytest.raises(RecordError, match=r"records\.jsonl:2: not valid JSON"):
        list(read_records(path))
    path.write_text(good + "\n" + json.dumps(make_record(score_list=[])) + "\n", encoding="utf-8")
    with pytest.raises(RecordError, match=r"records\.jsonl:2: record 'r0': 0 scores for 2 boxes"):
        list(read_records(path))


def test_text_only_records_have_no_image_tag_and_no_boxes(tmp_path):
    record = FO1Record.single_turn("t", None, "Find stars.", "none")
    assert record.conversations[0]["value"] == "Find stars." and record.prompt == "Find stars."
    write_records(tmp_path / "t.jsonl", [record])
    assert list(read_records(tmp_path / "t.jsonl")) == [record]
    with pytest.raises(RecordError, match="text-only"):
        FO1Record.single_turn("t", None, "<image>\nFind stars.", "none").validate()
    with pytest.raises(RecordError, match="text-only record .image null. cannot have boxes"):
        FO1Record.single_turn("t", None, "Find <region0>.", "none", bbox_list=[[0, 0, 1, 1]], score_list=[1.0]).validate()
    with pytest.raises(RecordError, match="or null"):
        FO1Record.single_turn("t", "", "Find stars.", "none").validate()
    # Region tokens in a text-only record are keys its own text defines; the answer may name only those.
    FO1Record.single_turn("t", None, "<region0> red star <region1> blue star\nFind red.", "<region0>").validate()
    with pytest.raises(RecordError, match="names <region2>, which neither region_text nor an earlier human turn"):
        FO1Record.single_turn("t", None, "<region0> red star <region1> blue star\nFind red.", "<region2>").validate()


def test_region_text_records_round_trip_and_define_their_regions(tmp_path):
    record = FO1Record.single_turn("t", None, "Please detect blue star.", "<ground>blue star</ground><objects><region1></objects>",
                                   region_text=["red circle", "blue star"])
    record.validate()
    assert record.to_dict()["region_text"] == ["red circle", "blue star"]
    assert "region_text" not in FO1Record.single_turn("u", None, "Find stars.", "none").to_dict()  # files unchanged
    write_records(tmp_path / "t.jsonl", [record])
    assert list(read_records(tmp_path / "t.jsonl")) == [record]
    with pytest.raises(RecordError, match="names <region2>, which neither region_text"):
        FO1Record.single_turn("t", None, "Find it.", "<region2>", region_text=["red circle", "blue star"]).validate()
    with pytest.raises(RecordError, match="region_text gives the words of each box: 1 texts for 2 boxes"):
        FO1Record.single_turn("t", "a.png", "Find it.", "none", bbox_list=[[0, 0, 2, 2], [1, 1, 3, 3]], score_list=[0.9, 0.8],
                              region_text=["red circle"]).validate()
    # An image record may fill its boxes' slots with words: one text per box.
    FO1Record.single_turn("t", "a.png", "Find it.", "<region1>", bbox_list=[[0, 0, 2, 2], [1, 1, 3, 3]], score_list=[0.9, 0.8],
                          region_text=["red circle", "blue star"]).validate()
    with pytest.raises(RecordError, match="region_text 1 must be a non-empty string"):
        FO1Record.single_turn("t", None, "Find it.", "none", region_text=["red circle", " "]).validate()
    with pytest.raises(RecordError, match="at most 100 region tokens"):
        FO1Record.single_turn("t", None, "Find it.", "none", region_text=["red"] * 101).validate()
    with pytest.raises(RecordError, match="region_text must be a list"):
        FO1Record.from_dict({**record.to_dict(), "region_text": "red circle"})
