"""Prediction files.

* Every task: JSON lines, one object per item with its ``"id"`` (an integer id is read as its string)
  and the task's fields (see `vlmfo1.evaluation.tasks`). A JSON list of such objects is read too.
* Detection tasks also read a COCO results file: a JSON list of
  ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``.

A repeated id is an error (which of the two is meant cannot be known); a line that is not JSON is
an error naming the line.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def read_prediction_records(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Records keyed by ``str(id)``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"predictions file not found: {path}")
    rows = _read_rows(path)
    records: dict[str, dict[str, Any]] = {}
    for where, row in rows:
        if not isinstance(row, dict) or "id" not in row:
            raise ValueError(f"{where}: a prediction must be a JSON object with an 'id'")
        key = str(row["id"])
        if key in records:
            raise ValueError(f"{where}: id {key!r} occurs twice")
        records[key] = row
    return records


def read_coco_results_or_records(path: str | os.PathLike) -> list[dict[str, Any]] | dict[str, dict[str, Any]]:
    """A COCO results list (objects with ``image_id``), or prediction records (objects with ``id``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"predictions file not found: {path}")
    rows = _read_rows(path)
    if rows and all(isinstance(row, dict) and "image_id" in row and "id" not in row for _, row in rows):
        return [row for _, row in rows]
    return read_prediction_records(path)


def append_prediction_record(path: str | os.PathLike, record: dict[str, Any]) -> None:
    """Adds one record as a line and flushes it, so an interrupted run keeps every finished item
    (a run resumes by skipping the ids `read_prediction_records` already finds)."""
    if "id" not in record:
        raise ValueError(f"a prediction record needs an 'id': {record!r}")
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def _read_rows(path: Path) -> list[tuple[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not valid JSON ({error})") from error
        return [(f"{path}: entry #{i}", row) for i, row in enumerate(rows)]
    result = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            result.append((f"{path}:{line_number}", json.loads(line)))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{line_number}: not valid JSON ({error})") from error
    return result
