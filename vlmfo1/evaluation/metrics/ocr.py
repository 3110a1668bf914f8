"""Region OCR accuracy on a given box (COCO-Text), with the COCO-Text API's transcription rules
(``coco_evaluation.py`` of andreasveit/coco-text, "accuracy for exact matches"):

* normalisation (`normalize_ocr_text`, the API's ``decode``): non-ASCII characters dropped, newlines
  become spaces, every character outside ``a-z A-Z 0-9 ! ? @ _ - + * : & / . space`` dropped, lower-cased.
  We then also strip surrounding whitespace and collapse runs of spaces, which only matters for model
  answers (ground-truth strings have neither);
* ground-truth strings shorter than 3 characters after normalisation are ignored (not scored), as the API does;
* exact accuracy = share of regions whose normalised answer equals the normalised truth; the API's
  second figure, edit distance <= 1, is reported as well.
"""
from __future__ import annotations

import re
from typing import Sequence

from vlmfo1.parsing import CONTROL_TOKENS

COCOTEXT_MIN_LENGTH = 3
_DISALLOWED = re.compile(r"[^a-zA-Z0-9!?@_\-+*:&/ .]")


def normalize_ocr_text(text: str) -> str:
    for token in CONTROL_TOKENS:
        text = text.replace(token, "")
    text = text.encode("ascii", "ignore").decode("ascii").replace("\n", " ")
    text = _DISALLOWED.sub("", text).lower()
    return " ".join(text.split())


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (unit-cost insert, delete, substitute)."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, start=1):
        current = [i]
        for j, char_b in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b)))
        previous = current
    return previous[-1]


def ocr_scores(
    answers: Sequence[str | None], truths: Sequence[str], min_gt_length: int = COCOTEXT_MIN_LENGTH
) -> dict[str, float | int | None]:
    """Exact and edit-distance-1 accuracy of raw answers against raw ground-truth strings; a missing
    answer (None) is wrong."""
    if len(answers) != len(truths):
        raise ValueError(f"{len(answers)} answers for {len(truths)} regions")
    exact = close = scored = 0
    for answer, truth in zip(answers, truths):
        truth = normalize_ocr_text(truth)
        if len(truth) < min_gt_length:
            continue
        scored += 1
        if answer is None:
            continue
        distance = edit_distance(normalize_ocr_text(answer), truth)
        exact += distance == 0
        close += distance <= 1
    return {
        "accuracy": exact / scored if scored else None,
        "distance1_accuracy": close / scored if scored else None,
        "num_items": scored,
        "num_ignored": len(truths) - scored,
    }
