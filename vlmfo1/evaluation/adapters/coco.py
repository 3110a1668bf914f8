"""Detection datasets in COCO format: COCO val2017 (and ODinW, LVIS-style files) and OVDEval.

One item per image. Ground truth: ``target = {"annotations": [the image's COCO annotation dicts]}``,
``meta = {"image_id", "width", "height", "file_name"}``; the dataset carries the category list.

* COCO: every category in one prompt (SPEC §5, `prompts.coco_detection_prompt`).
* OVDEval: each image lists its positive labels (``text``) and hard-negative labels (``neg_text``);
  the prompt asks for all of them (``meta["labels"]``), scored with NMS-AP.
"""
from __future__ import annotations

import os
from typing import Any

from vlmfo1 import prompts
from vlmfo1.evaluation.adapters._files import image_path, read_json, require_keys
from vlmfo1.evaluation.items import EvalDataset, EvalItem


def load_coco_detection(
    annotation_file: str | os.PathLike, image_root: str | os.PathLike | None = None, task: str = "coco"
) -> EvalDataset:
    gt = _read_coco(annotation_file)
    names = [category["name"] for category in gt["categories"]]
    prompt = prompts.coco_detection_prompt(names)
    annotations = _annotations_by_image(gt, annotation_file)
    items = [
        EvalItem(
            id=str(image["id"]),
            image=image_path(image_root, image["file_name"]),
            prompt=prompt,
            target={"annotations": annotations.get(image["id"], [])},
            meta=_image_meta(image),
        )
        for image in gt["images"]
    ]
    return EvalDataset(task=task, items=items, categories=gt["categories"], source=str(annotation_file))


def load_ovdeval(annotation_file: str | os.PathLike, image_root: str | os.PathLike | None = None) -> EvalDataset:
    gt = _read_coco(annotation_file)
    known = {category["name"] for category in gt["categories"]}
    annotations = _annotations_by_image(gt, annotation_file)
    items = []
    for image in gt["images"]:
        where = f"{annotation_file}: image {image['id']}"
        require_keys(image, ("text", "neg_text"), where)
        labels = list(dict.fromkeys(list(image["text"]) + list(image["neg_text"])))
        unknown = [label for label in labels if label not in known]
        if unknown:
            raise ValueError(f"{where}: labels {unknown} are not category names")
        items.append(
            EvalItem(
                id=str(image["id"]),
                image=image_path(image_root, image["file_name"]),
                # Labels are phrases that may contain commas, so they are separated by "; ".
                prompt=prompts.detection_prompt(prompts.join_categories(labels, "; ")),
                target={"annotations": annotations.get(image["id"], [])},
                meta={**_image_meta(image), "labels": labels},
            )
        )
    return EvalDataset(task="ovdeval", items=items, categories=gt["categories"], source=str(annotation_file))


def coco_ground_truth(dataset: EvalDataset) -> dict[str, Any]:
    """The COCO annotation dict of exactly the dataset's items (after `limit`), for pycocotools."""
    if dataset.categories is None:
        raise ValueError(f"{dataset.task}: a detection dataset needs its category list")
    images = [
        {"id": item.meta["image_id"], **{key: item.meta[key] for key in ("width", "height", "file_name") if key in item.meta}}
        for item in dataset.items
    ]
    annotations = [annotation for item in dataset.items for annotation in item.target["annotations"]]
    return {"images": images, "annotations": annotations, "categories": dataset.categories}


def _read_coco(annotation_file: str | os.PathLike) -> dict[str, Any]:
    gt = read_json(annotation_file)
    require_keys(gt, ("images", "categories"), str(annotation_file))
    for i, category in enumerate(gt["categories"]):
        require_keys(category, ("id", "name"), f"{annotation_file}: category #{i}")
    for i, image in enumerate(gt["images"]):
        require_keys(image, ("id", "file_name"), f"{annotation_file}: image #{i}")
    return gt


def _annotations_by_image(gt: dict[str, Any], annotation_file: str | os.PathLike) -> dict[Any, list[dict]]:
    image_ids = {image["id"] for image in gt["images"]}
    by_image: dict[Any, list[dict]] = {}
    for i, annotation in enumerate(gt.get("annotations", [])):
        require_keys(annotation, ("image_id", "category_id", "bbox"), f"{annotation_file}: annotation #{i}")
        if annotation["image_id"] not in image_ids:
            raise ValueError(f"{annotation_file}: annotation #{i} is for unknown image_id {annotation['image_id']!r}")
        by_image.setdefault(annotation["image_id"], []).append(annotation)
    return by_image


def _image_meta(image: dict[str, Any]) -> dict[str, Any]:
    meta = {"image_id": image["id"], "file_name": image["file_name"]}
    for key in ("width", "height"):
        if key in image:
            meta[key] = image[key]
    return meta
