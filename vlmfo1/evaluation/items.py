"""The uniform unit of evaluation: every dataset adapter yields `EvalItem`s inside an `EvalDataset`.

An item is one model query: an image, the regions the prompt names, optional precomputed
proposals, the prompt, and the ground truth in the task's own form (documented by each adapter
in `vlmfo1.evaluation.adapters`). Predictions are keyed by `EvalItem.id`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

Box = list[float]  # [x1, y1, x2, y2] in pixels of the original image


@dataclass
class EvalItem:
    id: str  # unique within the dataset; the key of this item's prediction
    image: str  # path of the image file (adapter's image root joined with the dataset's file name)
    prompt: str  # task text given with the image; <regionK> names the K-th box the model receives
    target: dict[str, Any]  # ground truth, in the task's form
    # Boxes the prompt names as <region0>, <region1>, ... (region OCR / classification). They are
    # given to the model first and as they are; proposals, if the task uses them, follow.
    regions: list[Box] = field(default_factory=list)
    # Precomputed proposals (upstream's files, HumanRef candidates, ShapeWorld records). None: the
    # runner's proposer makes them (for tasks whose `uses_proposals` is true).
    proposals: list[Box] | None = None
    proposal_scores: list[float] | None = None
    meta: dict[str, Any] = field(default_factory=dict)  # context such as image_id, width, height, domain

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class EvalDataset:
    """Items of one benchmark, plus what scoring needs beyond the items."""

    task: str  # name of the task in `vlmfo1.evaluation.tasks.TASKS`
    items: list[EvalItem]
    # Detection: the COCO category list ({"id", "name", ...}) predictions refer to.
    categories: list[dict[str, Any]] | None = None
    source: str = ""  # where the items were read from, for reports

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for item in self.items:
            if item.id in seen:
                raise ValueError(f"{self.source or self.task}: item id {item.id!r} occurs twice")
            seen.add(item.id)

    def __len__(self) -> int:
        return len(self.items)

    def limit(self, count: int | None) -> "EvalDataset":
        """The first `count` items (all when None); scoring then covers only those."""
        if count is None:
            return self
        if count < 0:
            raise ValueError(f"limit must be >= 0, got {count}")
        return dataclasses.replace(self, items=self.items[:count])

    def by_id(self) -> dict[str, EvalItem]:
        return {item.id: item for item in self.items}
