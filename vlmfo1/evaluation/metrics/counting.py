"""Counting accuracy (CountBench, PixMo-Count), as upstream VLM-FO1 ``evaluation/eval_countbench.py``:

1. remove every ``<regionN>`` token from the answer;
2. the prediction is the first run of digits not directly preceded by the word ``region``
   (upstream's ``(?<!region)\\d+``); an answer without digits predicts 0;
3. accuracy = share of exact matches. We also report the share with |prediction - truth| <= 1.

`vlmfo1.parsing.ParsedAnswer.count` reads counts a little differently (it prefers ``<answer>`` and
skips ``<ground>`` labels); benchmark numbers use this module so they stay comparable to upstream's.
"""
from __future__ import annotations

import re
from typing import Sequence

_REGION_TOKEN = re.compile(r"<region\d+>")
_COUNT = re.compile(r"(?<!region)\d+")


def parse_count(answer: str) -> int | None:
    """First integer of `answer` once region tokens are removed; None when there is none."""
    match = _COUNT.search(_REGION_TOKEN.sub("", answer))
    return int(match.group()) if match else None


def counting_scores(answers: Sequence[str | None], truth: Sequence[int]) -> dict[str, float | int]:
    """Scores raw answers. An answer without digits predicts 0 (upstream); a missing answer (None)
    is wrong whatever the truth."""
    if len(answers) != len(truth):
        raise ValueError(f"{len(answers)} answers for {len(truth)} items")
    if not truth:
        raise ValueError("no items to score")
    exact = within_one = unparsed = 0
    for answer, true_count in zip(answers, truth):
        if answer is None:
            continue
        count = parse_count(answer)
        if count is None:
            unparsed += 1
            count = 0
        exact += count == int(true_count)
        within_one += abs(count - int(true_count)) <= 1
    return {
        "accuracy": exact / len(truth),
        "within_one_accuracy": within_one / len(truth),
        "num_items": len(truth),
        "num_unparsed": unparsed,
    }
