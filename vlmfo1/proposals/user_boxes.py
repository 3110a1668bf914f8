"""Boxes the user already has: a list, a JSON file, a COCO file, or upstream's proposal JSONL.

Accepted sources (``UserBoxesProposer(source)`` or ``--proposer user:FILE``):

- a list of boxes ``[[x1, y1, x2, y2], ...]`` (numpy arrays too): the same boxes for every image;
- a dict ``{image: boxes}`` or ``{image: {"boxes"|"bbox_list": ..., "scores"|"score_list": ..., "labels"|"label_list": ...}}``;
- ``*.jsonl``: upstream's proposal records ``{"image", "bbox_list", "score_list"}``;
- ``*.json`` holding any of the above, a single record with ``bbox_list``, a COCO dataset
  (``images`` + ``annotations``; bbox is ``xywh``) or a COCO results list
  (``[{"image_id", "bbox", "score", "category_id"}]``; bbox is ``xywh``).

Boxes without scores get score 1.0 and keep their given order. Images are matched by their
exact key, then by normalised path, then by file name (must be unique), then, for COCO files
keyed by numeric id, by the file name's numeric stem (``000000397133.jpg`` -> 397133).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal, Mapping

import numpy as np
from PIL import Image

from vlmfo1.proposals.base import PostProcessConfig, Proposals, Proposer
from vlmfo1.proposals.io import read_proposals

BoxFormat = Literal["xyxy", "xywh"]


def _xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    boxes = boxes.copy()
    boxes[:, 2] += boxes[:, 0]
    boxes[:, 3] += boxes[:, 1]
    return boxes


def _to_proposals(entry: Any, box_format: BoxFormat, where: str) -> Proposals:
    """One image's boxes from a list of boxes or a dict with boxes/scores/labels."""
    scores = labels = None
    if isinstance(entry, Mapping):
        boxes = entry.get("boxes", entry.get("bbox_list"))
        if boxes is None:
            raise ValueError(f"{where}: expected 'boxes' or 'bbox_list', got keys {sorted(entry)}")
        scores = entry.get("scores", entry.get("score_list"))
        labels = entry.get("labels", entry.get("label_list"))
    else:
        boxes = entry
    boxes_array = np.asarray(boxes, dtype=np.float32)
    if boxes_array.size == 0:
        boxes_array = boxes_array.reshape(0, 4)
    if boxes_array.ndim != 2 or boxes_array.shape[1] != 4:
        raise ValueError(f"{where}: boxes must be a list of [x1, y1, x2, y2], got shape {boxes_array.shape}")
    if box_format == "xywh":
        boxes_array = _xywh_to_xyxy(boxes_array)
    if scores is None:
        scores = np.ones(len(boxes_array), dtype=np.float32)
    try:
        return Proposals(boxes_array, scores, labels)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from error


def _from_coco_dataset(data: Mapping[str, Any]) -> dict[str, Proposals]:
    names = {image["id"]: image["file_name"] for image in data["images"]}
    categories = {c["id"]: c.get("name", str(c["id"])) for c in data.get("categories", [])}
    grouped: dict[Any, list[dict]] = {image_id: [] for image_id in names}
    for annotation in data["annotations"]:
        if annotation["image_id"] not in grouped:
            raise ValueError(f"COCO annotation {annotation.get('id')} refers to unknown image_id {annotation['image_id']}")
        grouped[annotation["image_id"]].append(annotation)
    result = {}
    for image_id, image_annotations in grouped.items():
        result[names[image_id]] = _coco_annotations_to_proposals(image_annotations, categories, f"COCO image {image_id}")
    return result


def _coco_annotations_to_proposals(annotations: list[dict], categories: Mapping[Any, str], where: str) -> Proposals:
    boxes = np.asarray([a["bbox"] for a in annotations], dtype=np.float32).reshape(-1, 4)
    scores = [float(a.get("score", 1.0)) for a in annotations]
    labels = None
    if annotations and all("category_id" in a for a in annotations):
        labels = [categories.get(a["category_id"], str(a["category_id"])) for a in annotations]
    return _to_proposals({"boxes": _xywh_to_xyxy(boxes), "scores": scores, "labels": labels}, "xyxy", where)


def _from_coco_results(results: list[dict]) -> dict[str, Proposals]:
    grouped: dict[str, list[dict]] = {}
    for result in results:
        grouped.setdefault(str(result["image_id"]), []).append(result)
    return {image_id: _coco_annotations_to_proposals(items, {}, f"image_id {image_id}") for image_id, items in grouped.items()}


def _is_box_list(value: Any) -> bool:
    return isinstance(value, list) and (len(value) == 0 or (isinstance(value[0], (list, tuple)) and len(value[0]) == 4 and not isinstance(value[0][0], (list, dict))))


def _load_source(source: Any, box_format: BoxFormat) -> tuple[dict[str, Proposals] | None, Proposals | None]:
    """(per-image proposals, or the proposals shared by every image)."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"user boxes file not found: {path}")
        if path.suffix.lower() == ".jsonl":
            return read_proposals(path), None
        with path.open(encoding="utf-8") as handle:
            try:
                data = json.load(handle)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}: not valid JSON ({error.msg})") from error
        return _load_source(data, box_format)
    if isinstance(source, np.ndarray) or _is_box_list(source):
        return None, _to_proposals(source, box_format, "user boxes")
    if isinstance(source, list) and source and isinstance(source[0], Mapping) and "image_id" in source[0]:
        return _from_coco_results(source), None
    if isinstance(source, Mapping):
        if "images" in source and "annotations" in source:
            return _from_coco_dataset(source), None
        if "bbox_list" in source:
            if "image" in source:
                return {str(source["image"]): _to_proposals(source, box_format, str(source["image"]))}, None
            return None, _to_proposals(source, box_format, "user boxes")
        return {str(key): _to_proposals(value, box_format, f"image {key!r}") for key, value in source.items()}, None
    raise ValueError(
        "user boxes must be a list of xyxy boxes, a {image: boxes} dict, or a .json/.jsonl file path; "
        f"got {type(source).__name__}"
    )


class UserBoxesProposer(Proposer):
    """Returns the boxes it was given for the image (see the module docstring for sources).

    ``missing``: what an image without an entry gets: ``"error"`` (default) or ``"empty"``.
    User boxes are not suppressed by default (``nms_iou=None``): the user meant every box.
    """

    default_postprocess = PostProcessConfig(nms_iou=None)

    def __init__(
        self,
        source: Any,
        *,
        box_format: BoxFormat = "xyxy",
        missing: Literal["error", "empty"] = "error",
        postprocess: PostProcessConfig | None = None,
    ) -> None:
        super().__init__(postprocess)
        if box_format not in ("xyxy", "xywh"):
            raise ValueError(f"box_format must be 'xyxy' or 'xywh', got {box_format!r}")
        if missing not in ("error", "empty"):
            raise ValueError(f"missing must be 'error' or 'empty', got {missing!r}")
        self.missing = missing
        self.per_image, self.shared = _load_source(source, box_format)
        self._by_path: dict[str, str] = {}
        self._by_name: dict[str, list[str]] = {}
        self._by_number: dict[int, str] = {}
        for key in self.per_image or {}:
            self._by_path[os.path.normpath(key)] = key
            self._by_name.setdefault(Path(key).name, []).append(key)
            if key.isdigit():
                self._by_number[int(key)] = key

    @classmethod
    def from_spec(cls, arg: str | None, **options: Any) -> "UserBoxesProposer":
        if arg is None:
            raise ValueError("the 'user' proposer needs a file: --proposer user:boxes.json (or .jsonl, COCO .json)")
        return cls(arg, **options)

    @property
    def images(self) -> list[str]:
        """The image keys the source holds boxes for (empty when boxes are shared by all images)."""
        return list(self.per_image or {})

    def lookup(self, image_id: str | None) -> Proposals | None:
        if self.shared is not None:
            return self.shared
        assert self.per_image is not None
        if image_id is None:
            if len(self.per_image) == 1:
                return next(iter(self.per_image.values()))
            raise ValueError("user boxes hold several images: pass image_id= (or an image path) to choose")
        if image_id in self.per_image:
            return self.per_image[image_id]
        key = self._by_path.get(os.path.normpath(image_id))
        if key is not None:
            return self.per_image[key]
        same_name = self._by_name.get(Path(image_id).name, [])
        if len(same_name) > 1:
            raise ValueError(f"image {image_id!r} matches several user-box entries by file name: {same_name}")
        if same_name:
            return self.per_image[same_name[0]]
        stem = Path(image_id).stem
        if stem.isdigit() and int(stem) in self._by_number:
            return self.per_image[self._by_number[int(stem)]]
        return None

    def _propose(self, image: Image.Image, *, image_id: str | None, prompts: list[str] | None) -> Proposals:
        found = self.lookup(image_id)
        if found is None:
            if self.missing == "empty":
                return Proposals.empty()
            raise KeyError(f"no user boxes for image {image_id!r} ({len(self.per_image or {})} images in the source)")
        return found


__all__ = ["UserBoxesProposer"]
