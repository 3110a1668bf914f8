"""Parse what the FO1 model generates into region references (SPEC §2.4).

The model answers by naming region index tokens, never coordinates:

* grounding (detection, REC, counting, grounded captions):
  ``<ground>LABEL</ground><objects><regionI><regionJ>…</objects>``, repeated, possibly inside
  free text (a grounded caption reads "A <ground>cat</ground><objects><region1></objects> sleeps");
* plain ``<regionK>`` mentions in free text (region captions, region QA, reasoning);
* ``<think>…</think><answer>…</answer>`` around either, for reasoning prompts;
* ``None`` (`prompts.NO_OBJECT_ANSWER`) when nothing asked for is in the image.

Generated text is not guaranteed to follow the grammar (cut off by ``max_new_tokens``, misordered
tags, indexes past the proposal list). `parse_answer` never raises on model output: it recovers,
and every recovery is recorded in `ParsedAnswer.warnings` so nothing is dropped silently.
Recoveries that are not obvious from the warning text:

* a label that appears in several groups is merged into the first group (its regions appended,
  duplicates removed), so `boxes_by_label` has one entry per label;
* a group whose regions are all invalid (or that has none) is dropped; its label stays in the text;
* `count` is read from the ``<answer>`` if there is one (else from the text after ``</think>``),
  and ignores ``<ground>`` labels: a label echoes the query ("7-up cans") and is not the answer.
  Otherwise it is SPEC §5's protocol: strip ``<regionN>`` tokens, take the first integer.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

from vlmfo1 import prompts

Box = tuple[float, float, float, float]

# Qwen chat control tokens that can end (or pad) a generation; they carry no answer content.
CONTROL_TOKENS = ("<|im_end|>", "<|endoftext|>", "<|im_start|>")

# The warning every answer format records when generation stopped at max_new_tokens. The parser's
# own "(generation cut off?)" repairs are guesses from the text; only this one says the end was not reached.
CUT_OFF_WARNING = "answer cut off at max_new_tokens"


def was_cut_off(warnings: Sequence[str]) -> bool:
    return any(CUT_OFF_WARNING in warning for warning in warnings)

_GRAMMAR_TAG = r"</?(?:ground|objects|think|answer)>"
_TOKEN_RE = re.compile(rf"({_GRAMMAR_TAG})|<region(\d+)>|(<region[^<>]*>)")
# A label runs to its closing tag or, when that is missing, to the next tag.
_LABEL_RE = re.compile(r"<ground>[^<]*(?:</ground>)?")
# Also takes a region token cut off mid-way ("<region7"), whose digits are no count.
_ANY_TAG_RE = re.compile(rf"{_GRAMMAR_TAG}|<region[^<>\s]*>?")
_INTEGER_RE = re.compile(r"\d+")


@dataclass
class RegionRef:
    index: int
    box: Box | None = None  # the proposal's box, when `boxes` were given
    score: float | None = None  # the proposal's score, when `scores` were given


@dataclass
class GroundedGroup:
    label: str
    regions: list[RegionRef]


@dataclass
class ParsedAnswer:
    text: str  # as decoded
    clean_text: str  # control tokens removed, region tokens and grammar tags kept
    plain_text: str  # human readable: region tokens and tags removed, labels kept as words
    groups: list[GroundedGroup] = field(default_factory=list)
    mentions: list[RegionRef] = field(default_factory=list)  # <regionK> in free text, in order
    think: str | None = None
    answer: str | None = None  # content of <answer>, region tokens kept
    count: int | None = None
    warnings: list[str] = field(default_factory=list)
    is_none: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def boxes_by_label(self) -> dict[str, list[Box]]:
        if any(ref.box is None for group in self.groups for ref in group.regions):
            raise ValueError("boxes_by_label needs the proposal boxes: pass boxes= to parse_answer")
        return {group.label: [ref.box for ref in group.regions] for group in self.groups}

    def region_indexes(self) -> list[int]:
        refs = [ref for group in self.groups for ref in group.regions] + self.mentions
        return list(dict.fromkeys(ref.index for ref in refs))


class _GroundingScanner:
    """Walks the tag tokens of an answer, tracking where it is in the ``<ground>/<objects>`` grammar."""

    OUTSIDE, LABEL, AFTER_LABEL, OBJECTS = "outside", "label", "after label", "objects"

    def __init__(self, warnings: list[str]):
        self.warnings = warnings
        self.state = self.OUTSIDE
        self.label = ""
        self.indexes: list[int] = []
        self.groups: list[tuple[str, list[int]]] = []
        self.mentions: list[int] = []
        self.plain: list[str] = []
        self.group_just_closed = False  # nothing but whitespace since the last </objects>

    def scan(self, text: str) -> None:
        position = 0
        for match in _TOKEN_RE.finditer(text):
            self._text(text[position : match.start()])
            position = match.end()
            tag, index, unknown = match.groups()
            if unknown is not None:
                self.warnings.append(f"unknown token {unknown!r} dropped")
            elif index is not None:
                self._region(int(index))
            else:
                self._tag(tag)
        self._text(text[position:])
        self._end_group("at the end of the output (generation cut off?)")

    def _text(self, text: str) -> None:
        if text.strip():
            self.group_just_closed = False
        if self.state == self.OBJECTS:
            if text.strip():
                self.warnings.append(f"text {text.strip()!r} inside <objects> dropped")
            return
        if self.state == self.AFTER_LABEL and text.strip():
            self._end_group("(text follows </ground>)")
        if self.state == self.LABEL:
            self.label += text
        self.plain.append(text)

    def _region(self, index: int) -> None:
        if self.state == self.OUTSIDE:
            self.mentions.append(index)
            return
        if self.state != self.OBJECTS:
            missing = "</ground><objects>" if self.state == self.LABEL else "<objects>"
            self.warnings.append(f"<region{index}> after label {self.label.strip()!r} without {missing}; taken as its objects")
            self.state = self.OBJECTS
        self.indexes.append(index)

    def _tag(self, tag: str) -> None:
        if tag == prompts.GROUND_OPEN:
            self._end_group("before the next <ground>")
            if self.group_just_closed:
                self.plain.append(", ")  # adjacent groups (a detection answer) read as a list
            self.state, self.label, self.indexes = self.LABEL, "", []
        elif tag == prompts.GROUND_CLOSE and self.state == self.LABEL:
            self.state = self.AFTER_LABEL
        elif tag == prompts.OBJECTS_OPEN and self.state in (self.LABEL, self.AFTER_LABEL):
            if self.state == self.LABEL:
                self.warnings.append(f"<objects> before </ground> of label {self.label.strip()!r}; label closed there")
            self.state = self.OBJECTS
        elif tag == prompts.OBJECTS_OPEN and self.state == self.OUTSIDE:
            self.warnings.append("<objects> without a preceding <ground>; group gets the empty label")
            self.state, self.label, self.indexes = self.OBJECTS, "", []
        elif tag == prompts.OBJECTS_CLOSE and self.state == self.OBJECTS:
            self._close_group()
        elif tag in (prompts.THINK_OPEN, prompts.THINK_CLOSE, prompts.ANSWER_OPEN, prompts.ANSWER_CLOSE):
            self._end_group(f"before {tag}")
            self.plain.append("\n")  # keeps thinking and answer apart in the plain text
        else:
            self.warnings.append(f"misplaced {tag} ignored (in {self.state} state)")

    def _end_group(self, where: str) -> None:
        """Closes whatever group is open when the grammar says it should already be closed."""
        label = self.label.strip()
        if self.state == self.LABEL:
            self.warnings.append(f"unclosed <ground> {where}: label {label!r} has no regions")
        elif self.state == self.AFTER_LABEL:
            self.warnings.append(f"label {label!r} is not followed by <objects> {where}: it has no regions")
        elif self.state == self.OBJECTS:
            self.warnings.append(f"unclosed <objects> of label {label!r} {where}: kept its regions")
            self._close_group()
            return
        self.state = self.OUTSIDE

    def _close_group(self) -> None:
        self.groups.append((self.label.strip(), self.indexes))
        self.plain.append(" ")  # "red circle 2", not "red circle2"
        self.group_just_closed = True
        self.state, self.label, self.indexes = self.OUTSIDE, "", []


def parse_answer(
    text: str,
    boxes: Sequence[Sequence[float]] | None = None,
    scores: Sequence[float] | None = None,
    num_regions: int | None = None,
) -> ParsedAnswer:
    """Parses one decoded answer. `boxes`/`scores` are the proposals given to the model (index order);
    region indexes at or past ``len(boxes)`` or `num_regions` are dropped with a warning.

    Never raises on the answer text; raises ValueError only when `boxes`/`scores` are inconsistent.
    """
    box_list = _as_boxes(boxes)
    score_list = None if scores is None else [float(s) for s in scores]
    if box_list is not None and score_list is not None and len(score_list) != len(box_list):
        raise ValueError(f"{len(score_list)} scores given for {len(box_list)} boxes")
    limits: list[tuple[int, str]] = []  # (first invalid index, why)
    known_proposals = box_list if box_list is not None else score_list
    if known_proposals is not None:
        limits.append((len(known_proposals), f"{len(known_proposals)} proposals given"))
    if num_regions is not None:
        limits.append((num_regions, f"num_regions={num_regions}"))
    warnings: list[str] = []

    def resolve(index: int) -> RegionRef | None:
        for limit, why in limits:
            if index >= limit:
                warnings.append(f"<region{index}> is out of range ({why}); dropped")
                return None
        return RegionRef(
            index,
            box_list[index] if box_list is not None else None,
            score_list[index] if score_list is not None else None,
        )

    clean = _strip_control_tokens(text, warnings)
    think, think_end = _section(clean, prompts.THINK_OPEN, prompts.THINK_CLOSE, "thinking", warnings)
    answer, _ = _section(clean, prompts.ANSWER_OPEN, prompts.ANSWER_CLOSE, "answer", warnings)

    scanner = _GroundingScanner(warnings)
    scanner.scan(clean)
    groups: dict[str, GroundedGroup] = {}
    for label, indexes in scanner.groups:
        if not label:
            warnings.append("group with an empty label")
        unique = list(dict.fromkeys(indexes))
        if len(unique) < len(indexes):
            warnings.append(f"repeated regions in group {label!r} removed: {indexes} -> {unique}")
        refs = [ref for ref in map(resolve, unique) if ref is not None]
        if not refs:
            warnings.append(f"group {label!r} has no valid regions; dropped")
        elif label in groups:
            warnings.append(f"label {label!r} appears in more than one group; merged into the first")
            known = {ref.index for ref in groups[label].regions}
            groups[label].regions += [ref for ref in refs if ref.index not in known]
        else:
            groups[label] = GroundedGroup(label, refs)
    mentions = [ref for ref in map(resolve, scanner.mentions) if ref is not None]

    count_source = answer if answer is not None else clean[think_end:]
    is_none_source = (answer if answer is not None else clean).strip().rstrip(".")
    return ParsedAnswer(
        text=text,
        clean_text=clean,
        plain_text=_tidy("".join(scanner.plain)),
        groups=list(groups.values()),
        mentions=mentions,
        think=think,
        answer=answer,
        count=_first_integer(count_source),
        warnings=warnings,
        is_none=is_none_source == prompts.NO_OBJECT_ANSWER and not groups and not mentions,
    )


def decode_and_parse(
    tokenizer: Any,
    ids: Any,
    boxes: Any = None,
    scores: Any = None,
    num_regions: int | None = None,
) -> ParsedAnswer | list[ParsedAnswer]:
    """Decodes generated ids (new tokens only) and parses them.

    `ids` is 1-D (one answer; `boxes`/`scores` are its proposals) or 2-D (a batch, returns a list;
    `boxes`/`scores` then hold one entry per row, or are None). Region and grammar tokens are
    special added tokens, so decoding keeps special tokens; only the chat control tokens are removed.
    """
    rows = ids.tolist() if hasattr(ids, "tolist") else [r.tolist() if hasattr(r, "tolist") else r for r in ids]
    if not rows or not isinstance(rows[0], (list, tuple)):
        return parse_answer(_decode(tokenizer, rows), boxes, scores, num_regions)
    for name, per_row in (("boxes", boxes), ("scores", scores)):
        if per_row is not None and len(per_row) != len(rows):
            raise ValueError(f"a batch of {len(rows)} answers needs one {name} entry per answer, got {len(per_row)}")
    return [
        parse_answer(
            _decode(tokenizer, row),
            None if boxes is None else boxes[i],
            None if scores is None else scores[i],
            num_regions,
        )
        for i, row in enumerate(rows)
    ]


def _decode(tokenizer: Any, ids: list[int]) -> str:
    # spaces_between_special_tokens matters for slow tokenizers, which would otherwise put a space
    # between adjacent added tokens ("<region1> <region4>").
    return tokenizer.decode(
        ids, skip_special_tokens=False, clean_up_tokenization_spaces=False, spaces_between_special_tokens=False
    )


def _as_boxes(boxes: Sequence[Sequence[float]] | None) -> list[Box] | None:
    if boxes is None:
        return None
    result = []
    for i, box in enumerate(boxes.tolist() if hasattr(boxes, "tolist") else boxes):
        if len(box) != 4:
            raise ValueError(f"box {i} has {len(box)} values, expected 4 (x1, y1, x2, y2)")
        result.append(tuple(float(v) for v in box))
    return result


def _strip_control_tokens(text: str, warnings: list[str]) -> str:
    # The answer ends at the first <|im_end|>; after it there should only be padding.
    answer, end, rest = text.partition("<|im_end|>")
    for token in CONTROL_TOKENS:
        answer, rest = answer.replace(token, ""), rest.replace(token, "")
    if rest.strip():
        warnings.append(f"text after <|im_end|> ignored: {rest.strip()!r}")
    return answer.strip()


def _section(text: str, open_tag: str, close_tag: str, name: str, warnings: list[str]) -> tuple[str | None, int]:
    """Content of the first open_tag…close_tag section, and where the section ends (0 when absent)."""
    start = text.find(open_tag)
    content_start = start + len(open_tag) if start >= 0 else 0
    end = text.find(close_tag, content_start)
    if start < 0 and end < 0:
        return None, 0
    if start < 0:
        warnings.append(f"{close_tag} without {open_tag}: the text before it is taken as the {name}")
    if end < 0:
        warnings.append(f"unclosed {open_tag} (generation cut off?): the rest of the output is taken as the {name}")
        end = len(text)
    return text[content_start:end].strip(), min(len(text), end + len(close_tag))


def _first_integer(text: str) -> int | None:
    text = _ANY_TAG_RE.sub("", _LABEL_RE.sub("", text))
    match = _INTEGER_RE.search(text)
    return int(match.group()) if match else None


def _tidy(text: str) -> str:
    text = re.sub(r"[ \t]+", " ", text)
    text = re.sub(r" *\n\s*", "\n", text)  # one line break where tags or blank lines were
    text = re.sub(r" +([,.;:!?])", r"\1", text)  # where a stripped token stood before punctuation
    return text.strip()
