"""Counting: upstream's answer parsing (strip region tokens, first integer) and accuracy."""
import pytest

from vlmfo1.evaluation.metrics.counting import counting_scores, parse_count


@pytest.mark.parametrize(
    "answer, count",
    [
        ("<ground>cats</ground><objects><region1><region12></objects> There are 2 cats.", 2),
        ("<region3><region14>\n7", 7),
        ("12 apples and 3 pears", 12),
        ("There are three.", None),
        ("", None),
        # Upstream's look-behind skips digits right after the word "region" (a token without brackets).
        ("region5 shows 7", 7),
        ("2.5", 2),
    ],
)
def test_parse_count(answer, count):
    assert parse_count(answer) == count


def test_counting_scores_hand_values():
    answers = ["2", "<region0><region1><region2>3", None, "no idea", "10"]
    truth = [2, 2, 0, 0, 12]
    scores = counting_scores(answers, truth)
    # exact: "2" and "no idea" (no digits counts as 0, as upstream) -> 2 of 5.
    assert scores["accuracy"] == pytest.approx(2 / 5)
    # |err| <= 1 adds "3" for 2; the missing answer (None) is wrong even though truth is 0; 10 vs 12 is off by 2.
    assert scores["within_one_accuracy"] == pytest.approx(3 / 5)
    assert scores["num_unparsed"] == 1 and scores["num_items"] == 5


def test_counting_scores_perfect_and_length_mismatch():
    assert counting_scores(["1", "5", "9"], [1, 5, 9])["accuracy"] == 1.0
    with pytest.raises(ValueError):
        counting_scores(["1"], [1, 2])
