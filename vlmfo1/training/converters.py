"""Converters from common annotation formats to FO1 training records with ground-truth regions.

The records they write keep the image's *ground-truth* boxes in `bbox_list` and name them in the
answers (`<regionK>` = box K). A data source configured with proposals (`proposals: {file: ...}` or
`{proposer: ...}`) turns them into proposal-indexed samples at training time
(`vlmfo1.training.data.attach_proposals`); without proposals the ground-truth boxes themselves are
the regions. Every converter returns the records and counts of what it skipped and why, so nothing
is dropped silently:

=====================  ===================================================================================
`coco_to_records`      COCO detection JSON -> one detection record per image; a share (`rejection_share`,
                       paper: 20 %) asks only for categories absent from the image and answers `None`
`refcoco_to_records`   RefCOCO/+/g (refer toolkit folder) -> one record per sentence
`referring_to_records` JSON/JSONL rows `{"image", "expression", "boxes"}` (HumanRef names accepted:
                       `image_name`, `referring`, `answer_boxes`); no box = a rejection record
`region_captions_to_records` JSON/JSONL rows `{"image", "regions": [{"bbox", "caption", "detailed"?}]}` or
                       flat `{"image", "bbox", "caption"}` rows -> one record per region
`llava_to_records`     LLaVA instruction JSON/JSONL (`{"id", "image", "conversations"}`) -> records with no
                       regions (general data against forgetting); text-only and multi-image rows skipped
=====================  ===================================================================================

Boxes are xyxy pixels, except COCO's `bbox` (xywh, converted).
"""
from __future__ import annotations

import math
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from vlmfo1 import prompts
from vlmfo1.data.records import GPT, HUMAN, FO1Record, RecordError
from vlmfo1.evaluation.adapters._files import read_json, read_json_or_jsonl
from vlmfo1.evaluation.box_ops import xywh_to_xyxy

GROUND_TRUTH_META = "ground_truth"  # meta["regions"] of converted records: bbox_list holds annotations


@dataclass
class Conversion:
    records: list[FO1Record]
    skipped: Counter = field(default_factory=Counter)  # reason -> count
    counts: Counter = field(default_factory=Counter)  # task -> records

    def summary(self) -> dict[str, Any]:
        return {"records": len(self.records), "by_task": dict(self.counts), "skipped": dict(self.skipped)}

    def add(self, record: FO1Record) -> None:
        record.validate()
        self.records.append(record)
        self.counts[record.task] += 1


def _valid_box(box: Any) -> bool:
    return (
        isinstance(box, (list, tuple))
        and len(box) == 4
        and all(isinstance(v, (int, float)) and math.isfinite(v) for v in box)
        and box[2] > box[0]
        and box[3] > box[1]
    )


# ---------------------------------------------------------------------------------------------
# COCO detection
# ---------------------------------------------------------------------------------------------


def coco_to_records(
    annotation_file: str | os.PathLike | dict,
    rejection_share: float = 0.2,
    seed: int = 0,
    absent_in_positive: float = 0.5,
    max_regions: int = prompts.MAX_REGIONS,
    image_prefix: str = "",
) -> Conversion:
    """One detection record per image with annotations.

    `bbox_list` holds every (non-crowd) object of the image, so the answer's regions are a subset,
    as with proposals. With probability `rejection_share` the record asks for 1-3 categories absent
    from the image and answers `None`; otherwise it asks for every present category, plus (with
    probability `absent_in_positive`) one or two absent ones that the answer leaves out. Images with
    more than `max_regions` objects, crowd annotations and degenerate boxes are counted in `skipped`.
    """
    if not 0.0 <= rejection_share <= 1.0:
        raise ValueError(f"rejection_share must be in [0, 1], got {rejection_share}")
    coco = annotation_file if isinstance(annotation_file, dict) else read_json(annotation_file)
    for key in ("images", "annotations", "categories"):
        if key not in coco:
            raise ValueError(f"{annotation_file}: not a COCO detection file (no {key!r})")
    names = {c["id"]: c["name"] for c in coco["categories"]}
    by_image: dict[Any, list[dict]] = defaultdict(list)
    result = Conversion([])
    for annotation in coco["annotations"]:
        if annotation.get("iscrowd", 0):
            result.skipped["crowd annotation"] += 1
            continue
        if annotation.get("category_id") not in names:
            raise ValueError(f"{annotation_file}: annotation {annotation.get('id')} has unknown category {annotation.get('category_id')}")
        by_image[annotation["image_id"]].append(annotation)
    rng = np.random.default_rng(seed)
    all_names = sorted(set(names.values()))
    for image in coco["images"]:
        annotations = by_image.get(image["id"], [])
        boxes, labels = [], []
        for annotation in annotations:
            box = xywh_to_xyxy(annotation["bbox"])
            if not _valid_box(box):
                result.skipped["degenerate box"] += 1
                continue
            boxes.append(box)
            labels.append(names[annotation["category_id"]])
        if not boxes:
            result.skipped["image without objects"] += 1
            continue
        if len(boxes) > max_regions:
            result.skipped[f"image with more than {max_regions} objects"] += 1
            continue
        present = sorted(set(labels))
        absent = [name for name in all_names if name not in present]
        image_path = image_prefix + image["file_name"]
        reject = bool(absent) and rng.random() < rejection_share
        if reject:
            asked = list(rng.choice(absent, size=min(len(absent), int(rng.integers(1, 4))), replace=False))
            answer = prompts.NO_OBJECT_ANSWER
            task = "rejection"
        else:
            asked = list(present)
            if absent and rng.random() < absent_in_positive:
                asked += list(rng.choice(absent, size=min(len(absent), int(rng.integers(1, 3))), replace=False))
            asked = [asked[i] for i in rng.permutation(len(asked))]
            groups = [(name, [k for k, label in enumerate(labels) if label == name]) for name in asked]
            answer = prompts.format_grounded_answer(groups)
            task = "detection"
        result.add(
            FO1Record.single_turn(
                id=f"coco-{image['id']}-{task}",
                image=image_path,
                prompt=prompts.detection_prompt([str(a) for a in asked]),
                answer=answer,
                bbox_list=[[float(v) for v in b] for b in boxes],
                score_list=[1.0] * len(boxes),
                task=task,
                meta={"image_id": image["id"], "regions": GROUND_TRUTH_META, "labels": labels},
            )
        )
    return result


# ---------------------------------------------------------------------------------------------
# Referring expressions
# ---------------------------------------------------------------------------------------------


def refcoco_to_records(
    refs: str | os.PathLike, split: str = "train", instances_file: str | os.PathLike | None = None
) -> Conversion:
    """RefCOCO/+/g (the refer toolkit's `refs(*).p` + `instances.json`): one record per sentence,
    the referred object's box as region 0. Read with the evaluation adapter, so both agree."""
    from vlmfo1.evaluation.adapters.referring import load_refcoco

    dataset = load_refcoco(refs, split, None, instances_file)
    result = Conversion([])
    for item in dataset.items:
        expression = item.meta["expression"]
        result.add(
            FO1Record.single_turn(
                id=f"refcoco-{item.id}",
                image=item.image,
                prompt=prompts.detection_prompt(expression),
                answer=prompts.format_grounded_answer([(expression, [0])]),
                bbox_list=[list(map(float, item.target["box"]))],
                score_list=[1.0],
                task="rec",
                meta={"image_id": item.meta["image_id"], "regions": GROUND_TRUTH_META, "ref_id": item.meta["ref_id"]},
            )
        )
    return result


_IMAGE_KEYS = ("image", "image_name", "file_name")
_EXPRESSION_KEYS = ("expression", "referring", "sent", "caption")
_TARGET_KEYS = ("boxes", "answer_boxes", "bbox")


def _first(row: dict, keys: Iterable[str], where: str) -> Any:
    for key in keys:
        if key in row:
            return row[key]
    raise ValueError(f"{where}: none of the fields {list(keys)}")


def referring_to_records(path: str | os.PathLike, max_regions: int = prompts.MAX_REGIONS) -> Conversion:
    """Rows `{"image", "expression", "boxes": [[x1, y1, x2, y2], ...]}`, one expression each, any number
    of targets (none: the answer is `None`, a rejection record). Optional `"candidates"` (or HumanRef's
    `candidate_boxes`): more boxes of the image, kept as regions next to the targets."""
    result = Conversion([])
    for position, row in enumerate(read_json_or_jsonl(path)):
        where = f"{path}: row {position}"
        image = _first(row, _IMAGE_KEYS, where)
        expression = str(_first(row, _EXPRESSION_KEYS, where)).strip()
        targets = _first(row, _TARGET_KEYS, where)
        if targets and not isinstance(targets[0], (list, tuple)):
            targets = [targets]  # one box
        candidates = row.get("candidates", row.get("candidate_boxes", [])) or []
        if not expression:
            result.skipped["empty expression"] += 1
            continue
        if not all(_valid_box(b) for b in targets):
            result.skipped["degenerate target box"] += 1
            continue
        boxes = [[float(v) for v in b] for b in targets]
        for candidate in candidates:
            if _valid_box(candidate) and [float(v) for v in candidate] not in boxes:
                boxes.append([float(v) for v in candidate])
        if len(boxes) > max_regions:
            result.skipped[f"more than {max_regions} boxes"] += 1
            continue
        answer = prompts.format_grounded_answer([(expression, list(range(len(targets))))])
        result.add(
            FO1Record.single_turn(
                id=str(row.get("id", f"ref-{position}")),
                image=str(image),
                prompt=prompts.detection_prompt(expression),
                answer=answer,
                bbox_list=boxes,
                score_list=[1.0] * len(boxes),
                task="rec" if targets else "rejection",
                meta={"regions": GROUND_TRUTH_META},
            )
        )
    return result


# ---------------------------------------------------------------------------------------------
# Region captions
# ---------------------------------------------------------------------------------------------


def region_captions_to_records(path: str | os.PathLike, max_regions: int = prompts.MAX_REGIONS) -> Conversion:
    """One record per captioned region; every captioned box of the image is a region (the asked one is
    named by its index in the prompt). `detailed: true` uses the detailed-caption prompt."""
    rows = read_json_or_jsonl(path)
    images: dict[str, list[dict]] = defaultdict(list)
    result = Conversion([])
    for position, row in enumerate(rows):
        where = f"{path}: row {position}"
        image = str(_first(row, _IMAGE_KEYS, where))
        regions = row["regions"] if "regions" in row else [row]
        for region in regions:
            box = region.get("bbox", region.get("box"))
            caption = str(region.get("caption", "")).strip()
            if not _valid_box(box):
                result.skipped["degenerate box"] += 1
            elif not caption:
                result.skipped["empty caption"] += 1
            else:
                images[image].append({"box": [float(v) for v in box], "caption": caption,
                                      "detailed": bool(region.get("detailed", False))})
    for image, regions in images.items():
        if len(regions) > max_regions:
            result.skipped[f"image with more than {max_regions} regions"] += len(regions)
            continue
        boxes = [r["box"] for r in regions]
        for k, region in enumerate(regions):
            prompt = (prompts.detailed_caption_prompt if region["detailed"] else prompts.brief_caption_prompt)([k])
            result.add(
                FO1Record.single_turn(
                    id=f"caption-{Path(image).stem}-{k}",
                    image=image,
                    prompt=prompt,
                    answer=region["caption"],
                    bbox_list=boxes,
                    score_list=[1.0] * len(boxes),
                    task="region_caption_detailed" if region["detailed"] else "region_caption_brief",
                    meta={"regions": GROUND_TRUTH_META},
                )
            )
    return result


# ---------------------------------------------------------------------------------------------
# LLaVA instruction data
# ---------------------------------------------------------------------------------------------


def llava_to_records(path: str | os.PathLike) -> Conversion:
    """LLaVA-style rows as FO1 records with no regions. The `<image>` tag moves to the start of the
    first human turn (LLaVA's own preprocessing does the same); rows with no image or several images
    are skipped and counted, as are rows whose turns do not alternate human/gpt."""
    result = Conversion([])
    for position, row in enumerate(read_json_or_jsonl(path)):
        image = row.get("image")
        if not image:
            result.skipped["text-only row"] += 1
            continue
        if isinstance(image, list):
            if len(image) != 1:
                result.skipped["row with several images"] += 1
                continue
            image = image[0]
        turns = []
        for turn in row.get("conversations", []):
            value = str(turn.get("value", "")).replace(prompts.IMAGE_TAG, "").strip()
            turns.append({"from": turn.get("from"), "value": value})
        if turns and turns[-1]["from"] == HUMAN:
            turns = turns[:-1]  # a trailing question has no answer to learn from
        if not turns or any(t["from"] != (HUMAN if i % 2 == 0 else GPT) for i, t in enumerate(turns)):
            result.skipped["turns not alternating human/gpt"] += 1
            continue
        turns[0]["value"] = f"{prompts.IMAGE_TAG}\n{turns[0]['value']}"
        try:
            result.add(FO1Record(id=str(row.get("id", f"llava-{position}")), image=str(image), conversations=turns,
                                 task="instruction"))
        except RecordError as error:
            if "<region" in str(error):
                result.skipped["mentions <regionK> but has no regions"] += 1
                continue
            raise
    return result


CONVERTERS = {
    "coco": coco_to_records,
    "refcoco": refcoco_to_records,
    "referring": referring_to_records,
    "region-captions": region_captions_to_records,
    "llava": llava_to_records,
}
