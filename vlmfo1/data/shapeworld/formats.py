"""Task samples -> records: the FO1 record (region indexes) and its coordinate twin (JSON pixel boxes).

FO1 answers use the released grammar through `vlmfo1.prompts`. Coordinate answers follow Qwen2.5-VL's
native grounding output: a fenced JSON list of ``{"bbox_2d": [x1, y1, x2, y2], "label": ...}`` in
pixels of the stored image; a request with nothing to find is answered `prompts.NO_OBJECT_ANSWER` in
both styles, so the twins differ only in how they point at objects.
"""
from __future__ import annotations

import json
from typing import Any

from vlmfo1 import prompts
from vlmfo1.data.records import FO1Record
from vlmfo1.data.shapeworld.proposals import Proposals
from vlmfo1.data.shapeworld.scene import Scene
from vlmfo1.data.shapeworld.tasks import Grounding, TaskSample

COORDINATE_SUFFIX = "-coords"


def to_fo1_record(sample: TaskSample, scene: Scene, proposals: Proposals, record_id: str) -> FO1Record:
    answer = "".join(part if isinstance(part, str) else _fo1_grounding(part, proposals) for part in sample.answer)
    meta = _common_meta(sample, scene)
    groups = _groups(sample)
    if groups is not None:
        meta["targets"] = proposals.indexes_of(meta["object_ids"])
        for group in groups:
            group["targets"] = proposals.indexes_of(group["object_ids"])
        meta["groups"] = groups
    if sample.uses_regions:
        meta["regions"] = list(sample.regions)
        meta["proposal_objects"] = proposals.object_ids
    return FO1Record.single_turn(
        id=record_id,
        image=scene.file_name,
        prompt=sample.prompt,
        answer=answer,
        bbox_list=proposals.boxes if sample.uses_regions else [],
        score_list=proposals.scores if sample.uses_regions else [],
        task=sample.task,
        meta=meta,
    )


def to_coordinate_record(sample: TaskSample, scene: Scene, proposals: Proposals, record_id: str) -> FO1Record:
    """The twin of `to_fo1_record`'s record: no proposals, boxes written out in pixels."""
    text: list[str] = []
    inline_entries: list[dict[str, Any]] = []
    for part in sample.answer:
        if isinstance(part, str):
            text.append(part)
        elif part.inline:
            text.extend(label for label, _ in part.groups)
            inline_entries += _box_entries(part, scene)
        else:
            text.append(boxes_json(_box_entries(part, scene)))
    if inline_entries:
        text.append("\n" + boxes_json(inline_entries))
    meta = _common_meta(sample, scene)
    groups = _groups(sample)
    if groups is not None:
        meta["groups"] = groups
    if sample.regions:
        meta["region_boxes"] = [list(proposals.boxes[k]) for k in sample.regions]
    meta["fo1_id"] = record_id
    return FO1Record.single_turn(
        id=record_id + COORDINATE_SUFFIX,
        image=scene.file_name,
        prompt=sample.coordinate_prompt,
        answer="".join(text),
        task=sample.task,
        meta=meta,
    )


def boxes_json(entries: list[dict[str, Any]]) -> str:
    """Qwen2.5-VL's grounding answer: a fenced JSON list, one box per line; "None" when empty."""
    if not entries:
        return prompts.NO_OBJECT_ANSWER
    labels: dict[str, str] = {}  # a group's label repeats on each of its boxes: encode it once
    lines = []
    for entry in entries:
        label = entry["label"]
        if label not in labels:
            labels[label] = json.dumps(label, ensure_ascii=False)
        x1, y1, x2, y2 = entry["bbox_2d"]
        lines.append(f'\t{{"bbox_2d": [{x1}, {y1}, {x2}, {y2}], "label": {labels[label]}}}')
    body = ",\n".join(lines)
    return f"```json\n[\n{body}\n]\n```"


def _box_entries(part: Grounding, scene: Scene) -> list[dict[str, Any]]:
    entries = []
    for label, ids in part.groups:
        # Reading order (top to bottom, then left to right) gives the coordinate model a fixed order.
        for obj in sorted((scene.objects[i] for i in ids), key=lambda obj: (obj.bbox[1], obj.bbox[0])):
            entries.append({"bbox_2d": list(obj.bbox), "label": label})
    return entries


def _fo1_grounding(part: Grounding, proposals: Proposals) -> str:
    return prompts.format_grounded_answer([(label, proposals.indexes_of(ids)) for label, ids in part.groups])


def _groups(sample: TaskSample) -> list[dict[str, Any]] | None:
    parts = [part for part in sample.answer if isinstance(part, Grounding)]
    if not parts:
        return None
    return [{"label": label, "object_ids": sorted(ids)} for part in parts for label, ids in part.groups]


def _common_meta(sample: TaskSample, scene: Scene) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "scene_index": scene.index,
        "split": scene.split,
        "seed": scene.seed,
        "image_size": [scene.width, scene.height],
        **sample.meta,
    }
    if any(isinstance(part, Grounding) for part in sample.answer):
        ids = sample.grounded_object_ids()
        meta["object_ids"] = ids
        meta["gt_boxes"] = [list(scene.objects[i].bbox) for i in ids]
    return meta
