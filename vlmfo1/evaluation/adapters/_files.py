"""Reading the annotation files users already have, with errors that name the file."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    with open(path, encoding="utf-8") as handle:
        try:
            return json.load(handle)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not valid JSON ({error})") from error


def read_jsonl(path: str | os.PathLike) -> list[Any]:
    """Objects of a JSON-lines file; blank lines are skipped, a bad line is an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    rows = []
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{line_number}: not valid JSON ({error})") from error
    return rows


def read_json_or_jsonl(path: str | os.PathLike) -> list[Any]:
    """A JSON list, or JSON lines (chosen by the file's first non-blank character)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    with open(path, encoding="utf-8") as handle:
        head = handle.read(4096).lstrip()
    if head.startswith("["):
        rows = read_json(path)
        if not isinstance(rows, list):
            raise ValueError(f"{path}: expected a JSON list")
        return rows
    return read_jsonl(path)


def image_path(image_root: str | os.PathLike | None, file_name: str) -> str:
    """Where an image is: `file_name` under `image_root` (as given when there is no root).
    Existence is not checked here; scoring needs no image, and the runner reports missing ones."""
    return file_name if image_root is None else str(Path(image_root) / file_name)


def require_keys(row: Any, keys: tuple[str, ...], where: str) -> None:
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
    missing = [key for key in keys if key not in row]
    if missing:
        raise ValueError(f"{where}: missing field(s) {missing}")
