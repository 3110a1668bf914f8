"""Evaluation tasks: for each benchmark, how its items are read, how one model answer becomes a
prediction record, and how predictions are scored.

The runner's contract (see ``docs/evaluation.md``)::

    task = get_task("refcoco")
    dataset = task.load(data, images, split).limit(n)
    for item in dataset.items:                         # skipping ids already predicted
        if item.proposals is not None:                 # precomputed: use as they are
            proposals, proposal_scores = item.proposals, item.proposal_scores
        elif task.uses_proposals:
            proposals, proposal_scores = proposer(item.image)
        else:
            proposals, proposal_scores = [], []
        boxes = item.regions + proposals               # the prompt names regions first: <region0>...
        scores = [1.0] * len(item.regions) + (proposal_scores or [1.0] * len(proposals))
        answer = model(item.image, boxes, item.prompt)
        write(task.make_prediction(dataset, item, answer, parse_answer(answer, boxes, scores)))
    report = task.score(dataset, task.read_predictions(path))

Prediction record fields per task (one JSON object per item, with ``"id"``):

=====================  ==========================================================================
coco, ovdeval          ``detections``: COCO results of the image (or a COCO results file instead)
refcoco                ``boxes``: xyxy boxes, best first (top-1 = first); RexSeek's ``extracted_predictions`` too
humanref               ``boxes`` (or ``extracted_predictions``): every box predicted for the expression
counting               ``answer``: the model's text (or ``count``: an integer)
lvis, paco, cocotext   ``answer``: the model's text
shapeworld             ``answer``: the model's text (parsed at scoring time with the record's proposals)
=====================  ==========================================================================

Scores are in [0, 1]. An item without a prediction is scored as a failure (no box, no answer; for
HumanRef an empty prediction, as the reference does) and counted in ``num_missing``; predictions for
ids that are not in the dataset are ignored and counted in ``num_extra``.
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

from vlmfo1.evaluation.adapters.coco import coco_ground_truth, load_coco_detection, load_ovdeval
from vlmfo1.evaluation.adapters.counting import load_counting
from vlmfo1.evaluation.adapters.referring import load_humanref, load_refcoco
from vlmfo1.evaluation.adapters.regions import load_cocotext, load_region_classification
from vlmfo1.evaluation.adapters.shapeworld import load_shapeworld
from vlmfo1.evaluation.items import EvalDataset, EvalItem
from vlmfo1.evaluation.metrics.counting import counting_scores, parse_count
from vlmfo1.evaluation.metrics.detection import coco_bbox_map, detections_to_coco_results, ovdeval_nms_ap
from vlmfo1.evaluation.metrics.ocr import ocr_scores
from vlmfo1.evaluation.metrics.referring import multi_target_scores, rec_scores
from vlmfo1.evaluation.metrics.region_classification import region_classification_scores
from vlmfo1.evaluation.metrics.shapeworld import caption_similarity, grounding_scores, short_answer_accuracy
from vlmfo1.evaluation.predictions import read_coco_results_or_records, read_prediction_records
from vlmfo1.parsing import ParsedAnswer, parse_answer

PathLike = str | os.PathLike
Records = Mapping[str, Mapping[str, Any]]


class Task:
    name: str = ""
    description: str = ""
    uses_proposals: bool = True  # False: the model sees only the item's `regions`
    headline: tuple[str, ...] = ()  # metric keys shown in the terminal table

    def load(self, data: PathLike, images: PathLike | None = None, split: str | None = None) -> EvalDataset:
        raise NotImplementedError

    def make_prediction(self, dataset: EvalDataset, item: EvalItem, answer: str, parsed: ParsedAnswer) -> dict[str, Any]:
        """The prediction record of one answer; `parsed` must come from `parse_answer(answer, boxes, scores)`
        with the boxes (and scores) the model was given."""
        raise NotImplementedError

    def read_predictions(self, path: PathLike) -> Any:
        return read_prediction_records(path)

    def score(self, dataset: EvalDataset, predictions: Any) -> dict[str, Any]:
        raise NotImplementedError

    def headline_keys(self, report: dict[str, Any]) -> tuple[str, ...]:
        """Metric keys of `report` worth a line in the terminal table."""
        return self.headline

    def _no_split(self, split: str | None) -> None:
        if split is not None:
            raise ValueError(f"task {self.name!r} has no splits (got split={split!r})")


def _aligned(dataset: EvalDataset, records: Records) -> tuple[list[Mapping[str, Any] | None], dict[str, int]]:
    """Each item's record (None when missing) and the coverage counts."""
    if not isinstance(records, Mapping):
        raise TypeError(f"predictions must be records keyed by id, got {type(records).__name__}")
    ids = {item.id for item in dataset.items}
    aligned = [records.get(item.id) for item in dataset.items]
    coverage = {
        "num_items": len(dataset.items),
        "num_missing": sum(record is None for record in aligned),
        "num_extra": sum(key not in ids for key in records),
    }
    return aligned, coverage


def _report(task: Task, dataset: EvalDataset, coverage: dict[str, Any], metrics: dict[str, Any]) -> dict[str, Any]:
    if not dataset.items:
        raise ValueError(f"{task.name}: the dataset has no items to score")
    return {"task": task.name, "source": dataset.source, **coverage, "metrics": metrics}


def _field(record: Mapping[str, Any] | None, names: Sequence[str], where: str) -> Any:
    if record is None:
        return None
    for name in names:
        if name in record:
            return record[name]
    raise ValueError(f"prediction {where} has none of the fields {list(names)}")


def _ordered_regions(parsed: ParsedAnswer) -> list[list[float]]:
    """Boxes the answer names, in order of first mention (grounded groups first, then free text)."""
    boxes: dict[int, list[float]] = {}
    for ref in [ref for group in parsed.groups for ref in group.regions] + list(parsed.mentions):
        if ref.box is None:
            raise ValueError("the parsed answer has no boxes: call parse_answer with the boxes the model was given")
        boxes.setdefault(ref.index, [float(v) for v in ref.box])
    return list(boxes.values())


def _boxes(value: Any, where: str) -> list[list[float]]:
    """A list of xyxy boxes; RexSeek's "no box" form ``[[]]`` is read as no box."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValueError(f"prediction {where}: boxes must be a list, got {type(value).__name__}")
    if value == [[]]:
        return []
    boxes = []
    for box in value:
        if not isinstance(box, (list, tuple)) or len(box) != 4:
            raise ValueError(f"prediction {where}: each box must be [x1, y1, x2, y2] (points are not supported), got {box!r}")
        boxes.append([float(v) for v in box])
    return boxes


class DetectionTask(Task):
    name = "coco"
    description = "COCO-format detection (COCO val2017, ODinW, ...): pycocotools bbox mAP"
    headline = ("AP", "AP50", "AP75")

    def load(self, data: PathLike, images: PathLike | None = None, split: str | None = None) -> EvalDataset:
        self._no_split(split)
        return load_coco_detection(data, images, task=self.name)

    def make_prediction(self, dataset: EvalDataset, item: EvalItem, answer: str, parsed: ParsedAnswer) -> dict[str, Any]:
        category_ids = {category["name"]: category["id"] for category in dataset.categories or []}
        labelled = []
        for group in parsed.groups:
            for ref in group.regions:
                if ref.box is None or ref.score is None:
                    raise ValueError("detection needs boxes and scores: call parse_answer with both")
                labelled.append((group.label, ref.box, ref.score))
        detections, unknown = detections_to_coco_results(item.meta["image_id"], labelled, category_ids)
        return {"id": item.id, "answer": answer, "detections": detections, "unknown_labels": unknown}

    def read_predictions(self, path: PathLike) -> Any:
        return read_coco_results_or_records(path)

    def score(self, dataset: EvalDataset, predictions: Any) -> dict[str, Any]:
        results, coverage = self._results(dataset, predictions)
        return _report(self, dataset, coverage, self._metrics(coco_ground_truth(dataset), results))

    def _metrics(self, gt: dict[str, Any], results: list[dict[str, Any]]) -> dict[str, Any]:
        return coco_bbox_map(gt, results)

    @staticmethod
    def _results(dataset: EvalDataset, predictions: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """COCO results restricted to the dataset's images, and the coverage counts."""
        image_ids = {item.meta["image_id"] for item in dataset.items}
        if isinstance(predictions, Mapping):
            aligned, coverage = _aligned(dataset, predictions)
            results = [
                detection
                for item, record in zip(dataset.items, aligned)
                for detection in (_field(record, ("detections",), repr(item.id)) or [])
            ]
        else:
            results = list(predictions)
            # A results file cannot say "this image: nothing"; images without a result are not "missing".
            coverage = {
                "num_items": len(dataset.items),
                "num_missing": None,
                "num_extra": sum(r.get("image_id") not in image_ids for r in results),
            }
        coverage["num_predictions"] = sum(r.get("image_id") in image_ids for r in results)
        return [r for r in results if r.get("image_id") in image_ids], coverage


class OVDEvalTask(DetectionTask):
    name = "ovdeval"
    description = "OVDEval (labels with hard negatives): NMS-AP"
    headline = ("AP", "AP50")

    def load(self, data: PathLike, images: PathLike | None = None, split: str | None = None) -> EvalDataset:
        self._no_split(split)
        return load_ovdeval(data, images)

    def _metrics(self, gt: dict[str, Any], results: list[dict[str, Any]]) -> dict[str, Any]:
        return ovdeval_nms_ap(gt, results)


class RECTask(Task):
    name = "refcoco"
    description = "RefCOCO / RefCOCO+ / RefCOCOg: Acc@0.5 of the top-1 box, mIoU"
    headline = ("accuracy", "miou")

    def load(self, data: PathLike, images: PathLike | None = None, split: str | None = None) -> EvalDataset:
        if split is None:
            raise ValueError("refcoco needs a split (val, testA, testB, test, ...)")
        return load_refcoco(data, split, images)

    def make_prediction(self, dataset: EvalDataset, item: EvalItem, answer: str, parsed: ParsedAnswer) -> dict[str, Any]:
        return {"id": item.id, "answer": answer, "boxes": _ordered_regions(parsed)}

    def score(self, dataset: EvalDataset, predictions: Any) -> dict[str, Any]:
        aligned, coverage = _aligned(dataset, predictions)
        top1 = []
        for item, record in zip(dataset.items, aligned):
            boxes = _boxes(_field(record, ("boxes", "extracted_predictions"), repr(item.id)), repr(item.id))
            top1.append(boxes[0] if boxes else None)
        metrics = rec_scores(top1, [item.target["box"] for item in dataset.items])
        return _report(self, dataset, coverage, metrics)


class HumanRefTask(Task):
    name = "humanref"
    description = "HumanRef: precision, recall, DensityF1 (IoU 0.5:0.95 and 0.5), rejection accuracy"
    headline = ("precision", "recall", "density_f1", "density_f1_50", "rejection_accuracy")

    def load(self, data: PathLike, images: PathLike | None = None, split: str | None = None) -> EvalDataset:
        self._no_split(split)
        return load_humanref(data, images)

    def make_prediction(self, dataset: EvalDataset, item: EvalItem, answer: str, parsed: ParsedAnswer) -> dict[str, Any]:
        return {"id": item.id, "answer": answer, "boxes": _ordered_regions(parsed)}

    def score(self, dataset: EvalDataset, predictions: Any) -> dict[str, Any]:
        aligned, coverage = _aligned(dataset, predictions)
        predicted = [
            _boxes(_field(record, ("boxes", "extracted_predictions"), repr(item.id)), repr(item.id))
            for item, record in zip(dataset.items, aligned)
        ]
        metrics = multi_target_scores(
            [item.target["boxes"] for item in dataset.items],
            predicted,
            [item.target["rejection"] for item in dataset.items],
            groups=[item.meta.get("domain", "") for item in dataset.items],
        )
        return _report(self, dataset, coverage, metrics)


class CountingTask(Task):
    name = "counting"
    description = "CountBench / PixMo-Count: exact-match accuracy of the first integer"
    headline = ("accuracy", "within_one_accuracy")

    def load(self, data: PathLike, images: PathLike | None = None, split: str | None = None) -> EvalDataset:
        self._no_split(split)
        return load_counting(data, images)

    def make_prediction(self, dataset: EvalDataset, item: EvalItem, answer: str, parsed: ParsedAnswer) -> dict[str, Any]:
        return {"id": item.id, "answer": answer, "count": parse_count(answer)}

    def score(self, dataset: EvalDataset, predictions: Any) -> dict[str, Any]:
        aligned, coverage = _aligned(dataset, predictions)
        answers = []
        for item, record in zip(dataset.items, aligned):
            if record is not None and "answer" not in record and "count" in record:
                answers.append(str(record["count"]) if record["count"] is not None else "")
            else:
                answers.append(_field(record, ("answer",), repr(item.id)))
        metrics = counting_scores(answers, [item.target["count"] for item in dataset.items])
        return _report(self, dataset, coverage, metrics)


class RegionClassificationTask(Task):
    name = "lvis"
    description = "LVIS region classification: semantic similarity (SS) and semantic IoU (S-IoU)"
    uses_proposals = False
    headline = ("semantic_similarity", "semantic_iou")

    def load(self, data: PathLike, images: PathLike | None = None, split: str | None = None) -> EvalDataset:
        self._no_split(split)
        return load_region_classification(data, images, task=self.name)

    def make_prediction(self, dataset: EvalDataset, item: EvalItem, answer: str, parsed: ParsedAnswer) -> dict[str, Any]:
        return {"id": item.id, "answer": answer}

    def score(self, dataset: EvalDataset, predictions: Any) -> dict[str, Any]:
        aligned, coverage = _aligned(dataset, predictions)
        answers = [_field(record, ("answer",), repr(item.id)) for item, record in zip(dataset.items, aligned)]
        metrics = region_classification_scores(answers, [item.target["category"] for item in dataset.items])
        return _report(self, dataset, coverage, metrics)


class PACOTask(RegionClassificationTask):
    name = "paco"
    description = "PACO part classification: semantic similarity (SS) and semantic IoU (S-IoU)"


class RegionOCRTask(Task):
    name = "cocotext"
    description = "COCO-Text region OCR: exact-match accuracy on the given box"
    uses_proposals = False
    headline = ("accuracy", "distance1_accuracy")

    def load(self, data: PathLike, images: PathLike | None = None, split: str | None = None) -> EvalDataset:
        return load_cocotext(data, images, split or "val")

    def make_prediction(self, dataset: EvalDataset, item: EvalItem, answer: str, parsed: ParsedAnswer) -> dict[str, Any]:
        return {"id": item.id, "answer": answer}

    def score(self, dataset: EvalDataset, predictions: Any) -> dict[str, Any]:
        aligned, coverage = _aligned(dataset, predictions)
        answers = [_field(record, ("answer",), repr(item.id)) for item, record in zip(dataset.items, aligned)]
        metrics = ocr_scores(answers, [item.target["text"] for item in dataset.items])
        return _report(self, dataset, coverage, metrics)


class ShapeWorldTask(Task):
    name = "shapeworld"
    description = "ShapeWorld, every task: region-index F1, box DensityF1, counting, OCR, SS/S-IoU, QA accuracy"

    # Tasks whose answers name regions; in the first three the labels are the query's, so they count.
    GROUNDING = ("detection", "rejection", "detect_everything", "rec", "visual_prompt_detection", "grounded_caption")
    LABEL_AWARE = ("detection", "rejection", "detect_everything")
    CAPTIONS = ("region_caption_brief", "region_caption_detailed")
    SHORT_ANSWERS = ("region_vqa", "image_qa")
    MAIN_METRIC = {"counting": "accuracy", "region_ocr": "accuracy", **{t: "semantic_similarity" for t in CAPTIONS},
                   **{t: "accuracy" for t in SHORT_ANSWERS}, **{t: "f1" for t in GROUNDING}}

    def load(self, data: PathLike, images: PathLike | None = None, split: str | None = None) -> EvalDataset:
        return load_shapeworld(data, images, split)

    def make_prediction(self, dataset: EvalDataset, item: EvalItem, answer: str, parsed: ParsedAnswer) -> dict[str, Any]:
        return {"id": item.id, "answer": answer}

    def headline_keys(self, report: dict[str, Any]) -> tuple[str, ...]:
        return tuple(key for key in report["metrics"] if "." in key)

    def score(self, dataset: EvalDataset, predictions: Any) -> dict[str, Any]:
        aligned, coverage = _aligned(dataset, predictions)
        by_task: dict[str, list[tuple[EvalItem, str | None]]] = {}
        for item, record in zip(dataset.items, aligned):
            answer = _field(record, ("answer",), repr(item.id))
            by_task.setdefault(item.target["task"], []).append((item, answer))
        per_task = {task: self._score_task(task, pairs) for task, pairs in sorted(by_task.items())}
        metrics: dict[str, Any] = {
            f"{task}.{self.MAIN_METRIC[task]}": scores[self.MAIN_METRIC[task]] for task, scores in per_task.items()
        }
        metrics["per_task"] = per_task
        return _report(self, dataset, coverage, metrics)

    def _score_task(self, task: str, pairs: list[tuple[EvalItem, str | None]]) -> dict[str, Any]:
        items = [item for item, _ in pairs]
        answers = [answer for _, answer in pairs]
        metas = [item.target["meta"] for item in items]
        if task in self.GROUNDING:
            return self._score_grounding(task, items, answers)
        if task == "counting":
            return counting_scores(answers, [meta["count"] for meta in metas])
        if task == "region_ocr":
            return ocr_scores(answers, [meta["word"] for meta in metas], min_gt_length=1)
        if task in self.CAPTIONS:
            return caption_similarity(answers, [meta["caption"] for meta in metas])
        if task in self.SHORT_ANSWERS:
            return short_answer_accuracy(answers, [meta["answer"] for meta in metas])
        raise ValueError(f"no ShapeWorld metric for task {task!r}")

    def _score_grounding(self, task: str, items: list[EvalItem], answers: list[str | None]) -> dict[str, Any]:
        targets, predicted, predicted_boxes, parse_warnings = [], [], [], 0
        for item, answer in zip(items, answers):
            targets.append([(group["label"], group["targets"]) for group in item.target["meta"]["groups"]])
            if answer is None:
                predicted.append(None)
                predicted_boxes.append([])
                continue
            parsed = parse_answer(answer, item.proposals, item.proposal_scores)
            parse_warnings += bool(parsed.warnings)
            predicted.append([(group.label, [ref.index for ref in group.regions]) for group in parsed.groups])
            predicted_boxes.append(_ordered_regions(parsed))
        scores = grounding_scores(targets, predicted, label_aware=task in self.LABEL_AWARE)
        gt_boxes = [item.target["meta"].get("gt_boxes", []) for item in items]
        boxes = multi_target_scores(gt_boxes, predicted_boxes, [len(b) == 0 for b in gt_boxes])
        scores["box_precision"] = boxes["precision"]
        scores["box_recall"] = boxes["recall"]
        scores["box_density_f1"] = boxes["density_f1"]
        scores["num_parse_warnings"] = parse_warnings
        return scores


TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        DetectionTask(),
        OVDEvalTask(),
        RECTask(),
        HumanRefTask(),
        CountingTask(),
        RegionClassificationTask(),
        PACOTask(),
        RegionOCRTask(),
        ShapeWorldTask(),
    )
}
ALIASES = {
    "coco-val2017": "coco",
    "odinw": "coco",
    "refcoco+": "refcoco",
    "refcocog": "refcoco",
    "countbench": "counting",
    "pixmo-count": "counting",
    "coco-text": "cocotext",
}


def get_task(name: str) -> Task:
    key = ALIASES.get(name.lower(), name.lower())
    if key not in TASKS:
        known = sorted(set(TASKS) | set(ALIASES))
        raise ValueError(f"unknown evaluation task {name!r}; choose from {known}")
    return TASKS[key]


def score_files(
    task_name: str,
    gt: PathLike,
    predictions: PathLike,
    images: PathLike | None = None,
    split: str | None = None,
) -> dict[str, Any]:
    """Scores an existing predictions file against a dataset's annotation file (no model needed)."""
    task = get_task(task_name)
    dataset = task.load(gt, images, split)
    return task.score(dataset, task.read_predictions(predictions))

