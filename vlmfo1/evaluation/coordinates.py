"""Coordinate answers: what a box-writing VLM (Qwen2.5-VL's native grounding) says, parsed and scored.

FO1 points at objects by naming region tokens; a plain VLM writes the boxes out, in Qwen2.5-VL's
format a fenced JSON list (the answers of ShapeWorld's coordinate records,
`vlmfo1.data.shapeworld.formats.boxes_json`)::

    ```json
    [
    	{"bbox_2d": [12, 30, 41, 66], "label": "red circle"},
    	{"bbox_2d": [80, 5, 120, 44], "label": "red circle"}
    ]
    ```

possibly after free text (grounded captions) or before it (counting: the boxes, then the number);
``None`` when nothing asked for is in the image.

* `parse_coordinate_answer` reads the boxes of any such text. Model output is not guaranteed to be
  valid JSON (cut off by ``max_new_tokens``, a missing comma, an entry without a label), so each
  ``{...}`` entry that holds a ``"bbox_2d"`` list is read on its own; every entry that cannot be
  used is dropped *with a warning*, never silently. The text outside the JSON is kept as
  `CoordinateAnswer.remainder` (where a count or a caption is read).
* A detection metric needs a score per box, which a generated box does not come with. Two
  scorings are reported (`BOX_SCORINGS`): ``token_probability``, the geometric mean of the
  probabilities the model gave the tokens that write the box's four numbers and its label (each
  taken at the step it was emitted, greedy decoding), and ``constant``, 1.0 for every box (then the
  COCO ranking falls back to answer order).
* `answer_coordinate_records` asks a model (an `FO1ForConditionalGeneration` with no regions is
  exactly a Qwen2.5-VL) the prompts of coordinate records and returns the parsed, scored answers.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from vlmfo1 import prompts
from vlmfo1.parsing import CONTROL_TOKENS, CUT_OFF_WARNING

BOX_SCORINGS = ("token_probability", "constant")

Span = tuple[int, int]
_REPLACEMENT = "\ufffd"  # what a decoder writes for an incomplete byte sequence

# One JSON object with no nested object inside (an entry of the list).
_ENTRY_RE = re.compile(r"\{[^{}]*\}")
_BBOX_RE = re.compile(r'"bbox_2d"\s*:\s*\[([^\[\]{}]*)\]')
_LABEL_RE = re.compile(r'"label"\s*:\s*"((?:[^"\\]|\\.)*)"')
# A fenced block, or an unclosed fence that runs to the end of an answer cut off mid-block.
_FENCE_RE = re.compile(r"```[a-zA-Z]*[^\S\n]*\n?.*?(?:```|\Z)", re.DOTALL)
# An entry opened but never closed: the answer was cut off inside it.
_CUT_ENTRY_RE = re.compile(r'\{[^{}]*"bbox_2d"[^{}]*\Z')
_EMPTY_LIST_RE = re.compile(r"\[[\s,]*\]")
_JSON_PUNCTUATION_LINE = re.compile(r"^[\s\[\],]*$")


@dataclass
class CoordinateBox:
    box: tuple[float, float, float, float]  # xyxy, as written (corners put in order)
    label: str | None
    # Characters of the answer that write the box's numbers and its label: the tokens that cover
    # them give the box's token-probability score.
    spans: tuple[Span, ...]


@dataclass
class CoordinateAnswer:
    text: str
    boxes: list[CoordinateBox] = field(default_factory=list)
    remainder: str = ""  # the text outside the JSON (a caption, a count), control tokens removed
    is_none: bool = False  # the answer is `prompts.NO_OBJECT_ANSWER` and names no box
    warnings: list[str] = field(default_factory=list)


def parse_coordinate_answer(text: str, image_size: tuple[int, int] | None = None) -> CoordinateAnswer:
    """The boxes of a coordinate answer, in the order written. Never raises on the text.

    A box whose corners are swapped is put in order; with `image_size` (width, height) a box is
    clipped to the image. Entries without 4 finite numbers, and boxes with no area (after
    clipping), are dropped. Every repair or drop is one line in `warnings`.
    """
    warnings: list[str] = []
    boxes: list[CoordinateBox] = []
    for entry in _ENTRY_RE.finditer(text):
        if '"bbox_2d"' not in entry.group():
            continue
        box = _read_entry(entry, image_size, warnings)
        if box is not None:
            boxes.append(box)
    if _CUT_ENTRY_RE.search(text):
        warnings.append("the answer ends inside a box entry (cut off); that entry is dropped")
    remainder = _remainder(text)
    is_none = not boxes and remainder.strip().rstrip(".") == prompts.NO_OBJECT_ANSWER
    return CoordinateAnswer(text, boxes, remainder, is_none, warnings)


def _read_entry(entry: re.Match, image_size, warnings: list[str]) -> CoordinateBox | None:
    where = f"entry {entry.group()!r}"
    found = _BBOX_RE.search(entry.group())
    if found is None:
        warnings.append(f"{where}: bbox_2d is not a list of numbers; dropped")
        return None
    try:
        values = [float(part) for part in found.group(1).split(",")]
    except ValueError:
        warnings.append(f"{where}: bbox_2d holds something that is not a number; dropped")
        return None
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        warnings.append(f"{where}: bbox_2d needs 4 finite numbers, got {len(values)}; dropped")
        return None
    x1, y1, x2, y2 = values
    if x2 < x1 or y2 < y1:
        warnings.append(f"{where}: corners out of order; swapped")
        x1, x2 = sorted((x1, x2))
        y1, y2 = sorted((y1, y2))
    if image_size is not None:
        width, height = float(image_size[0]), float(image_size[1])
        clipped = (min(max(x1, 0.0), width), min(max(y1, 0.0), height), min(max(x2, 0.0), width), min(max(y2, 0.0), height))
        if clipped != (x1, y1, x2, y2):
            warnings.append(f"{where}: box reaches outside the {image_size[0]}x{image_size[1]} image; clipped")
        x1, y1, x2, y2 = clipped
    if x2 <= x1 or y2 <= y1:
        warnings.append(f"{where}: box has no area; dropped")
        return None

    offset = entry.start()
    spans = [_trimmed_span(entry.group(), found.start(1), found.end(1), offset)]
    label = None
    labelled = _LABEL_RE.search(entry.group())
    if labelled is None:
        warnings.append(f"{where}: no label")
    else:
        raw = labelled.group(1)
        try:
            label = json.loads(f'"{raw}"')
        except json.JSONDecodeError:
            warnings.append(f"{where}: label {raw!r} is not a valid JSON string; kept as written")
            label = raw
        if raw:
            spans.append((offset + labelled.start(1), offset + labelled.end(1)))
    return CoordinateBox((x1, y1, x2, y2), label, tuple(spans))


def _trimmed_span(text: str, start: int, end: int, offset: int) -> Span:
    """The span of text[start:end] without its surrounding whitespace, shifted by `offset`."""
    inner = text[start:end]
    lead = len(inner) - len(inner.lstrip())
    trail = len(inner) - len(inner.rstrip())
    return offset + start + lead, offset + end - trail


def _remainder(text: str) -> str:
    """The answer without its JSON: fenced blocks, box entries, and lines left with only brackets."""
    for token in CONTROL_TOKENS:
        text = text.replace(token, "")
    text = _FENCE_RE.sub("\n", text)
    text = _ENTRY_RE.sub(lambda m: "" if '"bbox_2d"' in m.group() else m.group(), text)
    text = _CUT_ENTRY_RE.sub("", text)
    text = _EMPTY_LIST_RE.sub(" ", text)  # what is left of a list whose entries were removed
    lines = [line for line in text.split("\n") if not _JSON_PUNCTUATION_LINE.match(line)]
    return "\n".join(lines).strip()


# ---------------------------------------------------------------------------------------------
# Scores from token probabilities
# ---------------------------------------------------------------------------------------------


def token_char_spans(tokenizer, token_ids: Sequence[int]) -> tuple[str, list[Span]]:
    """The decoded text of `token_ids` and each token's character span in it."""
    ids = list(token_ids)
    text = _decode(tokenizer, ids)
    pieces = [_decode(tokenizer, [token]) for token in ids]
    if "".join(pieces) == text:
        spans, position = [], 0
        for piece in pieces:
            spans.append((position, position + len(piece)))
            position += len(piece)
        return text, spans
    # A token holding part of a multi-byte character decodes to a replacement character on its own.
    # Prefixes are exact: each token ends where the complete characters of its prefix end, so a
    # character belongs to the token that completes it (slower, so only when needed).
    ends = []
    for end in range(1, len(ids) + 1):
        complete = len(_decode(tokenizer, ids[:end]).rstrip(_REPLACEMENT))
        ends.append(max(complete, ends[-1] if ends else 0))
    ends[-1] = len(text)
    return text, [(ends[k - 1] if k else 0, ends[k]) for k in range(len(ids))]


def _decode(tokenizer, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def box_token_probability(box: CoordinateBox, token_spans: Sequence[Span], probabilities: Sequence[float]) -> float:
    """Geometric mean of the probabilities of the tokens that write `box` (its numbers and label)."""
    if len(token_spans) != len(probabilities):
        raise ValueError(f"{len(probabilities)} probabilities for {len(token_spans)} tokens")
    chosen = [
        p for (start, end), p in zip(token_spans, probabilities)
        if any(start < span_end and end > span_start for span_start, span_end in box.spans)
    ]
    if not chosen:
        raise ValueError(f"no token covers the characters {box.spans} of the box {box.box}: spans of another text?")
    return math.exp(sum(math.log(max(float(p), 1e-12)) for p in chosen) / len(chosen))


def box_score(scoring: str, box: CoordinateBox, token_spans: Sequence[Span], probabilities: Sequence[float]) -> float:
    if scoring == "constant":
        return 1.0
    if scoring == "token_probability":
        return box_token_probability(box, token_spans, probabilities)
    raise ValueError(f"unknown box scoring {scoring!r}; choose from {', '.join(BOX_SCORINGS)}")


# ---------------------------------------------------------------------------------------------
# Running a coordinate model
# ---------------------------------------------------------------------------------------------


@dataclass
class CoordinatePrediction:
    id: str
    answer: str  # as generated, end-of-turn token removed
    parsed: CoordinateAnswer
    scores: dict[str, list[float]]  # per `BOX_SCORINGS` entry, one score per parsed box
    finished: bool  # False: cut off at max_new_tokens
    num_tokens: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "answer": self.answer,
            "remainder": self.parsed.remainder,
            "boxes": [
                {"box": list(box.box), "label": box.label, **{s: self.scores[s][k] for s in BOX_SCORINGS}}
                for k, box in enumerate(self.parsed.boxes)
            ],
            "is_none": self.parsed.is_none,
            "finished": self.finished,
            "num_tokens": self.num_tokens,
            "warnings": self.parsed.warnings + ([] if self.finished else [CUT_OFF_WARNING]),
        }


def answer_coordinate_records(
    model,
    processor,
    records: Sequence[Any],
    image_root: str | Path,
    max_new_tokens: int = 512,
    batch_size: int = 8,
) -> list[CoordinatePrediction]:
    """Greedy answers of `model` (given no regions) to each record's prompt, parsed and scored.

    `records` are `FO1Record`s of coordinate records; their images are relative to `image_root`.
    Questions on one image share its encoded prefix (`FO1Generator`).
    """
    import numpy as np

    from vlmfo1.pipeline.generation import FO1Generator, ModelCall
    from vlmfo1.processing.image_processing import load_image

    generator = FO1Generator(model.eval(), processor, max_new_tokens=max_new_tokens, batch_size=batch_size)
    eos = set(generator.eos_token_ids)
    images: dict[str, Any] = {}
    calls = []
    for record in records:
        path = str(Path(image_root) / record.image)
        if path not in images:
            images[path] = load_image(path)
        calls.append(ModelCall(images[path], np.zeros((0, 4)), [{"role": "user", "content": record.prompt}], share_key=path))
    predictions = []
    for record, generated in zip(records, generator.generate(calls)):
        ids, probabilities = list(generated.token_ids), list(generated.probabilities)
        if ids and ids[-1] in eos:
            ids, probabilities = ids[:-1], probabilities[:-1]
        text, spans = token_char_spans(processor.tokenizer, ids)
        size = images[str(Path(image_root) / record.image)].size
        parsed = parse_coordinate_answer(text, image_size=size)
        scores = {s: [box_score(s, box, spans, probabilities) for box in parsed.boxes] for s in BOX_SCORINGS}
        predictions.append(CoordinatePrediction(record.id, text, parsed, scores, generated.finished, len(generated.token_ids)))
    return predictions


__all__ = [
    "BOX_SCORINGS",
    "CoordinateAnswer",
    "CoordinateBox",
    "CoordinatePrediction",
    "answer_coordinate_records",
    "box_score",
    "box_token_probability",
    "parse_coordinate_answer",
    "token_char_spans",
]
