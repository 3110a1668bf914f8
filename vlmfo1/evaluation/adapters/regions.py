"""Region-level datasets: the prompt names one given box, ``<region0>``.

LVIS / PACO region classification, in Osprey's evaluation files (``lvis_val_1k_category.json``,
``paco_val_1k_category.json``): a list of images ``{"id", "file_name", "height", "width",
"categories": [name, ...], "annotations": [{"bbox": [x, y, w, h], ...}, ...]}`` where
``categories[i]`` names ``annotations[i]``. One item per region; ``target = {"category": name}``
(raw; the metric cleans it).

COCO-Text region OCR, in the COCO-Text API's file (``COCO_Text.json`` v1.4 or ``cocotext.v2.json``):
``{"anns": {id: {"image_id", "bbox", "utf8_string", "legibility", ...}}, "imgs": {id: {"file_name",
"set", ...}}}``. One item per legible annotation with a transcription in the chosen split;
``target = {"text": utf8_string}``.
"""
from __future__ import annotations

import os

from vlmfo1 import prompts
from vlmfo1.evaluation.adapters._files import image_path, read_json, require_keys
from vlmfo1.evaluation.box_ops import xywh_to_xyxy
from vlmfo1.evaluation.items import EvalDataset, EvalItem

# Osprey's question, with FO1's region token in place of Osprey's mask token. It belongs with the
# task templates in `vlmfo1.prompts` (not owned by this module); kept here until it moves there.
REGION_CATEGORY_PROMPT = "What is the category of {}? Using only one word or phrase."


def load_region_classification(
    annotation_file: str | os.PathLike, image_root: str | os.PathLike | None = None, task: str = "lvis"
) -> EvalDataset:
    images = read_json(annotation_file)
    if not isinstance(images, list):
        raise ValueError(f"{annotation_file}: expected Osprey's list of images")
    prompt = REGION_CATEGORY_PROMPT.format(prompts.region_token(0))
    items = []
    for position, image in enumerate(images):
        where = f"{annotation_file}: image #{position}"
        require_keys(image, ("id", "file_name", "categories", "annotations"), where)
        if len(image["categories"]) != len(image["annotations"]):
            raise ValueError(
                f"{where}: {len(image['categories'])} categories for {len(image['annotations'])} annotations"
            )
        for index, (category, annotation) in enumerate(zip(image["categories"], image["annotations"])):
            require_keys(annotation, ("bbox",), f"{where}, annotation {index}")
            if not str(category).strip():
                raise ValueError(f"{where}, annotation {index}: empty category name")
            items.append(
                EvalItem(
                    id=f"{image['id']}-{index}",
                    image=image_path(image_root, image["file_name"]),
                    prompt=prompt,
                    target={"category": category},
                    regions=[xywh_to_xyxy(annotation["bbox"])],
                    meta={"image_id": image["id"], "annotation_index": index},
                )
            )
    return EvalDataset(task=task, items=items, source=str(annotation_file))


def load_cocotext(
    annotation_file: str | os.PathLike, image_root: str | os.PathLike | None = None, split: str = "val"
) -> EvalDataset:
    data = read_json(annotation_file)
    require_keys(data, ("anns", "imgs"), str(annotation_file))
    splits = sorted({str(image.get("set")) for image in data["imgs"].values()})
    if split not in splits:
        raise ValueError(f"{annotation_file}: no split {split!r}; it has {splits}")
    prompt = prompts.ocr_prompt([0])
    items = []
    for ann_id, annotation in sorted(data["anns"].items(), key=lambda entry: int(entry[0])):
        where = f"{annotation_file}: annotation {ann_id}"
        require_keys(annotation, ("image_id", "bbox"), where)
        image = data["imgs"].get(str(annotation["image_id"]))
        if image is None:
            raise ValueError(f"{where}: image {annotation['image_id']} is not in 'imgs'")
        # Only legible text has a transcription to read.
        if image.get("set") != split or annotation.get("legibility") != "legible" or not annotation.get("utf8_string"):
            continue
        items.append(
            EvalItem(
                id=str(ann_id),
                image=image_path(image_root, image["file_name"]),
                prompt=prompt,
                target={"text": annotation["utf8_string"]},
                regions=[xywh_to_xyxy(annotation["bbox"])],
                meta={"image_id": annotation["image_id"], "class": annotation.get("class"), "language": annotation.get("language")},
            )
        )
    return EvalDataset(task="cocotext", items=items, source=f"{annotation_file} [{split}]")
