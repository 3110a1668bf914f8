"""Referring-expression datasets.

RefCOCO / RefCOCO+ / RefCOCOg, in the layout of the ``refer`` toolkit (lichengunc/refer): a folder
with ``refs(unc).p`` (``refs(google).p`` / ``refs(umd).p`` for RefCOCOg) and ``instances.json``.
One item per sentence of the chosen split; ``target = {"box": xyxy}`` (the referred COCO annotation's
box); prompt = `prompts.detection_prompt` of the sentence (its tokenised, lower-cased ``sent``).

HumanRef (IDEA-Research), ``annotations.jsonl`` with one expression per line:
``{"id", "image_name", "referring", "candidate_boxes", "answer_boxes", "domain", "sub_domain"}``
(boxes xyxy). ``target = {"boxes": answer_boxes, "rejection": domain == "rejection"}``. The
candidate person boxes are the item's proposals only when asked (``use_candidate_boxes``), as in
RexSeek's own protocol; otherwise the runner's proposer makes them.
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

from vlmfo1 import prompts
from vlmfo1.evaluation.adapters._files import image_path, read_json, read_jsonl, require_keys
from vlmfo1.evaluation.box_ops import xywh_to_xyxy
from vlmfo1.evaluation.items import EvalDataset, EvalItem

HUMANREF_REJECTION_DOMAIN = "rejection"


def load_refcoco(
    refs: str | os.PathLike,
    split: str,
    image_root: str | os.PathLike | None = None,
    instances_file: str | os.PathLike | None = None,
) -> EvalDataset:
    """`refs` is the dataset folder or its ``refs(*).p`` file; ``instances.json`` is looked for next to it."""
    refs_file = _find_refs_file(Path(refs))
    instances_file = Path(instances_file) if instances_file else refs_file.parent / "instances.json"
    instances = read_json(instances_file)
    require_keys(instances, ("images", "annotations"), str(instances_file))
    images = {image["id"]: image for image in instances["images"]}
    annotations = {annotation["id"]: annotation for annotation in instances["annotations"]}

    all_refs = _read_refs(refs_file)
    splits = sorted({ref.get("split") for ref in all_refs})
    if split not in splits:
        raise ValueError(f"{refs_file}: no split {split!r}; it has {splits}")
    items = []
    for ref in all_refs:
        if ref.get("split") != split:
            continue
        where = f"{refs_file}: ref {ref.get('ref_id')!r}"
        require_keys(ref, ("ref_id", "ann_id", "image_id", "sentences"), where)
        if ref["ann_id"] not in annotations:
            raise ValueError(f"{where}: annotation {ref['ann_id']} is not in {instances_file}")
        if ref["image_id"] not in images:
            raise ValueError(f"{where}: image {ref['image_id']} is not in {instances_file}")
        box = xywh_to_xyxy(annotations[ref["ann_id"]]["bbox"])
        image = images[ref["image_id"]]
        for sentence in ref["sentences"]:
            items.append(
                EvalItem(
                    id=f"{ref['ref_id']}_{sentence['sent_id']}",
                    image=image_path(image_root, image["file_name"]),
                    prompt=prompts.detection_prompt(sentence["sent"]),
                    target={"box": box},
                    meta={
                        "ref_id": ref["ref_id"],
                        "sent_id": sentence["sent_id"],
                        "ann_id": ref["ann_id"],
                        "image_id": ref["image_id"],
                        "expression": sentence["sent"],
                    },
                )
            )
    return EvalDataset(task="refcoco", items=items, source=f"{refs_file} [{split}]")


def load_humanref(
    annotation_file: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    use_candidate_boxes: bool = False,
) -> EvalDataset:
    items = []
    for line, row in enumerate(read_jsonl(annotation_file), start=1):
        where = f"{annotation_file}: line {line}"
        require_keys(row, ("id", "image_name", "referring", "answer_boxes", "candidate_boxes", "domain"), where)
        rejection = row["domain"] == HUMANREF_REJECTION_DOMAIN
        if not rejection and not row["answer_boxes"]:
            raise ValueError(f"{where}: a {row['domain']!r} expression without answer boxes")
        if not rejection and not row["candidate_boxes"]:
            # The reference's density penalty divides by the candidate count; with none it scores 0.
            raise ValueError(f"{where}: a {row['domain']!r} expression without candidate boxes")
        candidates = [[float(v) for v in box] for box in row["candidate_boxes"]]
        items.append(
            EvalItem(
                id=str(row["id"]),
                image=image_path(image_root, row["image_name"]),
                prompt=prompts.detection_prompt(row["referring"]),
                target={"boxes": [[float(v) for v in box] for box in row["answer_boxes"]], "rejection": rejection},
                proposals=candidates if use_candidate_boxes else None,
                meta={
                    "referring": row["referring"],
                    "domain": row["domain"],
                    "sub_domain": row.get("sub_domain"),
                    "candidate_boxes": candidates,
                },
            )
        )
    return EvalDataset(task="humanref", items=items, source=str(annotation_file))


def _find_refs_file(path: Path) -> Path:
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"RefCOCO refs not found: {path}")
    candidates = sorted(path.glob("refs(*).p")) + sorted(path.glob("refs(*).json"))
    if len(candidates) != 1:
        found = [c.name for c in candidates] or "none"
        raise ValueError(f"{path}: expected exactly one refs(*).p file, found {found}; pass the file itself")
    return candidates[0]


def _read_refs(refs_file: Path) -> list[dict[str, Any]]:
    if refs_file.suffix == ".json":
        refs = read_json(refs_file)
    else:
        # The refer toolkit's refs are pickles; only load files you trust (pickle runs code).
        with open(refs_file, "rb") as handle:
            try:
                refs = pickle.load(handle)
            except UnicodeDecodeError:  # written by Python 2
                handle.seek(0)
                refs = pickle.load(handle, encoding="latin1")
    if not isinstance(refs, list):
        raise ValueError(f"{refs_file}: expected a list of refs, got {type(refs).__name__}")
    return refs
