"""FO1 training/evaluation records: one JSON object per line (SPEC §3), LLaVA-style.

A record is one conversation about one image, with the proposal boxes its region tokens stand for::

    {"id": "train-000012-detection-0", "image": "images/train/000012.png", "task": "detection",
     "bbox_list": [[x1, y1, x2, y2], ...], "score_list": [0.93, ...],
     "conversations": [{"from": "human", "value": "<image>\\nPlease detect red circle in this image. ..."},
                       {"from": "gpt", "value": "<ground>red circle</ground><objects><region2></objects>"}],
     "meta": {...ground truth for scoring...}}

`<regionK>` in any turn refers to ``bbox_list[K]``. A record may also carry ``"region_text": ["red
circle", "blue star", ...]``: its region slots then hold words instead of pixels, each slot the sum of
its words' embeddings (`vlmfo1.training` fills them). In a text-only record (``"image": null``) the
slots open the first user turn; in an image record there is one text per box, and the image's own
slots get the words. It is a curriculum device for models trained from scratch: the LLM learns to
retrieve over region slots before image regions mean anything, first in text, then beside an image
(docs/training.md). `task`, `meta` and `region_text` are ours (upstream
records have none of them); reading a record without them gives ``task="unknown"`` and ``meta={}``. Any other key is an
error rather than being dropped: a record that does not round-trip would lose data silently.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from vlmfo1 import prompts

HUMAN, GPT = "human", "gpt"
UNKNOWN_TASK = "unknown"
_KEYS = ("id", "image", "task", "bbox_list", "score_list", "conversations", "meta", "region_text")
_REQUIRED_KEYS = ("id", "image", "conversations")  # "image": null makes a text-only record
_REGION_RE = re.compile(r"<region(\d+)>")


class RecordError(ValueError):
    """A record that breaks the FO1 record format; the message names the record and the rule."""


@dataclass
class FO1Record:
    id: str
    image: str | None  # None: a text-only record (no image tag, no boxes), e.g. language data
    conversations: list[dict[str, str]]  # [{"from": "human"|"gpt", "value": str}, ...], human first
    bbox_list: list[list[float]] = field(default_factory=list)  # xyxy pixels of the image
    score_list: list[float] = field(default_factory=list)  # one per box
    task: str = UNKNOWN_TASK
    meta: dict[str, Any] = field(default_factory=dict)  # exact ground truth for scoring
    region_text: list[str] = field(default_factory=list)  # the words each region slot holds instead of pixels

    @classmethod
    def single_turn(
        cls,
        id: str,
        image: str | None,
        prompt: str,
        answer: str,
        bbox_list: list[list[float]] | None = None,
        score_list: list[float] | None = None,
        task: str = UNKNOWN_TASK,
        meta: dict[str, Any] | None = None,
        region_text: list[str] | None = None,
    ) -> "FO1Record":
        """A one-question record; `prompt` is the task text without the image tag. The lists given
        are kept, not copied: records of one image may share their proposal lists."""
        return cls(
            id=id,
            image=image,
            conversations=[
                {"from": HUMAN, "value": prompt if image is None else f"{prompts.IMAGE_TAG}\n{prompt}"},
                {"from": GPT, "value": answer},
            ],
            bbox_list=bbox_list if bbox_list is not None else [],
            score_list=score_list if score_list is not None else [],
            region_text=region_text if region_text is not None else [],
            task=task,
            meta=meta if meta is not None else {},
        )

    @property
    def prompt(self) -> str:
        """The first human turn without the leading image tag."""
        return self.conversations[0]["value"].removeprefix(f"{prompts.IMAGE_TAG}\n")

    @property
    def answer(self) -> str:
        """The first gpt turn."""
        return self.conversations[1]["value"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "image": self.image,
            "task": self.task,
            "bbox_list": self.bbox_list,
            "score_list": self.score_list,
            "conversations": self.conversations,
            "meta": self.meta,
            **({"region_text": self.region_text} if self.region_text else {}),
        }

    def to_json(self) -> str:
        return _dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FO1Record":
        """Builds and validates a record; raises `RecordError` on missing, unknown or malformed fields."""
        if not isinstance(data, dict):
            raise RecordError(f"a record must be a JSON object, got {type(data).__name__}")
        record_id = data.get("id", "<no id>")
        missing = [key for key in _REQUIRED_KEYS if key not in data]
        if missing:
            raise RecordError(f"record {record_id!r}: missing field(s) {missing}")
        unknown = sorted(set(data) - set(_KEYS))
        if unknown:
            raise RecordError(f"record {record_id!r}: unknown field(s) {unknown}; known fields are {list(_KEYS)}")
        record = cls(
            id=data["id"],
            image=data["image"],
            conversations=data["conversations"],
            bbox_list=data.get("bbox_list", []),
            score_list=data.get("score_list", []),
            task=data.get("task", UNKNOWN_TASK),
            meta=data.get("meta", {}),
            region_text=data.get("region_text", []),
        )
        record.validate()
        return record

    def validate(self) -> None:
        """Raises `RecordError` naming the first broken rule."""
        where = f"record {self.id!r}"
        if not isinstance(self.id, str) or not self.id:
            raise RecordError(f"record id must be a non-empty string, got {self.id!r}")
        if self.image is not None and (not isinstance(self.image, str) or not self.image):
            raise RecordError(f"{where}: image must be a non-empty path string or null (text-only), got {self.image!r}")
        if self.image is None and self.bbox_list:
            raise RecordError(f"{where}: a text-only record (image null) cannot have boxes")
        if not isinstance(self.task, str) or not self.task:
            raise RecordError(f"{where}: task must be a non-empty string, got {self.task!r}")
        if not isinstance(self.meta, dict):
            raise RecordError(f"{where}: meta must be an object, got {type(self.meta).__name__}")
        _validate_boxes(self.bbox_list, self.score_list, where)
        _validate_region_text(self.region_text, len(self.bbox_list), self.image, where)
        _validate_conversations(self.conversations, len(self.bbox_list), where, image_tags=int(self.image is not None),
                                text_regions=len(self.region_text))


def _validate_region_text(region_text: Any, num_boxes: int, image: str | None, where: str) -> None:
    if not isinstance(region_text, list):
        raise RecordError(f"{where}: region_text must be a list of strings")
    if region_text and image is not None and len(region_text) != num_boxes:
        raise RecordError(f"{where}: an image record's region_text gives the words of each box: "
                          f"{len(region_text)} texts for {num_boxes} boxes")
    if len(region_text) > prompts.MAX_REGIONS:
        raise RecordError(f"{where}: {len(region_text)} region texts, at most {prompts.MAX_REGIONS} region tokens exist")
    for i, text in enumerate(region_text):
        if not isinstance(text, str) or not text.strip():
            raise RecordError(f"{where}: region_text {i} must be a non-empty string, got {text!r}")


def _validate_boxes(boxes: Any, scores: Any, where: str) -> None:
    if not isinstance(boxes, list) or not isinstance(scores, list):
        raise RecordError(f"{where}: bbox_list and score_list must be lists")
    if len(boxes) > prompts.MAX_REGIONS:
        raise RecordError(f"{where}: {len(boxes)} boxes, at most {prompts.MAX_REGIONS} region tokens exist")
    if len(scores) != len(boxes):
        raise RecordError(f"{where}: {len(scores)} scores for {len(boxes)} boxes (one score per box)")
    for i, box in enumerate(boxes):
        if not isinstance(box, (list, tuple)) or len(box) != 4 or not all(_is_finite_number(v) for v in box):
            raise RecordError(f"{where}: box {i} must be 4 finite numbers [x1, y1, x2, y2], got {box!r}")
        if box[2] < box[0] or box[3] < box[1]:
            raise RecordError(f"{where}: box {i} {list(box)} has x2 < x1 or y2 < y1 (boxes are xyxy)")
    for i, score in enumerate(scores):
        if not _is_finite_number(score):
            raise RecordError(f"{where}: score {i} must be a finite number, got {score!r}")


def _validate_conversations(turns: Any, num_boxes: int, where: str, image_tags: int = 1, text_regions: int = 0) -> None:
    if not isinstance(turns, list) or len(turns) < 2:
        raise RecordError(f"{where}: conversations must be a list of at least one human and one gpt turn")
    expected_tags, image_tags = image_tags, 0
    defined_in_text: set[int] = set(range(text_regions))
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or set(turn) != {"from", "value"}:
            raise RecordError(f"{where}: turn {i} must be {{'from': ..., 'value': ...}}, got {turn!r}")
        expected = HUMAN if i % 2 == 0 else GPT
        if turn["from"] != expected:
            raise RecordError(f"{where}: turn {i} is from {turn['from']!r}, expected {expected!r} (turns alternate, human first)")
        if not isinstance(turn["value"], str):
            raise RecordError(f"{where}: turn {i} value must be a string")
        image_tags += turn["value"].count(prompts.IMAGE_TAG)
        named = set(map(int, _REGION_RE.findall(turn["value"])))
        if not expected_tags:
            # Text-only: region tokens are plain tokens that the user's text itself defines (e.g. a
            # look-up list keyed by them); an answer may name only those.
            if expected == GPT and named - defined_in_text:
                raise RecordError(f"{where}: turn {i} names <region{min(named - defined_in_text)}>, which neither "
                                  "region_text nor an earlier human turn of this text-only record defines")
            defined_in_text |= named
            continue
        for index in sorted(named):
            if index >= num_boxes:
                raise RecordError(f"{where}: turn {i} names <region{index}> but bbox_list has {num_boxes} boxes")
    if expected_tags and not turns[0]["value"].startswith(f"{prompts.IMAGE_TAG}\n"):
        raise RecordError(f"{where}: the first human turn must start with {prompts.IMAGE_TAG!r} and a newline")
    if image_tags != expected_tags:
        expected = "exactly one" if expected_tags else "none in a text-only record (image null)"
        raise RecordError(f"{where}: {image_tags} {prompts.IMAGE_TAG} tags, expected {expected}")
    if len(turns) % 2:
        raise RecordError(f"{where}: the conversation ends with a human turn (no answer to learn from)")


def _is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_records(path: str | os.PathLike) -> Iterator[FO1Record]:
    """Yields the records of a JSONL file; a bad line raises `RecordError` with its line number.
    Blank lines are skipped."""
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield FO1Record.from_dict(json.loads(line))
            except json.JSONDecodeError as error:
                raise RecordError(f"{path}:{line_number}: not valid JSON ({error})") from error
            except RecordError as error:
                raise RecordError(f"{path}:{line_number}: {error}") from error


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def write_records(path: str | os.PathLike, records: Iterable[FO1Record]) -> int:
    """Validates and writes records as JSONL (UTF-8, one per line); returns how many were written.
    Nothing is written if a record is invalid: the file is written to a temporary name first."""
    path = Path(path)
    temporary = path.with_name(path.name + ".partial")
    count = 0
    try:
        with open(temporary, "w", encoding="utf-8") as handle:
            for record in records:
                record.validate()
                handle.write(record.to_json() + "\n")
                count += 1
        temporary.replace(path)
    finally:
        temporary.unlink(missing_ok=True)
    return count


def rewrite_regions(text: str, mapping: Sequence[int]) -> str:
    """`<regionK>` -> `<region{mapping[K]}>` in one pass (so 1->2, 2->1 cannot collide)."""

    def replace(match: re.Match) -> str:
        old = int(match.group(1))
        if old >= len(mapping):
            raise ValueError(f"<region{old}> names a box past the record's {len(mapping)} boxes")
        if mapping[old] < 0:
            raise ValueError(f"<region{old}> names a box that was dropped")
        return prompts.region_token(mapping[old])

    return _REGION_RE.sub(replace, text)


def with_regions(record: FO1Record, boxes: list, scores: list, mapping: Sequence[int],
                 texts: list[str] | None = None) -> FO1Record:
    """The record with new regions: `mapping[K]` is the new index of old box K (-1: gone)."""
    turns = [{"from": t["from"], "value": rewrite_regions(t["value"], mapping)} for t in record.conversations]
    return dataclasses.replace(record, bbox_list=boxes, score_list=scores, conversations=turns,
                               region_text=texts if texts is not None else [])


def regions_in_order(record: FO1Record, order: Sequence[int]) -> FO1Record:
    """The record with its boxes (and their scores and region texts) at the old indexes `order`, every
    `<regionK>` rewritten to follow; boxes left out of `order` are dropped (a turn naming one is an error)."""
    mapping = [-1] * len(record.bbox_list)
    for new, old in enumerate(order):
        mapping[old] = new
    return with_regions(record, [record.bbox_list[k] for k in order],
                        [record.score_list[k] for k in order] if record.score_list else [], mapping,
                        [record.region_text[k] for k in order] if record.region_text else None)
