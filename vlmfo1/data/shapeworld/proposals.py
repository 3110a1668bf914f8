"""The proposal list of a scene: the boxes that region tokens stand for.

A real pipeline gets its boxes from a detector; ShapeWorld imitates one. Every object gets one box
(its visible box, jittered), distractor blobs and random background patches add negatives, scores
are noisy, and the order is shuffled so a region's index says nothing about what it holds.
"""
from __future__ import annotations

from dataclasses import dataclass

from vlmfo1.data.shapeworld.config import ShapeWorldConfig
from vlmfo1.data.shapeworld.geometry import iou
from vlmfo1.data.shapeworld.sampling import Draws
from vlmfo1.data.shapeworld.scene import Scene

DISTRACTOR, BACKGROUND = -1, -2  # `Proposals.object_ids` of boxes that hold no object
MIN_JITTER_IOU = 0.7  # a jittered box keeps at least this IoU with its object's box
MAX_BACKGROUND_IOU = 0.3  # a background box overlaps every object and blob less than this


@dataclass
class Proposals:
    boxes: list[list[int]]  # xyxy whole pixels
    scores: list[float]
    object_ids: list[int]  # the scene object each box holds, or DISTRACTOR / BACKGROUND

    def __post_init__(self) -> None:
        self._index = {obj: k for k, obj in enumerate(self.object_ids) if obj >= 0}

    def __len__(self) -> int:
        return len(self.boxes)

    def index_of(self, object_id: int) -> int:
        """The region index of a scene object."""
        return self._index[object_id]

    def indexes_of(self, object_ids) -> list[int]:
        return sorted(self._index[obj] for obj in object_ids)


def build_proposals(scene: Scene, rng: Draws, config: ShapeWorldConfig) -> Proposals:
    entries: list[tuple[list[float], float, int]] = []
    for obj in scene.objects:
        entries.append((_jittered(obj.bbox, rng, config.proposal_jitter, scene), round(rng.uniform(0.35, 1.0), 3), obj.id))
    for blob in scene.distractors:
        entries.append((_jittered(blob.bbox, rng, config.proposal_jitter, scene), round(rng.uniform(0.3, 0.95), 3), DISTRACTOR))
    taken = [obj.bbox for obj in scene.objects] + [blob.bbox for blob in scene.distractors]
    for _ in range(rng.integer(config.background_proposals[0], config.background_proposals[1] + 1)):
        box = _background_box(scene, rng, taken)
        if box is not None:
            entries.append((box, round(rng.uniform(0.3, 0.7), 3), BACKGROUND))
            taken.append(box)
    if len(entries) > config.max_proposals:
        # Objects come first in `entries`, and config validation keeps them within the cap.
        entries = entries[: config.max_proposals]
    rng.shuffle(entries)
    return Proposals(
        boxes=[box for box, _, _ in entries],
        scores=[score for _, score, _ in entries],
        object_ids=[obj for _, _, obj in entries],
    )


def _jittered(box, rng: Draws, amount: float, scene: Scene) -> list[int]:
    exact = [int(v) for v in box]
    if amount <= 0:
        return exact
    width, height = box[2] - box[0], box[3] - box[1]
    for _ in range(5):
        x1 = min(max(0.0, box[0] + rng.normal(0, amount * width)), scene.width)
        y1 = min(max(0.0, box[1] + rng.normal(0, amount * height)), scene.height)
        x2 = min(max(0.0, box[2] + rng.normal(0, amount * width)), scene.width)
        y2 = min(max(0.0, box[3] + rng.normal(0, amount * height)), scene.height)
        candidate = [round(x1), round(y1), round(x2), round(y2)]
        if candidate[2] > candidate[0] and candidate[3] > candidate[1] and iou(candidate, box) >= MIN_JITTER_IOU:
            return candidate
    return exact


def _background_box(scene: Scene, rng: Draws, taken) -> list[int] | None:
    short_side = min(scene.width, scene.height)
    for _ in range(20):
        width = rng.uniform(0.05, 0.3) * short_side
        height = width * rng.uniform(0.6, 1.6)
        if height >= scene.height:
            continue
        x1, y1 = rng.uniform(0, scene.width - width), rng.uniform(0, scene.height - height)
        box = [round(x1), round(y1), round(x1 + width), round(y1 + height)]
        if all(iou(box, other) < MAX_BACKGROUND_IOU for other in taken):
            return box
    return None
