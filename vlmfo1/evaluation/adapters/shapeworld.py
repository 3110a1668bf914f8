"""ShapeWorld (`vlmfo1.data.shapeworld`): the FO1 records of a generated split, every task.

Reads ``{split}.fo1.jsonl`` of a dataset folder (or that file itself); image paths in the records
are relative to the folder. Each record is one item: its prompt, its proposals (``bbox_list`` /
``score_list``; the prompt's ``<regionK>`` point into them, so they must be used as they are; an
image-level question has none), and ``target = {"task": record.task, "answer": the reference answer,
"meta": record.meta}`` (``meta`` holds the exact ground truth: ``groups`` with their proposal
``targets`` and ``gt_boxes`` for grounding tasks, ``count``, ``word``, ``caption``, ``answer``).

The split's ``{split}.coco.json`` is plain COCO: ``vlmfo1 eval score coco`` scores detection on it.
"""
from __future__ import annotations

import os
from pathlib import Path

from vlmfo1.data.records import read_records
from vlmfo1.evaluation.adapters._files import image_path
from vlmfo1.evaluation.items import EvalDataset, EvalItem


def shapeworld_records_file(data: str | os.PathLike, split: str | None) -> Path:
    path = Path(data)
    if path.is_dir():
        if split is None:
            found = sorted(p.name.removesuffix(".fo1.jsonl") for p in path.glob("*.fo1.jsonl"))
            if len(found) != 1:
                raise ValueError(f"{path}: pass a split; the folder has {found or 'no *.fo1.jsonl files'}")
            split = found[0]
        path = path / f"{split}.fo1.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"ShapeWorld records not found: {path}")
    return path


def load_shapeworld(
    data: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    split: str | None = None,
    tasks: tuple[str, ...] | None = None,
) -> EvalDataset:
    """`tasks` keeps only records of those tasks (all when None)."""
    records_file = shapeworld_records_file(data, split)
    root = Path(image_root) if image_root is not None else records_file.parent
    items = []
    for record in read_records(records_file):
        if tasks is not None and record.task not in tasks:
            continue
        items.append(
            EvalItem(
                id=record.id,
                image=image_path(root, record.image),
                prompt=record.prompt,
                target={"task": record.task, "answer": record.answer, "meta": record.meta},
                proposals=[list(box) for box in record.bbox_list],
                proposal_scores=list(record.score_list),
                meta={"task": record.task},
            )
        )
    return EvalDataset(task="shapeworld", items=items, source=str(records_file))
