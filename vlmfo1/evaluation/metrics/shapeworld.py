"""Metrics for ShapeWorld's tasks that no public benchmark defines (ours; docs/evaluation.md).

ShapeWorld records know exactly which proposal indexes hold each answer's objects, so grounding is
scored on region *indexes* (did the model retrieve the right regions?), independent of how well the
proposals fit the objects. Box-level scores with the public protocols are computed next to these by
the ShapeWorld task (HumanRef-style DensityF1, COCO-style counting, OCR, SS/S-IoU).

Grounding, per record:

* label-aware (detection, rejection, detect-everything): each ground-truth group (label, target
  indexes) is compared with the answer's group of the same label (compared stripped and lower-cased);
  TP = sum over groups of |predicted ∩ targets|, #predicted = all indexes the answer names under any
  label, #targets = sum of the groups' targets;
* label-agnostic (REC, visual-prompt detection, grounded captions): the union of the answer's
  indexes against the union of the targets (the answer's phrases are free text);
* precision = TP / #predicted, recall = TP / #targets, F1 their harmonic mean; a record with no
  targets and no prediction scores 1 on all three (a correct rejection), and 0 if it predicts anything;
* exact = the predicted sets equal the target sets (per label when label-aware).

Short answers (region VQA, image QA): exact match after lower-casing, trimming, dropping a final
period and collapsing spaces.

Region captions: SS and S-IoU as for region classification (all-MiniLM-L6-v2 cosine, word-set
IoU), but both texts are cleaned alike (punctuation ``. , : ; ! ? "`` becomes spaces); Osprey's
colon rule is meant for one-word category answers, not sentences.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from vlmfo1.evaluation.metrics.region_classification import semantic_iou, semantic_similarity
from vlmfo1.parsing import CONTROL_TOKENS

Groups = Sequence[tuple[str, Iterable[int]]]


def _label(text: str) -> str:
    return " ".join(text.lower().split())


def grounding_set_scores(targets: Groups, predicted: Groups, label_aware: bool) -> dict[str, float]:
    """Index-level precision / recall / F1 / exact of one record (see the module docstring)."""
    if label_aware:
        target_sets: dict[str, set[int]] = {}
        for label, indexes in targets:
            target_sets.setdefault(_label(label), set()).update(indexes)
        predicted_sets: dict[str, set[int]] = {}
        for label, indexes in predicted:
            predicted_sets.setdefault(_label(label), set()).update(indexes)
        true_positives = sum(len(predicted_sets.get(label, set()) & wanted) for label, wanted in target_sets.items())
        num_targets = sum(len(wanted) for wanted in target_sets.values())
        num_predicted = sum(len(found) for found in predicted_sets.values())
        exact = all(predicted_sets.get(label, set()) == wanted for label, wanted in target_sets.items()) and all(
            not found or label in target_sets for label, found in predicted_sets.items()
        )
    else:
        wanted = set().union(*(set(indexes) for _, indexes in targets))
        found = set().union(*(set(indexes) for _, indexes in predicted))
        true_positives, num_targets, num_predicted = len(wanted & found), len(wanted), len(found)
        exact = wanted == found
    if num_targets == 0 and num_predicted == 0:
        return {"precision": 1.0, "recall": 1.0, "f1": 1.0, "exact": 1.0}
    precision = true_positives / num_predicted if num_predicted else 0.0
    recall = true_positives / num_targets if num_targets else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "exact": float(exact)}


def grounding_scores(
    targets: Sequence[Groups], predicted: Sequence[Groups | None], label_aware: bool
) -> dict[str, float | int | None]:
    """Means over records; `predicted[i]` None (no prediction) scores 0 on everything.
    ``rejection_accuracy`` is the share of target-less records answered with no region."""
    if len(targets) != len(predicted):
        raise ValueError(f"{len(predicted)} predictions for {len(targets)} records")
    if not targets:
        raise ValueError("no records to score")
    rows = []
    rejections = correct_rejections = 0
    for wanted, found in zip(targets, predicted):
        no_targets = all(len(list(indexes)) == 0 for _, indexes in wanted)
        if found is None:
            rows.append({"precision": 0.0, "recall": 0.0, "f1": 0.0, "exact": 0.0})
            rejections += no_targets
            continue
        scores = grounding_set_scores(wanted, found, label_aware)
        rows.append(scores)
        if no_targets:
            rejections += 1
            correct_rejections += scores["exact"] == 1.0
    result: dict[str, float | int | None] = {
        key: float(np.mean([row[key] for row in rows])) for key in ("precision", "recall", "f1", "exact")
    }
    result["num_items"] = len(rows)
    result["num_rejection_items"] = rejections
    result["rejection_accuracy"] = correct_rejections / rejections if rejections else None
    return result


def normalize_short_answer(text: str) -> str:
    for token in CONTROL_TOKENS:
        text = text.replace(token, "")
    text = " ".join(text.lower().split())
    return text[:-1].rstrip() if text.endswith(".") else text


def short_answer_accuracy(answers: Sequence[str | None], truths: Sequence[str]) -> dict[str, float | int]:
    """Exact match of normalised short answers; a missing answer (None) is wrong."""
    if len(answers) != len(truths):
        raise ValueError(f"{len(answers)} answers for {len(truths)} questions")
    if not truths:
        raise ValueError("no questions to score")
    correct = sum(
        answer is not None and normalize_short_answer(answer) == normalize_short_answer(truth)
        for answer, truth in zip(answers, truths)
    )
    return {"accuracy": correct / len(truths), "num_items": len(truths)}


def _caption_text(text: str) -> str:
    for token in CONTROL_TOKENS:
        text = text.replace(token, "")
    for mark in '.,:;!?"':
        text = text.replace(mark, " ")
    return " ".join(text.split())


def caption_similarity(answers: Sequence[str | None], captions: Sequence[str]) -> dict[str, float | int]:
    """Mean SS and S-IoU of answers against reference captions; a missing answer (None) scores 0."""
    if len(answers) != len(captions):
        raise ValueError(f"{len(answers)} answers for {len(captions)} captions")
    if not captions:
        raise ValueError("no captions to score")
    present = [i for i, answer in enumerate(answers) if answer is not None]
    cleaned_answers = [_caption_text(answers[i]) for i in present]
    cleaned_captions = [_caption_text(captions[i]) for i in present]
    similarity = semantic_similarity(cleaned_answers, cleaned_captions) if present else np.zeros(0)
    ious = [semantic_iou(a, c) for a, c in zip(cleaned_answers, cleaned_captions)]
    return {
        "semantic_similarity": float(np.sum(similarity)) / len(captions),
        "semantic_iou": float(np.sum(ious)) / len(captions),
        "num_items": len(captions),
    }
