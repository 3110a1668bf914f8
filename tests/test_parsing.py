import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vlmfo1 import prompts
from vlmfo1.parsing import CUT_OFF_WARNING, decode_and_parse, parse_answer, was_cut_off

BOXES = [[0, 0, 10, 10], [10, 10, 20, 20], [20, 20, 30, 30], [30, 30, 40, 40], [40, 40, 50, 50]]
SCORES = [0.9, 0.8, 0.7, 0.6, 0.5]


def groups_of(parsed):
    return [(group.label, [ref.index for ref in group.regions]) for group in parsed.groups]


def has_warning(parsed, *fragments):
    return any(all(fragment in warning for fragment in fragments) for warning in parsed.warnings)


# ---- well-formed answers -------------------------------------------------------------------------


def test_single_group_resolves_boxes_and_scores():
    parsed = parse_answer("<ground>red circle</ground><objects><region1><region4></objects>", BOXES, SCORES)
    assert groups_of(parsed) == [("red circle", [1, 4])]
    assert parsed.groups[0].regions[1].box == (40.0, 40.0, 50.0, 50.0)
    assert parsed.groups[0].regions[1].score == 0.5
    assert parsed.boxes_by_label() == {"red circle": [(10.0, 10.0, 20.0, 20.0), (40.0, 40.0, 50.0, 50.0)]}
    assert parsed.plain_text == "red circle"
    assert parsed.warnings == [] and not parsed.is_none and parsed.mentions == []


def test_multiple_groups_keep_order_and_region_indexes_dedupe():
    text = "<ground>person</ground><objects><region3><region0></objects><ground>man</ground><objects><region3></objects>"
    parsed = parse_answer(text, BOXES)
    assert groups_of(parsed) == [("person", [3, 0]), ("man", [3])]
    assert parsed.region_indexes() == [3, 0]
    assert parsed.plain_text == "person, man"
    assert parsed.warnings == []


def test_counting_answer_with_grammar_and_number():
    parsed = parse_answer("<ground>red circle</ground><objects><region1><region4></objects>2<|im_end|>")
    assert parsed.count == 2
    assert groups_of(parsed) == [("red circle", [1, 4])]
    assert parsed.clean_text == "<ground>red circle</ground><objects><region1><region4></objects>2"


def test_counting_in_free_text_ignores_region_digits_and_labels():
    assert parse_answer("<region12><region3> There are 2 apples.").count == 2
    # The label echoes the query; its digits are not the answer.
    assert parse_answer("<ground>7-up cans</ground><objects><region1><region2><region3></objects>3").count == 3
    assert parse_answer("I cannot tell.").count is None


def test_caption_with_mentions():
    parsed = parse_answer("The <region3> is left of <region1>, and the <region3> is red.", BOXES)
    assert [ref.index for ref in parsed.mentions] == [3, 1, 3]
    assert parsed.mentions[1].box == (10.0, 10.0, 20.0, 20.0)
    assert parsed.groups == []
    assert parsed.region_indexes() == [3, 1]
    assert "<region" not in parsed.plain_text and parsed.plain_text.startswith("The is left of, and")


def test_grounded_caption_reads_as_plain_text():
    text = "A <ground>cat</ground><objects><region0></objects> sleeps on <ground>a mat</ground><objects><region2></objects>."
    parsed = parse_answer(text)
    assert parsed.plain_text == "A cat sleeps on a mat."
    assert groups_of(parsed) == [("cat", [0]), ("a mat", [2])]


def test_reasoning_think_and_answer():
    text = "<think>The <region2> holds 3 cups.</think><answer>It is <region2>, with 3 cups.</answer><|im_end|>"
    parsed = parse_answer(text, BOXES)
    assert parsed.think == "The <region2> holds 3 cups."
    assert parsed.answer == "It is <region2>, with 3 cups."
    assert [ref.index for ref in parsed.mentions] == [2, 2]
    assert parsed.count == 3
    assert parsed.plain_text == "The holds 3 cups.\nIt is, with 3 cups."
    assert parsed.warnings == []


def test_count_comes_from_answer_not_thinking():
    parsed = parse_answer("<think>Rows of 4, so 2 rows.</think><answer>8</answer>")
    assert parsed.count == 8


def test_none_answer():
    parsed = parse_answer("None<|im_end|><|endoftext|><|endoftext|>")
    assert parsed.is_none and parsed.groups == [] and parsed.warnings == []
    assert parse_answer(prompts.NO_OBJECT_ANSWER).is_none
    assert parse_answer("<think>no cat here</think><answer>None</answer>").is_none
    assert not parse_answer("None of them is red.").is_none
    assert not parse_answer("<ground>cat</ground><objects><region1></objects>").is_none


def test_text_after_im_end_is_reported():
    parsed = parse_answer("<region1><|im_end|>garbage<|endoftext|>")
    assert parsed.clean_text == "<region1>"
    assert has_warning(parsed, "after <|im_end|>", "garbage")


def test_to_dict_is_json_serialisable():
    parsed = parse_answer("<ground>a</ground><objects><region1></objects>", BOXES, SCORES)
    data = json.loads(json.dumps(parsed.to_dict()))
    assert data["groups"][0]["regions"][0] == {"index": 1, "box": [10.0, 10.0, 20.0, 20.0], "score": 0.8}


# ---- malformed answers: never raise, recover, warn ---------------------------------------------


def test_unclosed_objects_at_end_keeps_regions():
    parsed = parse_answer("<ground>cat</ground><objects><region1><region2>")
    assert groups_of(parsed) == [("cat", [1, 2])]
    assert has_warning(parsed, "unclosed <objects>", "cut off")


def test_a_repair_that_guesses_a_cut_off_is_not_a_cut_off():
    """The parser's "(generation cut off?)" is a guess from the text: a model can stop on its own inside
    an unclosed tag. Only the generator's warning says max_new_tokens was reached."""
    parsed = parse_answer("<ground>circles")
    assert has_warning(parsed, "unclosed <ground>", "cut off")
    assert not was_cut_off(parsed.warnings)
    assert was_cut_off(parsed.warnings + [f"{CUT_OFF_WARNING}=16"])
    assert was_cut_off([f"call 1 ('circle'): {CUT_OFF_WARNING}=16"])


def test_unclosed_ground_at_end_has_no_group():
    parsed = parse_answer("<ground>cat</ground><objects><region1></objects><ground>red d")
    assert groups_of(parsed) == [("cat", [1])]
    assert has_warning(parsed, "unclosed <ground>", "'red d'")
    assert parsed.plain_text == "cat, red d"


def test_objects_without_ground_gets_empty_label():
    parsed = parse_answer("<objects><region0><region2></objects>")
    assert groups_of(parsed) == [("", [0, 2])]
    assert has_warning(parsed, "without a preceding <ground>")
    assert has_warning(parsed, "empty label")


def test_empty_label():
    parsed = parse_answer("<ground> </ground><objects><region1></objects>")
    assert groups_of(parsed) == [("", [1])]
    assert has_warning(parsed, "empty label")


def test_label_without_objects():
    parsed = parse_answer("<ground>cat</ground> is here")
    assert parsed.groups == []
    assert has_warning(parsed, "'cat'", "not followed by <objects>")
    assert parsed.plain_text == "cat is here"


def test_objects_before_closing_ground():
    parsed = parse_answer("<ground>cat<objects><region1></objects>")
    assert groups_of(parsed) == [("cat", [1])]
    assert has_warning(parsed, "<objects> before </ground>")


@pytest.mark.parametrize("text", ["<ground>cat<region1><region2></objects>", "<ground>cat</ground><region1><region2></objects>"])
def test_region_tokens_right_after_label_become_its_objects(text):
    parsed = parse_answer(text)
    assert groups_of(parsed) == [("cat", [1, 2])]
    assert has_warning(parsed, "<region1>", "taken as its objects")


def test_nested_ground():
    parsed = parse_answer("<ground>a<ground>b</ground><objects><region1></objects>")
    assert groups_of(parsed) == [("b", [1])]
    assert has_warning(parsed, "unclosed <ground>", "'a'")


@pytest.mark.parametrize(
    "text, tag",
    [
        ("</objects><ground>a</ground><objects><region1></objects>", "</objects>"),
        ("<ground>a</ground><objects><region1></ground></objects>", "</ground>"),
        ("<ground>a</ground><objects><objects><region1></objects>", "<objects>"),
    ],
)
def test_misplaced_tags_are_ignored(text, tag):
    parsed = parse_answer(text)
    assert groups_of(parsed) == [("a", [1])]
    assert has_warning(parsed, f"misplaced {tag}")


@pytest.mark.parametrize("token", ["<region>", "<regionX>", "<region-1>"])
def test_unknown_region_tokens_are_dropped(token):
    parsed = parse_answer(f"<ground>a</ground><objects><region1>{token}<region2></objects> see {token}")
    assert groups_of(parsed) == [("a", [1, 2])]
    assert parsed.mentions == []
    assert sum(token in warning and "unknown token" in warning for warning in parsed.warnings) == 2


def test_garbage_inside_objects_is_dropped():
    parsed = parse_answer("<ground>a</ground><objects><region1>, and <region2></objects>")
    assert groups_of(parsed) == [("a", [1, 2])]
    assert has_warning(parsed, "', and'", "inside <objects>")


def test_garbage_between_ground_and_objects():
    parsed = parse_answer("<ground>a</ground> xyz <objects><region1></objects>")
    assert groups_of(parsed) == [("", [1])]
    assert has_warning(parsed, "'a'", "not followed by <objects>")
    assert has_warning(parsed, "without a preceding <ground>")


def test_out_of_range_with_boxes():
    parsed = parse_answer("<ground>a</ground><objects><region1><region5><region7></objects> and <region9>", BOXES)
    assert groups_of(parsed) == [("a", [1])]
    assert parsed.mentions == []
    for index in (5, 7, 9):
        assert has_warning(parsed, f"<region{index}> is out of range", "5 proposals")


def test_out_of_range_with_num_regions_and_without_limits():
    text = "<ground>a</ground><objects><region1><region3></objects>"
    assert groups_of(parse_answer(text, num_regions=3)) == [("a", [1])]
    assert has_warning(parse_answer(text, num_regions=3), "<region3>", "num_regions=3")
    assert groups_of(parse_answer(text, BOXES[:2], num_regions=100)) == [("a", [1])]
    assert groups_of(parse_answer(text)) == [("a", [1, 3])]  # nothing to check against


def test_group_with_only_invalid_regions_is_dropped():
    parsed = parse_answer("<ground>a</ground><objects><region8></objects><ground>b</ground><objects></objects>", BOXES)
    assert parsed.groups == []
    assert has_warning(parsed, "'a'", "no valid regions") and has_warning(parsed, "'b'", "no valid regions")


def test_repeated_indexes_in_a_group_are_deduplicated():
    parsed = parse_answer("<ground>a</ground><objects><region2><region1><region2></objects>")
    assert groups_of(parsed) == [("a", [2, 1])]
    assert has_warning(parsed, "repeated regions", "'a'")


def test_same_label_in_two_groups_is_merged():
    text = (
        "<ground>a</ground><objects><region1></objects><ground>b</ground><objects><region2></objects>"
        "<ground>a </ground><objects><region3><region1></objects>"
    )
    parsed = parse_answer(text)
    assert groups_of(parsed) == [("a", [1, 3]), ("b", [2])]
    assert has_warning(parsed, "'a'", "merged")


def test_unclosed_think_and_answer():
    cut = parse_answer("<think>The <region1> is")
    assert cut.think == "The <region1> is" and cut.answer is None
    assert has_warning(cut, "unclosed <think>")
    no_end = parse_answer("<think>ok</think><answer><ground>a</ground><objects><region1>")
    assert no_end.answer == "<ground>a</ground><objects><region1>"
    assert groups_of(no_end) == [("a", [1])]
    assert has_warning(no_end, "unclosed <answer>")


def test_closing_think_without_opening():
    parsed = parse_answer("Looking at <region1>.</think><answer>4</answer>")
    assert parsed.think == "Looking at <region1>."
    assert parsed.count == 4
    assert has_warning(parsed, "</think> without <think>")


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="expected 4"):
        parse_answer("<region0>", boxes=[[0, 0, 1]])
    with pytest.raises(ValueError, match="2 scores given for 5 boxes"):
        parse_answer("<region0>", boxes=BOXES, scores=[0.1, 0.2])
    with pytest.raises(ValueError, match="pass boxes="):
        parse_answer("<ground>a</ground><objects><region0></objects>").boxes_by_label()


# ---- properties ----------------------------------------------------------------------------------

labels = st.text(st.characters(blacklist_characters="<>", blacklist_categories=("Cs", "Cc")), min_size=1, max_size=12)
labels = labels.map(str.strip).filter(bool)
index_lists = st.lists(st.integers(0, prompts.MAX_REGIONS - 1), min_size=1, max_size=6, unique=True)


@settings(deadline=None, max_examples=200)
@given(st.dictionaries(labels, index_lists, max_size=5))
def test_round_trip_with_format_grounded_answer(groups):
    expected = list(groups.items())
    parsed = parse_answer(prompts.format_grounded_answer(expected), num_regions=prompts.MAX_REGIONS)
    assert groups_of(parsed) == expected
    assert parsed.warnings == []
    assert parsed.is_none == (not expected)


pieces = st.sampled_from(
    ["<ground>", "</ground>", "<objects>", "</objects>", "<think>", "</think>", "<answer>", "</answer>",
     "<region>", "<regionX>", "<|im_end|>", "<|endoftext|>", "None", "cat", " ", "3", ", "]
) | st.integers(0, 8).map(prompts.region_token)


@settings(deadline=None, max_examples=300)
@given(st.lists(pieces, max_size=25))
def test_any_token_soup_parses_to_valid_groups(parts):
    parsed = parse_answer("".join(parts), BOXES)
    labels_seen = [group.label for group in parsed.groups]
    assert len(labels_seen) == len(set(labels_seen))
    for group in parsed.groups:
        indexes = [ref.index for ref in group.regions]
        assert indexes and len(indexes) == len(set(indexes))
        assert all(0 <= i < len(BOXES) for i in indexes)
    assert all(ref.box == tuple(map(float, BOXES[ref.index])) for ref in parsed.mentions)


# ---- decoding with the real (upstream) tokenizer -------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer(upstream_fixture_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(upstream_fixture_dir / "tokenizer")


def test_region_and_grammar_tokens_are_single_added_tokens(tokenizer):
    for token in prompts.region_tokens() + prompts.grammar_tokens():
        assert len(tokenizer.encode(token, add_special_tokens=False)) == 1, token


ANSWER = "<ground>red circle</ground><objects><region1><region4></objects><ground>dog</ground><objects><region0></objects>2"


def test_decode_and_parse_one_answer(tokenizer):
    ids = tokenizer.encode(ANSWER + "<|im_end|>", add_special_tokens=False)
    for given_ids in (ids, torch.tensor(ids)):
        parsed = decode_and_parse(tokenizer, given_ids, BOXES)
        assert parsed.clean_text == ANSWER  # no space slipped between adjacent added tokens
        assert groups_of(parsed) == [("red circle", [1, 4]), ("dog", [0])]
        assert parsed.count == 2 and parsed.warnings == []


def test_decode_and_parse_batch_with_padding(tokenizer):
    first = tokenizer.encode(ANSWER + "<|im_end|>", add_special_tokens=False)
    second = tokenizer.encode("The <region2> is red.<|im_end|>", add_special_tokens=False)
    pad = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    width = max(len(first), len(second))
    batch = torch.tensor([row + [pad] * (width - len(row)) for row in (first, second)])
    parsed = decode_and_parse(tokenizer, batch, boxes=[BOXES, BOXES[:2]])
    assert [groups_of(p) for p in parsed] == [[("red circle", [1, 4]), ("dog", [0])], []]
    assert parsed[1].mentions == [] and has_warning(parsed[1], "<region2> is out of range", "2 proposals")
    with pytest.raises(ValueError, match="one boxes entry per answer"):
        decode_and_parse(tokenizer, batch, boxes=[BOXES])
