"""Upstream's proposal JSONL: one ``{"image", "bbox_list", "score_list"}`` object per line.

Computed once with ``vlmfo1 propose`` and read back by evaluation and training.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Iterator

from vlmfo1.proposals.base import Proposals

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")


def iter_records(path: str | Path) -> Iterator[dict]:
    """JSON objects of a JSONL file; blank lines are skipped, a malformed line is an error naming it."""
    path = Path(path)
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{line_number}: not valid JSON ({error.msg})") from error
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{line_number}: expected a JSON object, got {type(record).__name__}")
            yield record


def read_proposals(path: str | Path) -> dict[str, Proposals]:
    """``{image: Proposals}`` from a proposal JSONL. An image listed twice is an error."""
    result: dict[str, Proposals] = {}
    for line_number, record in enumerate(iter_records(path), start=1):
        if "image" not in record:
            raise ValueError(f"{path}: record {line_number} has no 'image' key")
        image = str(record["image"])
        if image in result:
            raise ValueError(f"{path}: image {image!r} appears more than once")
        try:
            result[image] = Proposals.from_record(record)
        except (KeyError, ValueError) as error:
            raise ValueError(f"{path}: record for {image!r}: {error}") from error
    return result


def write_proposals(path: str | Path, items: Iterable[tuple[str, Proposals]]) -> int:
    """Write ``(image, proposals)`` pairs as JSONL; returns the number of records."""
    count = 0
    with Path(path).open("w", encoding="utf-8") as handle:
        for image, proposals in items:
            handle.write(json.dumps(proposals.to_record(image)) + "\n")
            count += 1
    return count


def list_images(path: str | Path, recursive: bool = False) -> list[Path]:
    """The image itself, or the images of a folder sorted by path (``recursive`` walks subfolders)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"no such image or folder: {path}")
    pattern = "**/*" if recursive else "*"
    images = sorted(p for p in path.glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    return images


__all__ = ["IMAGE_EXTENSIONS", "iter_records", "list_images", "read_proposals", "write_proposals"]
