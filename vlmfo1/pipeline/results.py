"""What `FO1Pipeline` returns: answers, grounded regions with scores, and the proposals behind them.

Every task returns an `FO1Result`. Boxes are xyxy in original-image pixels. A region's `index` is
its position in `FO1Result.proposals` (across all chunks when more than 100 proposals were split),
so `result.proposals.boxes[region.index] == region.box`.

`FO1Result.to_dict()` is plain JSON (`RESULT_JSON_SCHEMA` describes it; masks are not written) and
`FO1Result.from_dict` reads it back; `to_coco` gives COCO results (`[x, y, w, h]`, one per
detection).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

SCHEMA_VERSION = 1


@dataclass
class ProposalSet:
    """The regions a task was run on, in region-index order."""

    boxes: list[list[float]]  # xyxy original pixels, clipped to the image
    scores: list[float] | None = None  # the proposer's scores; None for boxes without scores
    labels: list[str] | None = None  # the proposer's own class names, when it gives them
    source: str = "user"  # proposer name, or "user" for boxes passed in
    # [N, H, W] boolean masks in original pixels, when the proposer gives them; not serialised.
    masks: Any = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.boxes)

    def to_dict(self) -> dict[str, Any]:
        return {"boxes": self.boxes, "scores": self.scores, "labels": self.labels, "source": self.source}


@dataclass
class Region:
    """One region an answer names: under a `<ground>` label (a detection) or in free text (a mention)."""

    index: int  # into FO1Result.proposals
    box: list[float]  # xyxy original pixels
    label: str | None  # the grounded label; None for a free-text mention
    score: float  # per FO1Result.score_mode
    proposal_score: float | None  # the proposer's score (None for boxes given without scores)
    llm_score: float | None  # probability the model gave the region token where it emitted it


@dataclass
class RegionAnswer:
    """The answer about one region (region caption, region OCR)."""

    index: int
    box: list[float]
    text: str  # human readable (region tokens and tags removed)
    raw: str  # as generated, control tokens removed


@dataclass
class FO1Result:
    task: str
    image_size: tuple[int, int]  # (width, height) of the original image
    queries: list[str]  # the task text of each model call, as sent
    answer: str  # human-readable answer (calls joined by newlines)
    raw_answers: list[str]  # each call's answer as generated (control tokens removed)
    proposals: ProposalSet
    detections: list[Region] = field(default_factory=list)
    mentions: list[Region] = field(default_factory=list)
    region_answers: list[RegionAnswer] = field(default_factory=list)
    count: int | None = None
    think: str | None = None
    score_mode: str = "proposal"
    num_chunks: int = 1
    warnings: list[str] = field(default_factory=list)

    # -- views -------------------------------------------------------------------------------
    def by_label(self) -> dict[str, list[Region]]:
        """Detections grouped by label, in answer order."""
        groups: dict[str, list[Region]] = {}
        for region in self.detections:
            groups.setdefault(region.label or "", []).append(region)
        return groups

    def boxes_by_label(self) -> dict[str, list[list[float]]]:
        return {label: [r.box for r in regions] for label, regions in self.by_label().items()}

    # -- serialisation -----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["proposals"] = self.proposals.to_dict()
        data["image_size"] = list(self.image_size)
        data["schema_version"] = SCHEMA_VERSION
        return data

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "FO1Result":
        data = dict(data)
        version = data.pop("schema_version", SCHEMA_VERSION)
        if version != SCHEMA_VERSION:
            raise ValueError(f"result schema version {version} is not supported (this vlmfo1 reads {SCHEMA_VERSION})")
        data["proposals"] = ProposalSet(**data["proposals"])
        data["image_size"] = tuple(data["image_size"])
        data["detections"] = [Region(**r) for r in data.get("detections", [])]
        data["mentions"] = [Region(**r) for r in data.get("mentions", [])]
        data["region_answers"] = [RegionAnswer(**r) for r in data.get("region_answers", [])]
        return cls(**data)

    def to_coco(self, image_id: Any, category_ids: Mapping[str, int]) -> tuple[list[dict[str, Any]], list[str]]:
        """COCO results of the detections (`bbox` xywh, `score` per `score_mode`) and the labels that
        are no key of `category_ids` (their detections are left out, as the COCO protocol does)."""
        from vlmfo1.evaluation.metrics.detection import detections_to_coco_results

        return detections_to_coco_results(
            image_id, ((r.label or "", r.box, r.score) for r in self.detections), category_ids
        )


def results_to_coco(
    results: Sequence[tuple[Any, FO1Result]], category_ids: Mapping[str, int]
) -> tuple[list[dict[str, Any]], list[str]]:
    """COCO results of many images: `results` are (image_id, result) pairs."""
    rows: list[dict[str, Any]] = []
    unknown: list[str] = []
    for image_id, result in results:
        image_rows, image_unknown = result.to_coco(image_id, category_ids)
        rows += image_rows
        unknown += [label for label in image_unknown if label not in unknown]
    return rows, unknown


_NUMBER = {"type": "number"}
_BOX = {"type": "array", "items": _NUMBER, "minItems": 4, "maxItems": 4}
_OPTIONAL_NUMBER = {"type": ["number", "null"]}
_REGION = {
    "type": "object",
    "required": ["index", "box", "label", "score", "proposal_score", "llm_score"],
    "additionalProperties": False,
    "properties": {
        "index": {"type": "integer", "minimum": 0},
        "box": _BOX,
        "label": {"type": ["string", "null"]},
        "score": _NUMBER,
        "proposal_score": _OPTIONAL_NUMBER,
        "llm_score": _OPTIONAL_NUMBER,
    },
}
_STRINGS = {"type": "array", "items": {"type": "string"}}

# JSON Schema (draft 2020-12) of `FO1Result.to_dict()`.
RESULT_JSON_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "vlmfo1 FO1Result",
    "type": "object",
    "additionalProperties": False,
    "required": [
        "schema_version", "task", "image_size", "queries", "answer", "raw_answers", "proposals", "detections",
        "mentions", "region_answers", "count", "think", "score_mode", "num_chunks", "warnings",
    ],
    "properties": {
        "schema_version": {"const": SCHEMA_VERSION},
        "task": {"type": "string"},
        "image_size": {"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 2, "maxItems": 2},
        "queries": _STRINGS,
        "answer": {"type": "string"},
        "raw_answers": _STRINGS,
        "proposals": {
            "type": "object",
            "required": ["boxes", "scores", "labels", "source"],
            "additionalProperties": False,
            "properties": {
                "boxes": {"type": "array", "items": _BOX},
                "scores": {"type": ["array", "null"], "items": _NUMBER},
                "labels": {"type": ["array", "null"], "items": {"type": "string"}},
                "source": {"type": "string"},
            },
        },
        "detections": {"type": "array", "items": _REGION},
        "mentions": {"type": "array", "items": _REGION},
        "region_answers": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["index", "box", "text", "raw"],
                "additionalProperties": False,
                "properties": {
                    "index": {"type": "integer", "minimum": 0},
                    "box": _BOX,
                    "text": {"type": "string"},
                    "raw": {"type": "string"},
                },
            },
        },
        "count": {"type": ["integer", "null"]},
        "think": {"type": ["string", "null"]},
        "score_mode": {"enum": ["proposal", "llm", "combined"]},
        "num_chunks": {"type": "integer", "minimum": 1},
        "warnings": _STRINGS,
    },
}
