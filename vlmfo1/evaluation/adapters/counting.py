"""Counting datasets (CountBench, PixMo-Count) in upstream VLM-FO1's processed form
(``evaluation/processed_data/countbench_with_upn_score_0.3_0.8.json``): a JSON list (or JSON lines) of

    {"question": "How many headsets are there in the image? ...", "answer": 10, "image": "image_0.jpg",
     "bboxes": [[x1, y1, x2, y2], ...], "scores": [...]}

``bboxes``/``scores`` (upstream's UPN proposals) become the item's proposals when present. Instead of
``question`` a row may give the object name (``label`` or ``category``), and ``count`` instead of
``answer``. Item ids are the row's ``id`` if it has one, else its position in the file.
``target = {"count": int}``.
"""
from __future__ import annotations

import os

from vlmfo1 import prompts
from vlmfo1.evaluation.adapters._files import image_path, read_json_or_jsonl, require_keys
from vlmfo1.evaluation.items import EvalDataset, EvalItem


def load_counting(annotation_file: str | os.PathLike, image_root: str | os.PathLike | None = None) -> EvalDataset:
    items = []
    for position, row in enumerate(read_json_or_jsonl(annotation_file)):
        where = f"{annotation_file}: item #{position}"
        require_keys(row, ("image",), where)
        prompt = _prompt(row, where)
        count = row.get("answer", row.get("count"))
        if isinstance(count, str) and count.strip().isdigit():
            count = int(count)
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise ValueError(f"{where}: the count ('answer' or 'count') must be a non-negative integer, got {count!r}")
        boxes = row.get("bboxes")
        scores = row.get("scores")
        if boxes is not None and scores is not None and len(scores) != len(boxes):
            raise ValueError(f"{where}: {len(scores)} scores for {len(boxes)} bboxes")
        items.append(
            EvalItem(
                id=str(row.get("id", position)),
                image=image_path(image_root, row["image"]),
                prompt=prompt,
                target={"count": count},
                proposals=[[float(v) for v in box] for box in boxes] if boxes is not None else None,
                proposal_scores=[float(s) for s in scores] if scores is not None and boxes is not None else None,
            )
        )
    return EvalDataset(task="counting", items=items, source=str(annotation_file))


def _prompt(row: dict, where: str) -> str:
    if "question" in row:
        return row["question"]
    for key in ("label", "category"):
        if key in row:
            return prompts.counting_prompt(row[key])
    raise ValueError(f"{where}: needs a 'question', or the object name as 'label' or 'category'")
