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


def counting_scores(predicted: Sequence[int | None], truth: Sequence[int]) -> dict[str, float | int]:
    """`predicted[i]` None (no number in the answer) counts as 0, as upstream."""
    if len(predicted) != len(truth):
        raise ValueError(f"{len(predicted)} predictions for {len(truth)} items")
    if not truth:
        raise ValueError("no items to score")
    counts = [0 if p is None else int(p) for p in predicted]
    exact = sum(p == int(t) for p, t in zip(counts, truth))
    within_one = sum(abs(p - int(t)) <= 1 for p, t in zip(counts, truth))
    return {
        "accuracy": exact / len(truth),
        "within_one_accuracy": within_one / len(truth),
        "num_items": len(truth),
        "num_unparsed": sum(p is None for p in predicted),
    }
