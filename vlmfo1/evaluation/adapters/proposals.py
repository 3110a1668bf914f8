"""Upstream VLM-FO1's precomputed proposal files, e.g. ``cocoVal2017_with_upn_score_0.3_0.8.jsonl``:
one JSON object per line, ``{"id": <COCO image id>, "image": "000000397133.jpg", "bbox_list":
[[x1, y1, x2, y2], ...], "score_list": [...], "conversations": [{"from": "human", "value": "<image>\\n..."}]}``.

`attach_proposals` gives a dataset's items these boxes and scores, so a run uses exactly upstream's
proposals (the way its published numbers were made). Entries are matched by image id (an item's
``meta["image_id"]``, else its id), falling back to the image file name.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import PurePath

from vlmfo1.evaluation.adapters._files import read_json_or_jsonl, require_keys
from vlmfo1.evaluation.items import EvalDataset
from vlmfo1 import prompts


@dataclass
class ProposalEntry:
    image: str
    boxes: list[list[float]]
    scores: list[float] | None
    prompt: str | None  # the file's own question, when it has one


def load_proposal_file(path: str | os.PathLike) -> dict[str, ProposalEntry]:
    """Entries keyed by ``str(id)``."""
    entries: dict[str, ProposalEntry] = {}
    for position, row in enumerate(read_json_or_jsonl(path)):
        where = f"{path}: entry #{position}"
        require_keys(row, ("id", "image", "bbox_list"), where)
        key = str(row["id"])
        if key in entries:
            raise ValueError(f"{where}: id {key!r} occurs twice")
        boxes = row["bbox_list"]
        for i, box in enumerate(boxes):
            if len(box) != 4:
                raise ValueError(f"{where}: box {i} must be [x1, y1, x2, y2], got {box!r}")
        scores = row.get("score_list")
        if scores is not None and len(scores) != len(boxes):
            raise ValueError(f"{where}: {len(scores)} scores for {len(boxes)} boxes")
        prompt = None
        if row.get("conversations"):
            prompt = row["conversations"][0]["value"].removeprefix(f"{prompts.IMAGE_TAG}\n")
        entries[key] = ProposalEntry(
            image=row["image"],
            boxes=[[float(v) for v in box] for box in boxes],
            scores=[float(s) for s in scores] if scores is not None else None,
            prompt=prompt,
        )
    return entries


def attach_proposals(dataset: EvalDataset, entries: dict[str, ProposalEntry], source: str = "") -> EvalDataset:
    """A copy of `dataset` whose items carry the matching entry's proposals; every item must have one."""
    by_file_name = {PurePath(entry.image).name: entry for entry in entries.values()}
    items = []
    unmatched = []
    for item in dataset.items:
        key = str(item.meta.get("image_id", item.id))
        entry = entries.get(key) or by_file_name.get(PurePath(item.image).name)
        if entry is None:
            unmatched.append(item.id)
            continue
        items.append(dataclasses.replace(item, proposals=entry.boxes, proposal_scores=entry.scores))
    if unmatched:
        raise ValueError(
            f"{len(unmatched)} of {len(dataset.items)} items have no proposals in {source or 'the proposal file'} "
            f"(first: {unmatched[:5]})"
        )
    return dataclasses.replace(dataset, items=items)
