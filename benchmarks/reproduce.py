"""The paper's claims in miniature, on ShapeWorld (issue 9; method and results in docs/reproduction.md).

    python benchmarks/reproduce.py --budget tiny  --out runs/repro-tiny     # seconds: plumbing only
    python benchmarks/reproduce.py --budget small --out runs/repro-small    # < 30 min on 2 CPU cores
    python benchmarks/reproduce.py --budget full  --out runs/repro-full     # the numbers of the docs

Per seed: one base VLM (the language stages and stage 0 of the recipe that made the bundled model,
`vlmfo1.training.recipes.DemoRecipe.words_to_pixels`: text-only copying and look-ups, then image-level
ShapeWorld questions; kept frozen, every arm starts from a copy), then from that base, at an equal
budget (the same steps and batch size, the same records where the arm trains on records; wall times
reported):

* (a) `coordinates`: the coordinate-generating twin, the same model class trained (ViT + LLM) on the
  coordinate twins of FO1's stage-2 records (Qwen2.5-VL's JSON boxes, no regions: then FO1 is exactly
  a plain Qwen2.5-VL), for as many steps as FO1's alignment and stage 2 together;
* (b) `fo1`: the recipe's FO1 training: the region-token alignment (encoders and connector, the
  primary ViT frozen as in the paper), then stage 2 (the `stage2` preset and the recipe's plan);
* ablations (paper Tables 8, 9): `aux_only`, `primary_simple_fp`, `primary_no_simple_fp` (FO1 with
  one region branch, or without SimpleFP), and `fo1_vit_unfrozen` (the primary ViT trained in the
  alignment and in stage 2).

Every model is evaluated on one held-out split of harder scenes (the recipe's world with more
objects, clutter, distractors and background proposals; a seed no training split uses), with the
same scoring code for both answer formats: detection mAP (pycocotools, "detect everything" answers;
FO1: box = proposal, score = proposal score; twin: box as written, score = its token probability or
1.0), REC Acc@0.5, counting accuracy, rejection accuracy, region caption SS (all-MiniLM-L6-v2), and
image-level QA accuracy (the base before / the arms after training: forgetting). (a) and (b) are
also evaluated at intermediate steps (mAP vs. steps).

Resumable: every finished piece (data, stage, evaluation) is kept in --out and skipped when the
command is run again; an interrupted stage continues from its last checkpoint. Results:
``results.json``, ``report.md`` (the tables, also printed), ``curve.csv`` and ``curve.png``
(when matplotlib is installed). Seeds (`--seeds`) and a seed's arms (`--arms`) may run as parallel
commands on one folder; `--report-only` rebuilds the results from the seeds' ``result.json`` alone.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import dataclasses
import hashlib
import json
import math
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

# Runnable as a script from a checkout (python benchmarks/reproduce.py) without installing.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from vlmfo1.data.records import FO1Record, read_records, write_records
from vlmfo1.data.shapeworld.text_tasks import WORD_SLOT_SUFFIX
from vlmfo1.training.recipes import DemoRecipe, StagePlan

# Every held-out detection slot asks for absent shapes: detection itself is measured by the "detect
# everything" mAP, the slots measure rejection.
HELDOUT_COMMON = {"rejection_share": 1.0}
# The held-out questions: every metric of the issue. Detection slots also make the rejection
# records (ShapeWorldConfig.rejection_share of them ask only for absent shapes).
EVAL_TASKS = ("detect_everything", "detection", "rec", "counting", "region_caption_brief", "image_qa")
CURVE_TASKS = ("detect_everything",)
BASE_TASKS = ("image_qa",)
# Groups the coordinate twin trains: a plain VLM's SFT (stage 0's groups; no region modules are used).
COORDINATE_GROUPS = ("vision", "image_projector", "llm")
ALIGNMENT_BATCH = 8  # images per alignment step (the recipe's: `align_region_tokens`' default)
TRAIN_RECORD = "reproduce_train.json"
SCORES_FILE = "scores.json"
PREDICTIONS_FILE = "answers.json"
PERCEPTION_METRICS = ("map", "rec_acc50", "counting", "rejection", "caption_ss")
# How each answer format's boxes are scored for COCO AP (`Prediction.detections`).
SCORINGS = {"fo1": ("proposal",), "coordinates": ("token_probability", "constant")}


# ---------------------------------------------------------------------------------------------
# Budgets: every number of a run in one place
# ---------------------------------------------------------------------------------------------


@dataclass
class ReproBudget:
    """Everything that sizes a run. `recipe` carries the data, model size, tokenizer, the plans of the
    base's stages and of stage 2, and the alignment (`DemoRecipe`): tuned recipe settings plug in here
    unchanged (its stage 1, if any, is not used: FO1's first phase is the alignment)."""

    name: str
    recipe: DemoRecipe
    # The twin's learning rate (None: the recipe's stage-2 rate, the rate at which FO1's LLM trains).
    # Its records are FO1's stage-2 records, its batch size theirs, its steps alignment + stage 2.
    twin_learning_rate: float | None = None
    seeds: tuple[int, ...] = (0, 1, 2)
    heldout_scenes: int = 150
    heldout_seed: int = 1000
    heldout_task_counts: dict[str, int] = field(default_factory=lambda: {
        "detect_everything": 1, "detection": 2, "rec": 2, "counting": 1, "region_caption_brief": 1, "image_qa": 2,
    })
    # The held-out splits, by name: the recipe's world (`ShapeWorldConfig.train(**recipe.scene_overrides)`)
    # with these changes, each from its own seed (heldout_seed + its position). The first is the
    # issue's harder split (more objects, background proposals, clutter, distractor blobs) and gives
    # the curves; "same_world" is new scenes of the training world.
    heldout_splits: dict[str, dict[str, Any]] = field(default_factory=lambda: {
        "harder": {"objects_per_image": [3, 6], "background_proposals": [2, 4], "clutter": 0.3, "distractors": [0, 2]},
        "same_world": {},
    })
    curve_points: int = 4  # evaluations in stage 2 of (b), its end included (and the twin's at the same steps)
    curve_scenes: int = 50  # held-out scenes of those evaluations ("detect everything" only)
    # Generation limit per task: this many times the longest reference answer (tokens) + 8, so that
    # neither answer format is cut off for its length; `max_new_tokens_cap` bounds it (None: no bound).
    answer_length_margin: float = 1.25
    max_new_tokens_cap: int | None = None
    eval_batch_size: int = 8

    def twin_rate(self) -> float:
        return self.twin_learning_rate if self.twin_learning_rate is not None else self.recipe.stage2.learning_rate

    def heldout_world(self, split: str):
        from vlmfo1.data.shapeworld import ShapeWorldConfig

        return ShapeWorldConfig.train(task_counts=dict(self.heldout_task_counts),
                                      **{**self.recipe.scene_overrides, **self.heldout_splits[split], **HELDOUT_COMMON})

    def split_seed(self, split: str) -> int:
        return self.heldout_seed + list(self.heldout_splits).index(split)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def identity(self) -> dict[str, Any]:
        """What results depend on (seeds and threads do not: seeds are separate runs)."""
        data = self.to_dict()
        data.pop("seeds")
        data["recipe"].pop("threads", None)
        data["recipe"].pop("seed", None)
        return json.loads(json.dumps(data))


def _scaled(recipe: DemoRecipe, **changes) -> DemoRecipe:
    return dataclasses.replace(recipe, **changes)


def _steps(plan: StagePlan, steps: int, batch_size: int | None = None, text_scale: float = 1.0) -> StagePlan:
    """`plan` with other steps (and batch size); its text records scaled by `text_scale`, so that a
    smaller budget keeps the plan's mix of text and image records."""
    text = {task: max(1, round(count * text_scale)) for task, count in plan.text.items()}
    return dataclasses.replace(plan, steps=steps, batch_size=batch_size or plan.batch_size, text=text)


def budget(name: str) -> ReproBudget:
    """The presets. `full` is the bundled model's recipe as tuned (`DemoRecipe.words_to_pixels()`);
    `small` the same plans with fewer steps and scenes on the `tiny` model size; `tiny` a few steps of
    everything (the test)."""
    tuned = DemoRecipe.words_to_pixels()
    if name == "full":
        return ReproBudget("full", tuned)
    if name == "small":
        scenes = 300 / tuned.train_scenes  # the image records' share of the full budget's
        recipe = _scaled(
            tuned, size="tiny", train_scenes=300, tokenizer_scenes=200, alignment_steps=150,
            # A tenth of each text-only stage: too little for its skill to form (docs/reproduction.md).
            language=tuple(_steps(plan, max(1, plan.steps // 10), text_scale=0.1) for plan in tuned.language),
            stage0=_steps(tuned.stage0, 150, text_scale=scenes), stage2=_steps(tuned.stage2, 90, text_scale=scenes),
        )
        return ReproBudget("small", recipe, seeds=(0,), heldout_scenes=30, curve_points=2, curve_scenes=10,
                           max_new_tokens_cap=640)
    if name == "tiny":
        recipe = DemoRecipe.quick(
            train_scenes=6, tokenizer_scenes=10, alignment_steps=2, stage1=None,
            stage0=StagePlan({"image_qa": 1}, steps=1, learning_rate=1e-3, batch_size=2, word_slots={"detection": 1}),
            # A text task and word-slot records in stage 2: the coordinate twin trains on the text
            # records unchanged and on the word-slot records' sources.
            stage2=StagePlan({"detect_everything": 1, "detection": 1, "image_qa": 1}, steps=2, learning_rate=1e-3, batch_size=2,
                             text={"slot_lookup": 2}, lookup_items=2, word_slots={"detection": 1}),
        )
        return ReproBudget(
            "tiny", recipe, seeds=(0,), heldout_scenes=2,
            heldout_task_counts={"detect_everything": 1, "detection": 1, "rec": 3, "counting": 1,
                                 "region_caption_brief": 1, "image_qa": 1},
            curve_points=2, curve_scenes=2, max_new_tokens_cap=10, eval_batch_size=8,
        )
    raise ValueError(f"unknown budget {name!r}; choose from tiny, small, full")


# ---------------------------------------------------------------------------------------------
# The arms
# ---------------------------------------------------------------------------------------------


# What FO1's alignment trains: the region encoders and the connector. The paper keeps the primary
# ViT frozen throughout; `fo1_vit_unfrozen` trains it too.
FROZEN_VIT = ("aux_encoder", "region_encoder", "connector")
UNFROZEN_VIT = ("vision", *FROZEN_VIT)


@dataclass(frozen=True)
class Arm:
    name: str
    title: str  # row label of the tables
    kind: str  # "fo1" (region tokens) or "coordinates" (the twin)
    config_changes: dict[str, Any] = field(default_factory=dict)  # FO1Config fields changed from the base
    alignment_groups: tuple[str, ...] = FROZEN_VIT  # groups the alignment trains (FO1 arms)
    stage2_extra_groups: tuple[str, ...] = ()  # groups trained in stage 2 beyond the `stage2` preset's
    curve: bool = False  # evaluated at intermediate steps (mAP vs. steps)


ARMS: tuple[Arm, ...] = (
    Arm("coordinates", "(a) coordinate twin (JSON boxes)", "coordinates", curve=True),
    Arm("fo1", "(b) FO1: aux + primary, primary ViT frozen", "fo1", curve=True),
    Arm("fo1_vit_unfrozen", "FO1, primary ViT unfrozen", "fo1", alignment_groups=UNFROZEN_VIT,
        stage2_extra_groups=("vision",)),
    Arm("aux_only", "only auxiliary region feature", "fo1", config_changes={"use_primary_features": False}),
    Arm("primary_simple_fp", "only primary region feature, with SimpleFP", "fo1",
        config_changes={"use_aux_features": False, "use_simple_fp": True}),
    Arm("primary_no_simple_fp", "only primary region feature, without SimpleFP", "fo1",
        config_changes={"use_aux_features": False, "use_simple_fp": False}),
)
ARMS_BY_NAME = {arm.name: arm for arm in ARMS}


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def exclusive(lock_file: Path):
    """Holds an exclusive lock on `lock_file` across processes (where the OS has `fcntl`): seeds run
    as parallel commands on one folder then write the shared held-out splits once, not over each other."""
    try:
        import fcntl
    except ImportError:  # no advisory locks (Windows): parallel commands on one folder are not supported there
        yield
        return
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_heldout(budget_: ReproBudget, folder: Path, log: Callable[[str], None]) -> None:
    """The held-out splits (FO1 records and their coordinate twins), once for every seed."""
    from vlmfo1.data.shapeworld import write_dataset

    for split in budget_.heldout_splits:
        if (folder / f"{split}.coords.jsonl").exists():
            continue
        summary = write_dataset(folder, n=budget_.heldout_scenes, seed=budget_.split_seed(split), split=split,
                                config=budget_.heldout_world(split), coordinates=True)
        log(f"held-out split {split}: {summary.images} scenes, {summary.objects} objects, records {summary.records}")


def write_training_data(recipe: DemoRecipe, data_dir: Path, log: Callable[[str], None]) -> None:
    """The recipe's training data (`make_data`: train split and stage files) plus the coordinate twin
    of the stage-2 records file (`stage2.coords.jsonl`: one record per FO1 record, same order)."""
    from vlmfo1.training.recipes import make_data

    twin_file = data_dir / "stage2.coords.jsonl"
    if twin_file.exists():
        return
    make_data(recipe, data_dir, log, coordinates=True)
    twins = {record.meta["fo1_id"]: record for record in read_records(data_dir / "train.coords.jsonl")}
    stage_records = list(read_records(data_dir / "stage2.fo1.jsonl"))
    # Text-only records (the plan's `text` tasks) have no boxes to write as coordinates: the twin
    # trains on them unchanged. A word-slot record (its slots hold the objects' words) is FO1's own
    # form of a question; the twin gets the coordinate twin of the question it was made from.
    sources = [r.id.removesuffix(WORD_SLOT_SUFFIX) if r.region_text else r.id for r in stage_records]
    missing = [source for r, source in zip(stage_records, sources) if r.image is not None and source not in twins]
    if missing:
        raise RuntimeError(f"stage 2 records without a coordinate twin (first: {missing[:3]})")
    write_records(twin_file, [twins[source] if r.image is not None else r for r, source in zip(stage_records, sources)])


def write_tokenizer(recipe: DemoRecipe, folder: Path) -> None:
    """The recipe's BPE tokenizer, learned from the FO1 texts *and* the coordinate texts of the same
    scenes: JSON boxes then get merged tokens as in a real VLM's tokenizer, not single bytes."""
    from vlmfo1.data.shapeworld import generate_example
    from vlmfo1.training.tiny import shapeworld_corpus, train_small_tokenizer

    if (folder / "tokenizer.json").exists():
        return
    seed = recipe.seed + 12345  # the recipe's tokenizer seed (run_demo_recipe)
    texts = shapeworld_corpus(recipe.tokenizer_scenes, seed=seed)
    for index in range(recipe.tokenizer_scenes):
        for record in generate_example(index=index, seed=seed, split="tokenizer").coordinate_records():
            texts.extend(turn["value"] for turn in record.conversations)
    train_small_tokenizer(texts, vocab_size=recipe.tokenizer_vocab).save_pretrained(str(folder))


class HeldOut:
    """One held-out split: FO1 records, their coordinate twins (by FO1 id) and the COCO file."""

    def __init__(self, folder: Path, split: str):
        self.folder, self.split = folder, split
        self.records = list(read_records(folder / f"{split}.fo1.jsonl"))
        self.twins = {r.meta["fo1_id"]: r for r in read_records(folder / f"{split}.coords.jsonl")}
        self.coco = json.loads((folder / f"{split}.coco.json").read_text())

    def items(self, tasks: Sequence[str], scenes: int | None = None) -> list[FO1Record]:
        """Records of `tasks` (rejection records with detection) of the first `scenes` scenes."""
        wanted = set(tasks) | ({"rejection"} if "detection" in tasks else set())
        return [r for r in self.records
                if r.task in wanted and (scenes is None or r.meta["scene_index"] < scenes)]

    def answer_limit(self, tokenizer, items: Sequence[FO1Record], kind: str, margin: float, cap: int | None) -> int:
        """max_new_tokens for `items` in answer format `kind`: `margin` x the longest reference answer + 8."""
        answers = [(self.twins[r.id] if kind == "coordinates" else r).answer for r in items]
        longest = max(len(tokenizer(answer)["input_ids"]) for answer in answers) + 1  # + end of turn
        limit = math.ceil(margin * longest) + 8
        return min(limit, cap) if cap else limit


# ---------------------------------------------------------------------------------------------
# Scoring: one code path for both answer formats
# ---------------------------------------------------------------------------------------------


@dataclass
class Prediction:
    text: str  # the answer's text outside its pointers (FO1: the answer itself; twin: without the JSON)
    # (label, xyxy box, {scoring: score}) per box the answer names, in answer order
    detections: list[tuple[str | None, list[float], dict[str, float]]]
    # The generation hit max_new_tokens: the answer's end is unknown (a rejection cut off before its
    # first box names no box, yet did not say "none").
    cut_off: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "detections": [[label, list(box), scores] for label, box, scores in self.detections],
                "cut_off": self.cut_off}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Prediction":
        if "cut_off" not in data:  # written before cut-off answers were recorded: its rejection scores are wrong
            raise ValueError(f"an answer saved without its cut_off flag ({data.get('text', '')[:40]!r}...): this run "
                             "folder was evaluated by an older version; delete its eval/ folders to re-evaluate")
        return cls(data["text"], [(label, list(box), dict(scores)) for label, box, scores in data["detections"]],
                   data["cut_off"])


def fo1_prediction(record: FO1Record, answer: str, cut_off: bool = False) -> Prediction:
    """An FO1 answer: the named regions' proposal boxes, scored by the proposal score (SPEC §5)."""
    from vlmfo1.parsing import parse_answer

    parsed = parse_answer(answer, record.bbox_list, record.score_list)
    detections = [(group.label, list(ref.box), {"proposal": ref.score}) for group in parsed.groups for ref in group.regions]
    detections += [(None, list(ref.box), {"proposal": ref.score}) for ref in parsed.mentions]
    return Prediction(answer, detections, cut_off)


def coordinate_prediction(parsed, scores: dict[str, list[float]], cut_off: bool = False) -> Prediction:
    detections = [(box.label, list(box.box), {s: values[k] for s, values in scores.items()})
                  for k, box in enumerate(parsed.boxes)]
    return Prediction(parsed.remainder, detections, cut_off)


def score_items(items: Sequence[FO1Record], predictions: dict[str, Prediction], coco: dict[str, Any],
                scorings: Sequence[str]) -> dict[str, Any]:
    """The headline metrics of `items` (FO1 records of the held-out split) from their predictions."""
    from vlmfo1.evaluation.metrics.counting import counting_scores
    from vlmfo1.evaluation.metrics.referring import rec_scores
    from vlmfo1.evaluation.metrics.shapeworld import caption_similarity, short_answer_accuracy

    missing = [item.id for item in items if item.id not in predictions]
    if missing:
        raise ValueError(f"{len(missing)} items have no prediction (first: {missing[:3]})")
    by_task: dict[str, list[FO1Record]] = {}
    for item in items:
        by_task.setdefault(item.task, []).append(item)
    scores: dict[str, Any] = {"num_items": len(items)}
    if "detect_everything" in by_task:
        scores["detection"] = {s: detection_map(by_task["detect_everything"], predictions, coco, s) for s in scorings}
    single = [item for item in by_task.get("rec", []) if len(item.meta["gt_boxes"]) == 1]
    if single:  # RefCOCO's protocol: expressions with one referent, top-1 box
        top1 = [predictions[item.id].detections[0][1] if predictions[item.id].detections else None for item in single]
        scores["rec"] = rec_scores(top1, [item.meta["gt_boxes"][0] for item in single])
    if "counting" in by_task:
        counted = by_task["counting"]
        scores["counting"] = counting_scores([predictions[i.id].text for i in counted], [i.meta["count"] for i in counted])
    if "rejection" in by_task:
        rejected = by_task["rejection"]
        correct = sum(not predictions[item.id].detections and not predictions[item.id].cut_off for item in rejected)
        scores["rejection"] = {"accuracy": correct / len(rejected), "num_items": len(rejected)}
    if "region_caption_brief" in by_task:
        captioned = by_task["region_caption_brief"]
        scores["caption"] = caption_similarity([predictions[i.id].text for i in captioned], [i.meta["caption"] for i in captioned])
    if "image_qa" in by_task:
        asked = by_task["image_qa"]
        scores["image_qa"] = short_answer_accuracy([predictions[i.id].text for i in asked], [i.meta["answer"] for i in asked])
        per_type: dict[str, list[FO1Record]] = {}
        for item in asked:
            per_type.setdefault(item.meta["question_type"], []).append(item)
        scores["image_qa"]["per_type"] = {
            kind: short_answer_accuracy([predictions[i.id].text for i in group], [i.meta["answer"] for i in group])
            for kind, group in sorted(per_type.items())
        }
    return scores


def detection_map(items: Sequence[FO1Record], predictions: dict[str, Prediction], coco: dict[str, Any], scoring: str) -> dict[str, Any]:
    """COCO bbox AP of the answers to "detect everything" (labels that are no shape are dropped)."""
    from vlmfo1.evaluation.metrics.detection import image_subset_map

    stats = image_subset_map(coco, [
        (item.meta["scene_index"], [(label or "", box, scores[scoring]) for label, box, scores in predictions[item.id].detections])
        for item in items])
    return {key: stats[key] for key in ("AP", "AP50", "AP75", "AR100", "images", "detections", "unknown_labels")}


def reference_scores(heldout: HeldOut, items: Sequence[FO1Record]) -> dict[str, Any]:
    """What the reference answers of each format score: FO1's ceiling is set by its proposals."""
    from vlmfo1.evaluation.coordinates import parse_coordinate_answer

    fo1 = {item.id: fo1_prediction(item, item.answer) for item in items}
    twins = {}
    for item in items:
        parsed = parse_coordinate_answer(heldout.twins[item.id].answer)
        twins[item.id] = coordinate_prediction(parsed, {"constant": [1.0] * len(parsed.boxes)})
    return {"fo1": score_items(items, fo1, heldout.coco, ("proposal",)),
            "coordinates": score_items(items, twins, heldout.coco, ("constant",)),
            "floors": answer_floors(items)}


def answer_floors(items: Sequence[FO1Record]) -> dict[str, Any]:
    """What answering without looking scores: REC Acc@0.5 of one uniformly random proposal (the
    expectation over proposals; FO1 picks among them, the twin has none) and counting accuracy of
    always giving the split's most common count."""
    from vlmfo1.evaluation.box_ops import box_iou
    from vlmfo1.evaluation.metrics.referring import REC_IOU_THRESHOLD

    single = [item for item in items if item.task == "rec" and len(item.meta["gt_boxes"]) == 1]
    random_proposal = [np.mean([box_iou(box, item.meta["gt_boxes"][0]) > REC_IOU_THRESHOLD for box in item.bbox_list])
                       for item in single]
    counts = [item.meta["count"] for item in items if item.task == "counting"]
    common = max(sorted(set(counts)), key=counts.count)
    return {"rec_random_proposal": float(np.mean(random_proposal)),
            "counting_most_common": {"count": int(common), "accuracy": counts.count(common) / len(counts)}}


# ---------------------------------------------------------------------------------------------
# Evaluation of one model
# ---------------------------------------------------------------------------------------------


def evaluate_model(kind: str, model_dir: Path, heldout: HeldOut, items: Sequence[FO1Record], out_dir: Path,
                   budget_: ReproBudget, log: Callable[[str], None]) -> dict[str, Any]:
    """Scores of one model on `items` (cached in out_dir/scores.json, answers in answers.json)."""
    cached = out_dir / SCORES_FILE
    if cached.exists():
        return json.loads(cached.read_text())
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if kind == "coordinates":
        predictions, extra = _answer_coordinates(model_dir, heldout, items, out_dir, budget_)
    else:
        predictions, extra = _answer_fo1(model_dir, heldout, items, out_dir, budget_, log)
    (out_dir / PREDICTIONS_FILE).write_text(json.dumps({k: p.to_dict() for k, p in predictions.items()}) + "\n")
    scores = score_items(items, predictions, heldout.coco, SCORINGS[kind])
    scores["answers"] = extra
    scores["eval_seconds"] = round(time.perf_counter() - start, 1)
    cached.write_text(json.dumps(scores, indent=2) + "\n")
    return scores


def _answer_fo1(model_dir, heldout: HeldOut, items, out_dir: Path, budget_: ReproBudget, log):
    """FO1 answers through the recipe's evaluation (`evaluate_shapeworld`: the evaluation runner)."""
    from vlmfo1.evaluation.predictions import read_prediction_records
    from vlmfo1.evaluation.runner import PREDICTIONS_FILE as RUNNER_PREDICTIONS
    from vlmfo1.parsing import was_cut_off
    from vlmfo1.processing.processing_fo1 import FO1Processor
    from vlmfo1.training.recipes import evaluate_shapeworld

    # evaluate_shapeworld asks rejection records with the detection task.
    asked = {item.task for item in items}
    tasks = tuple(sorted(asked - {"rejection"} | ({"detection"} if "rejection" in asked else set())))
    tokenizer = FO1Processor.from_pretrained(model_dir).tokenizer
    max_new_tokens = heldout.answer_limit(tokenizer, items, "fo1", budget_.answer_length_margin, budget_.max_new_tokens_cap)
    runner_dir = out_dir / "runner"
    # `evaluate_shapeworld` takes its items in file order; a `limit` of the item count keeps exactly
    # the first `scenes` scenes because each scene's records are consecutive.
    report = evaluate_shapeworld(model_dir, heldout.folder, heldout.split, runner_dir, tasks=tasks,
                                 max_new_tokens=max_new_tokens, batch_size=budget_.eval_batch_size,
                                 limit=len(items), log=log)
    answers = read_prediction_records(runner_dir / RUNNER_PREDICTIONS)
    if set(answers) != {item.id for item in items}:
        raise RuntimeError(f"{runner_dir}: evaluate_shapeworld answered other items than the {len(items)} asked")
    cut_off = {i.id: was_cut_off(answers[i.id].get("warnings") or []) for i in items}
    predictions = {item.id: fo1_prediction(item, answers[item.id]["answer"], cut_off[item.id]) for item in items}
    extra = {"max_new_tokens": max_new_tokens, "generation_seconds": report.get("generation_seconds"),
             "num_cut_off": sum(cut_off.values()),
             "num_with_warnings": sum(bool(answers[i.id].get("warnings")) for i in items),
             "mean_answer_tokens": _mean_tokens(tokenizer, items, {i.id: answers[i.id]["answer"] for i in items})}
    return predictions, extra


def _answer_coordinates(model_dir, heldout: HeldOut, items, out_dir: Path, budget_: ReproBudget):
    """Twin answers, one generation per task so that each task gets its own length limit."""
    from vlmfo1.evaluation.coordinates import answer_coordinate_records
    from vlmfo1.modeling.modeling_fo1 import FO1ForConditionalGeneration
    from vlmfo1.processing.processing_fo1 import FO1Processor

    model = FO1ForConditionalGeneration.from_pretrained(str(model_dir))
    processor = FO1Processor.from_pretrained(model_dir)
    by_task: dict[str, list[FO1Record]] = {}
    for item in items:
        by_task.setdefault(item.task, []).append(item)
    predictions, rows, limits, texts = {}, [], {}, {}
    for task, group in by_task.items():
        limits[task] = heldout.answer_limit(processor.tokenizer, limit_references(task, by_task), "coordinates",
                                            budget_.answer_length_margin, budget_.max_new_tokens_cap)
        answered = answer_coordinate_records(model, processor, [heldout.twins[item.id] for item in group], heldout.folder,
                                             max_new_tokens=limits[task], batch_size=budget_.eval_batch_size)
        for item, answer in zip(group, answered):
            predictions[item.id] = coordinate_prediction(answer.parsed, answer.scores, cut_off=not answer.finished)
            texts[item.id] = answer.answer
            rows.append({**answer.to_dict(), "task": task})
    with open(out_dir / "coordinate_answers.jsonl", "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in rows)
    extra = {
        "max_new_tokens": limits,
        "num_cut_off": sum(not row["finished"] for row in rows),
        "num_with_warnings": sum(bool(row["warnings"]) for row in rows),
        "mean_answer_tokens": _mean_tokens(processor.tokenizer, items, texts),
    }
    return predictions, extra


def limit_references(task: str, by_task: dict[str, list[FO1Record]]) -> list[FO1Record]:
    """The items whose reference answers set `task`'s generation limit. A rejection question is a
    detection question whose shapes happen to be absent: sized by its own "none" answer alone, a
    model that does not reject would be cut off before its first box and look as if it had."""
    if task == "rejection":
        return by_task["rejection"] + by_task.get("detect_everything", [])
    return by_task[task]


def _mean_tokens(tokenizer, items: Sequence[FO1Record], answers: dict[str, str]) -> dict[str, float]:
    """Mean answer length in tokens per task (the model's own tokenizer; both formats measured alike)."""
    lengths: dict[str, list[int]] = {}
    for item in items:
        lengths.setdefault(item.task, []).append(len(tokenizer(answers[item.id])["input_ids"]))
    return {task: float(np.mean(values)) for task, values in sorted(lengths.items())}


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


def save_at_steps(steps: Sequence[int], folder_of: Callable[[int], Path]):
    """A `TrainerCallback` that saves the model (and processor) at `steps` into `folder_of(step)`."""
    from transformers import TrainerCallback

    wanted = set(steps)

    class SaveAtSteps(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, processing_class=None, **kwargs):
            if state.global_step not in wanted:
                return
            target = folder_of(state.global_step)
            if (target / "config.json").exists():
                return
            partial = target.with_name(target.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            model.save_pretrained(partial)
            processing_class.save_pretrained(partial)
            partial.rename(target)

    return SaveAtSteps()


def train_stage(config: dict[str, Any], callbacks: Sequence[Any] = (), log: Callable[[str], None] = print) -> dict[str, Any]:
    """Trains one stage unless its record says it is done; returns steps, wall seconds and losses."""
    from vlmfo1.training.trainer import train

    out = Path(config["training"]["output_dir"])
    record_file = out / TRAIN_RECORD
    if record_file.exists():
        return json.loads(record_file.read_text())
    resumed = out.is_dir() and any(out.glob("checkpoint-*"))
    log(f"training {out} ({config['training']['max_steps']} steps{', resuming' if resumed else ''})")
    start = time.perf_counter()
    result = train(config, resume="auto", callbacks=list(callbacks))
    record = {"steps": result.global_step, "seconds": round(time.perf_counter() - start, 1),
              "resumed_from_checkpoint": resumed, "losses": result.losses,
              "learning_rate": config["training"]["learning_rate"],
              "batch_size": config["training"]["per_device_train_batch_size"], "stage": config["stage"],
              **compute_used()}
    record_file.write_text(json.dumps(record, indent=2) + "\n")
    for checkpoint in out.glob("checkpoint-*"):  # only for resuming this stage; the model is saved
        shutil.rmtree(checkpoint, ignore_errors=True)
    return record


def derive_from_base(base_dir: Path, out_dir: Path, config_changes: dict[str, Any], seed: int) -> Path:
    """A copy of the base with `config_changes` (which region branches, SimpleFP) and a new region
    encoder drawn from `seed`: every ViT, LLM and DaViT weight is the base's."""
    from vlmfo1.modeling.modeling_fo1 import FO1ForConditionalGeneration
    from vlmfo1.processing.processing_fo1 import FO1Processor

    if (out_dir / "config.json").exists():
        return out_dir
    base = FO1ForConditionalGeneration.from_pretrained(str(base_dir))
    config = copy.deepcopy(base.config)
    for key, value in config_changes.items():
        if not hasattr(config, key):
            raise ValueError(f"FO1Config has no field {key!r}")
        setattr(config, key, value)
    config.validate_hfre()
    torch.manual_seed(seed)
    model = FO1ForConditionalGeneration(config)
    wanted = model.state_dict()
    kept = {k: v for k, v in base.state_dict().items() if k in wanted and not k.startswith("region_encoder.")}
    missing, _ = model.load_state_dict(kept, strict=False)
    unexpected_missing = [k for k in missing if not k.startswith("region_encoder.")]
    if unexpected_missing:
        raise RuntimeError(f"weights of the base missing in the derived model: {unexpected_missing[:5]}")
    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    FO1Processor.from_pretrained(base_dir).save_pretrained(partial)
    partial.rename(out_dir)
    return out_dir


def snapshot_steps(steps: int, points: int) -> list[int]:
    """Intermediate evaluation steps of one phase (its end is evaluated from the stage folder)."""
    return sorted({round(steps * k / points) for k in range(1, points)} - {0, steps})


# ---------------------------------------------------------------------------------------------
# One seed
# ---------------------------------------------------------------------------------------------


def run_seed(budget_: ReproBudget, seed: int, out: Path, heldouts: dict[str, HeldOut],
             log: Callable[[str], None], arms: Sequence[str] | None = None, keep: Path | None = None) -> dict[str, Any] | None:
    """Trains and evaluates seed `seed`: its base, then `arms` (None: all). Returns the seed's result,
    also written to `seed{S}/result.json`, once every arm has its `result.json` (arms may be split over
    parallel commands); None while some arm is still missing. Every finished `result.json` is also
    copied to the same place under `keep` (when given)."""
    recipe = dataclasses.replace(budget_.recipe, seed=seed)
    folder = out / f"seed{seed}"
    data_dir = folder / "data"
    base_dir = folder / "base"
    # One command makes the seed's data and base; another command on other arms of the seed waits.
    with exclusive(folder / ".lock"):
        write_training_data(recipe, data_dir, log)
        write_tokenizer(recipe, folder / "tokenizer")
        base_train = train_base(recipe, data_dir, folder, base_dir, log)
        checks = base_language_checks(recipe, base_dir, folder / "base_language_checks.json", log)
        base_scores = {split: evaluate_model("fo1", base_dir, heldout, heldout.items(BASE_TASKS),
                                             folder / "base_eval" / split, budget_, log)
                       for split, heldout in heldouts.items()}
    curve_split = next(iter(heldouts))
    curve_items = heldouts[curve_split].items(CURVE_TASKS, budget_.curve_scenes)
    base_sha256 = file_sha256(base_dir / "model.safetensors")
    result: dict[str, Any] = {"seed": seed, "arms": {},
                              "base": {"train": {**_train_summary(base_train), "language_stages": base_train.get("language_stages", [])},
                                       "scores": base_scores, "language_checks": checks,
                                       "sha256": base_sha256}}

    for arm in ARMS:
        arm_dir = folder / arm.name
        finished = arm_dir / "result.json"
        if finished.exists():  # trained and evaluated (here, or kept from a lost folder: no checkpoint needed)
            entry = json.loads(finished.read_text())
            if entry.get("base_sha256", base_sha256) != base_sha256:
                raise SystemExit(f"{finished} was trained from another base than {base_dir} (sha256 "
                                 f"{entry['base_sha256'][:12]}... vs {base_sha256[:12]}...); remove it to train the arm again")
            result["arms"][arm.name] = entry
            keep_copy(finished, out, keep)
            continue
        if arms is not None and arm.name not in arms:
            continue
        phases = train_arm(arm, recipe, budget_, data_dir, base_dir, folder, seed, log)
        final_dir = phases[-1]["dir"]
        log(f"seed {seed}, {arm.name}: evaluating")
        scores = {split: evaluate_model(arm.kind, final_dir, heldout, heldout.items(EVAL_TASKS), arm_dir / "eval" / split,
                                        budget_, log) for split, heldout in heldouts.items()}
        entry = {"scores": scores, "phases": [{k: v for k, v in p.items() if k != "dir"} for p in phases],
                 "steps": sum(p["steps"] for p in phases), "train_seconds": sum(p["seconds"] for p in phases),
                 "base_sha256": base_sha256}
        if arm.curve:
            entry["curve"] = arm_curve(arm, phases, heldouts[curve_split], curve_items, arm_dir, budget_, log)
        result["arms"][arm.name] = entry
        (arm_dir / "result.json").write_text(json.dumps(entry, indent=2) + "\n")
        keep_copy(arm_dir / "result.json", out, keep)
    missing = [arm.name for arm in ARMS if arm.name not in result["arms"]]
    if missing:
        log(f"seed {seed}: {', '.join(missing)} not finished yet; the seed's result.json waits for them")
        return None
    (folder / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    keep_copy(folder / "result.json", out, keep)
    return result


def budget_differences(budget_file: Path, identity: dict[str, Any]) -> list[str]:
    """The budget fields in which the folder's `budget.json` differs from `identity` (none if it has none)."""
    if not budget_file.exists():
        return []
    previous = json.loads(budget_file.read_text())
    return sorted(k for k in set(previous) | set(identity) if previous.get(k) != identity.get(k))


def keep_copy(path: Path, out: Path, keep: Path | None) -> None:
    """Copies `path` (a finished piece's file in the run folder `out`) to the same place under `keep`:
    a folder that outlives the run's (the repository's benchmarks/results/...), where a lost run
    folder's finished pieces are found again (`--report-only`, or copied into a new `--out`)."""
    if keep is None:
        return
    target = keep / path.relative_to(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, target)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def train_base(recipe: DemoRecipe, data_dir: Path, folder: Path, base_dir: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """The base VLM: the recipe's language stages (text only, `folder/language{k}`), then stage 0 into
    `base_dir`. Returns stage 0's training record with the language stages' steps and seconds added."""
    from vlmfo1.training.recipes import stage_config, stage_plans

    init, language = None, []
    for name, _ in stage_plans(recipe):
        if name.startswith("language"):
            language.append(train_stage(stage_config(recipe, name, data_dir, folder / name, init), log=log))
            init = folder / name
    record = dict(train_stage(stage_config(recipe, 0, data_dir, base_dir, init), log=log))
    if language:
        record["language_stages"] = [_train_summary(r) for r in language]
        record["steps"] += sum(r["steps"] for r in language)
        record["seconds"] = round(record["seconds"] + sum(r["seconds"] for r in language), 1)
    return record


def base_language_checks(recipe: DemoRecipe, base_dir: Path, cached: Path, log) -> dict[str, Any]:
    """What the base brings of the skills FO1's answers are made of: copying, and look-ups over
    word-filled slots of 2, 4 and 6 items (`recipes.stage_language_checks`, teacher-forced on new
    questions); cached in `cached`."""
    from vlmfo1.training.recipes import stage_language_checks

    if not cached.exists():
        checks = stage_language_checks(base_dir, recipe)
        cached.write_text(json.dumps(checks, indent=2) + "\n")
        log(f"base language checks: { {name: c['region'] for name, c in checks.items()} }")
    return json.loads(cached.read_text())


def train_arm(arm: Arm, recipe: DemoRecipe, budget_: ReproBudget, data_dir: Path, base_dir: Path, folder: Path,
              seed: int, log) -> list[dict[str, Any]]:
    """Trains the arm; returns per phase its folder, steps, wall seconds and the cumulative step at its
    start. FO1 arms: the alignment (`aligned/`, skipped when the recipe has none), then stage 2; the
    twin: one phase of as many steps on the stage-2 records' coordinate twins (`coordinates/`)."""
    from vlmfo1.training.recipes import stage_config

    arm_dir = folder / arm.name
    alignment, stage2 = recipe.alignment_steps, recipe.stage2.steps
    # The curve's steps, cumulative: the end of the alignment, then evenly through stage 2.
    curve_steps = ([alignment] if alignment else []) + [alignment + s for s in snapshot_steps(stage2, budget_.curve_points)]
    if arm.kind == "coordinates":
        config = stage_config(recipe, "stage2", data_dir, arm_dir / "coordinates", base_dir)
        config["stage"] = {"name": "coordinates", "train": list(COORDINATE_GROUPS)}
        config["data"]["train"] = [{"records": str(data_dir / "stage2.coords.jsonl")}]
        config["training"].update(learning_rate=budget_.twin_rate(), max_steps=alignment + stage2,
                                  save_steps=max((alignment + stage2) // 2, 1))
        # The twin trains its LLM from the first step: its curve has points through FO1's alignment too.
        twin_steps = snapshot_steps(alignment, budget_.curve_points) + curve_steps
        callbacks = [save_at_steps(twin_steps, lambda step: arm_dir / "curve" / f"step{step:06d}" / "model")] if arm.curve else []
        record = train_stage(config, callbacks, log)
        return [{**_train_summary(record), "dir": arm_dir / "coordinates", "start_step": 0}]

    phases = []
    init = derive_from_base(base_dir, arm_dir / "init", arm.config_changes, seed)
    if alignment:
        phases.append({**align_phase(recipe, arm, init, data_dir, arm_dir / "aligned", seed, log), "start_step": 0})
        init = arm_dir / "aligned"
    config = stage_config(recipe, "stage2", data_dir, arm_dir / "stage2", init)
    if arm.stage2_extra_groups:
        spec = config["stage"]
        spec["name"] = f"stage2+{'+'.join(arm.stage2_extra_groups)}"
        spec["train"] = list(spec["train"]) + [g for g in arm.stage2_extra_groups if g not in spec["train"]]
    callbacks = [save_at_steps([s - alignment for s in curve_steps if s > alignment],
                               lambda step: arm_dir / "curve" / f"step{alignment + step:06d}" / "model")] if arm.curve else []
    record = train_stage(config, callbacks, log)
    phases.append({**_train_summary(record), "dir": arm_dir / "stage2", "start_step": alignment})
    return phases


def align_phase(recipe: DemoRecipe, arm: Arm, init: Path, data_dir: Path, out_dir: Path, seed: int, log) -> dict[str, Any]:
    """The recipe's alignment step on `init` into `out_dir`, training the arm's groups (timed once)."""
    from vlmfo1.training.recipes import align_model

    record_file = out_dir / TRAIN_RECORD
    if not record_file.exists():
        log(f"aligning {out_dir} ({recipe.alignment_steps} steps, {', '.join(arm.alignment_groups)})")
        start = time.perf_counter()
        history = align_model(init, data_dir, out_dir, recipe.alignment_steps, recipe.alignment_learning_rate,
                              seed=seed, groups=arm.alignment_groups, batch_size=ALIGNMENT_BATCH, resume=False, log=log)
        record = {"steps": recipe.alignment_steps, "seconds": round(time.perf_counter() - start, 1),
                  "learning_rate": recipe.alignment_learning_rate, "batch_size": ALIGNMENT_BATCH,
                  "stage": {"name": "alignment", "train": list(arm.alignment_groups)},
                  "losses": [list(pair) for pair in zip(history["step"], history["loss"])],
                  "nearest_label": history["nearest_label"], **compute_used()}
        record_file.write_text(json.dumps(record, indent=2) + "\n")
    record = json.loads(record_file.read_text())
    return {**_train_summary(record), "dir": out_dir, "nearest_label": record["nearest_label"][-1]}


def arm_curve(arm: Arm, phases, heldout: HeldOut, items, arm_dir: Path, budget_: ReproBudget, log) -> list[dict[str, Any]]:
    """Detection AP at each snapshot and each phase end (cumulative steps)."""
    points: list[tuple[int, Path]] = []
    for phase in phases:
        for snapshot in sorted((arm_dir / "curve").glob("step*/model")):
            step = int(snapshot.parent.name.removeprefix("step"))
            if phase["start_step"] < step < phase["start_step"] + phase["steps"]:
                points.append((step, snapshot))
        points.append((phase["start_step"] + phase["steps"], phase["dir"]))
    curve = []
    for step, model_dir in points:
        if model_dir == phases[-1]["dir"]:  # the final model: its held-out answers are already there
            answers = json.loads((arm_dir / "eval" / heldout.split / PREDICTIONS_FILE).read_text())
            predictions = {k: Prediction.from_dict(v) for k, v in answers.items()}
            scores = score_items(items, predictions, heldout.coco, SCORINGS[arm.kind])
        else:
            scores = evaluate_model(arm.kind, model_dir, heldout, items, arm_dir / "curve" / f"step{step:06d}" / "eval", budget_, log)
        curve.append({"step": step, **{s: v["AP"] for s, v in scores["detection"].items()}})
    return curve


def compute_used() -> dict[str, Any]:
    """What a training record notes of the compute that made it: a seed's numbers are reproducible
    only on the same device with the same thread count (another thread count sums in another order)."""
    return {"torch_threads": torch.get_num_threads(),
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"}


def _train_summary(record: dict[str, Any]) -> dict[str, Any]:
    losses = record.get("losses") or []
    return {"steps": record["steps"], "seconds": record["seconds"], "learning_rate": record.get("learning_rate"),
            "batch_size": record.get("batch_size"), "first_loss": losses[0][1] if losses else None,
            "last_loss": losses[-1][1] if losses else None,
            "torch_threads": record.get("torch_threads"), "device": record.get("device")}  # None: trained before they were noted


# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------


def headline(scores: dict[str, Any], scoring: str) -> dict[str, float | None]:
    """The numbers of the tables (fractions) from one `score_items` report."""
    detection = scores.get("detection", {}).get(scoring, {})
    row = {
        "map": detection.get("AP"),
        "ap50": detection.get("AP50"),
        "rec_acc50": scores.get("rec", {}).get("accuracy"),
        "counting": scores.get("counting", {}).get("accuracy"),
        "rejection": scores.get("rejection", {}).get("accuracy"),
        "caption_ss": scores.get("caption", {}).get("semantic_similarity"),
        "image_qa": scores.get("image_qa", {}).get("accuracy"),
    }
    values = [row[k] for k in PERCEPTION_METRICS]
    row["average"] = float(np.mean(values)) if all(v is not None for v in values) else None
    return row


def mean_spread(values: Sequence[float | None]) -> dict[str, Any]:
    present = [v for v in values if v is not None]
    if not present:
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0}
    return {"mean": float(np.mean(present)), "std": float(np.std(present, ddof=1)) if len(present) > 1 else None,
            "min": float(min(present)), "max": float(max(present)), "n": len(present)}


def _cell(stat: dict[str, Any], percent: bool = True, digits: int = 1) -> str:
    if stat["mean"] is None:
        return "-"
    scale = 100.0 if percent else 1.0
    text = f"{stat['mean'] * scale:.{digits}f}"
    if stat["std"] is not None:
        text += f" ± {stat['std'] * scale:.{digits}f}"
    return text


def _markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


ROW_METRICS = {  # (column title, key)
    "table1": [("mAP", "map"), ("AP50", "ap50"), ("REC Acc@0.5", "rec_acc50"), ("counting", "counting"),
               ("rejection", "rejection"), ("caption SS", "caption_ss"), ("image QA", "image_qa")],
    "ablation": [("mAP", "map"), ("REC Acc@0.5", "rec_acc50"), ("counting", "counting"), ("rejection", "rejection"),
                 ("caption SS", "caption_ss"), ("average", "average")],
}


# Each claim as one paired difference per seed, signed so that positive is what the paper says:
# (claim, metric key of `headline`, (arm, scoring) in favour, (arm, scoring) against; "base" is the
# stage-0 model, which only has image QA).
CLAIMS = (
    ("retrieval beats coordinate generation (Table 1)", "map", ("fo1", "proposal"), ("coordinates", "token_probability")),
    ("the dual encoder beats the auxiliary branch alone (Table 8)", "average", ("fo1", "proposal"), ("aux_only", "proposal")),
    ("the dual encoder beats the primary branch alone (Table 8)", "average", ("fo1", "proposal"), ("primary_simple_fp", "proposal")),
    ("SimpleFP helps the primary branch (Table 9)", "average", ("primary_simple_fp", "proposal"), ("primary_no_simple_fp", "proposal")),
    ("freezing the primary ViT is better (Table 8)", "average", ("fo1", "proposal"), ("fo1_vit_unfrozen", "proposal")),
    ("perception without forgetting (Table 7)", "image_qa", ("fo1", "proposal"), ("base", None)),
)
METRIC_TITLES = {"map": "mAP", "average": "average", "image_qa": "image QA"}


def claims_table(results: list[dict[str, Any]], split: str) -> dict[str, Any]:
    """Every claim's paired difference, seed by seed: the spread of a difference is smaller than the
    spreads of the two scores it is taken from, because both arms start from the same seed's base."""
    def value(result: dict[str, Any], side: tuple[str, str | None], metric: str) -> float:
        arm, scoring = side
        if arm == "base":
            return result["base"]["scores"][split]["image_qa"]["accuracy"]
        return headline(result["arms"][arm]["scores"][split], scoring)[metric]

    rows = []
    for claim, metric, favour, against in CLAIMS:
        differences = [value(r, favour, metric) - value(r, against, metric) for r in results]
        rows.append({"claim": claim, "metric": metric, "favour": favour[0], "against": against[0],
                     "per_seed": {str(r["seed"]): d for r, d in zip(results, differences)},
                     "difference": mean_spread(differences),
                     "seeds_by_sign": {"positive": sum(d > 0 for d in differences), "zero": sum(d == 0 for d in differences),
                                       "negative": sum(d < 0 for d in differences)}})
    md = _markdown(["claim", "difference", "metric", "per seed", "mean", "seeds + / 0 / −"],
                   [[row["claim"], f"{row['favour']} − {row['against']}", METRIC_TITLES[row["metric"]],
                     ", ".join(f"{100 * d:+.1f}" for d in row["per_seed"].values()), _cell(row["difference"]),
                     " / ".join(str(n) for n in row["seeds_by_sign"].values())] for row in rows])
    return {"rows": rows, "markdown": md}


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rank correlation (ties take their mean rank); None when either side is constant."""
    def ranks(values: Sequence[float]) -> np.ndarray:
        values = np.asarray(values, dtype=float)
        order = values.argsort(kind="stable")
        rank = np.empty(len(values))
        rank[order] = np.arange(len(values), dtype=float)
        for value in np.unique(values):
            tied = values == value
            rank[tied] = rank[tied].mean()
        return rank

    rx, ry = ranks(x), ranks(y)
    if len(rx) < 2 or rx.std() == 0 or ry.std() == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


def alignment_phase(arm_result: dict[str, Any]) -> dict[str, Any]:
    """The record of an FO1 arm's alignment phase; empty when the arm had none (or is the twin)."""
    return next((phase for phase in arm_result["phases"] if "nearest_label" in phase), {})


def alignment_table(results: list[dict[str, Any]], split: str) -> dict[str, Any]:
    """How far each FO1 arm's alignment got against its held-out mAP, over every (seed, arm) pair. The
    arms differ only in what the region tokens are made of, so if the ranking of arms follows how well
    their alignment converged, that says where the differences between them come from."""
    pairs = []
    for result in results:
        for arm in ARMS:
            if arm.kind != "fo1":
                continue
            record = result["arms"][arm.name]
            alignment = alignment_phase(record)
            pairs.append({"seed": result["seed"], "arm": arm.name, "alignment_loss": alignment.get("last_loss"),
                          "nearest_label": alignment.get("nearest_label"),
                          "map": headline(record["scores"][split], "proposal")["map"]})
    rows = []
    for key, title in (("alignment_loss", "final alignment loss"), ("nearest_label", "aligned: nearest own label (last batch)")):
        usable = [p for p in pairs if p[key] is not None]
        rows.append({"measure": key, "pairs": len(usable),
                     "spearman": spearman([p[key] for p in usable], [p["map"] for p in usable]), "title": title})
    md = _markdown(["alignment measure", "(seed, arm) pairs", "Spearman rank correlation with held-out mAP"],
                   [[row["title"], str(row["pairs"]), "-" if row["spearman"] is None else f"{row['spearman']:+.2f}"]
                    for row in rows])
    return {"pairs": pairs, "rows": rows, "markdown": md}


def reference_answer_tokens(heldout: HeldOut, tokenizer) -> dict[str, float]:
    """Mean tokens of the reference "detect everything" answers in each format (one seed's tokenizer)."""
    items = heldout.items(("detect_everything",))
    return {"fo1": float(np.mean([len(tokenizer(i.answer)["input_ids"]) for i in items])),
            "coordinates": float(np.mean([len(tokenizer(heldout.twins[i.id].answer)["input_ids"]) for i in items]))}


def build_tables(results: list[dict[str, Any]], split: str, reference: dict[str, Any],
                 reference_tokens: dict[str, float] | None = None) -> dict[str, Any]:
    """Aggregates the seeds' results on held-out `split` into the paper-shaped tables (numbers and markdown)."""
    def stats_of(arm: str, scoring: str) -> dict[str, dict[str, Any]]:
        rows = [headline(r["arms"][arm]["scores"][split], scoring) for r in results]
        return {key: mean_spread([row[key] for row in rows]) for key in rows[0]}

    def wall(arm: str) -> dict[str, Any]:
        return mean_spread([r["arms"][arm]["train_seconds"] for r in results])

    def steps(arm: str) -> int:
        return results[0]["arms"][arm]["steps"]

    def aligned(arm: str) -> dict[str, Any]:
        """Share of training objects whose region token ended nearest its own label's word vector."""
        return mean_spread([alignment_phase(r["arms"][arm]).get("nearest_label") for r in results])

    def answer_tokens(arm: str) -> dict[str, Any]:
        return mean_spread([r["arms"][arm]["scores"][split]["answers"]["mean_answer_tokens"].get("detect_everything")
                            for r in results])

    def eval_wall(arm: str) -> dict[str, Any]:
        return mean_spread([r["arms"][arm]["scores"][split]["eval_seconds"] for r in results])

    tables: dict[str, Any] = {"seeds": [r["seed"] for r in results]}
    # Table 1: (a) vs (b)
    t1_rows = [("(a) coordinate twin, box score = token probability", "coordinates", "token_probability"),
               ("(a) coordinate twin, box score = 1.0", "coordinates", "constant"),
               ("(b) FO1, box = proposal, score = proposal score", "fo1", "proposal")]
    table1 = []
    for title, arm, scoring in t1_rows:
        table1.append({"row": title, "arm": arm, "scoring": scoring, **stats_of(arm, scoring),
                       "steps": steps(arm), "train_seconds": wall(arm), "answer_tokens": answer_tokens(arm),
                       "eval_seconds": eval_wall(arm)})
    ceilings = [("reference answers, JSON boxes (ceiling of (a))", "coordinates", "constant"),
                ("reference answers, region indexes (ceiling of (b): proposal jitter)", "fo1", "proposal")]
    reference_tokens = reference_tokens or {}
    columns = ROW_METRICS["table1"]
    md_rows = [[row["row"]] + [_cell(row[key]) for _, key in columns]
               + [str(row["steps"]), _cell(row["train_seconds"], percent=False, digits=0),
                  _cell(row["answer_tokens"], percent=False, digits=0), _cell(row["eval_seconds"], percent=False, digits=0)]
               for row in table1]
    md_rows += [[title] + [_cell(mean_spread([headline(reference[kind], scoring)[key]])) for _, key in columns]
                + ["-", "-", _cell(mean_spread([reference_tokens.get(kind)]), percent=False, digits=0), "-"]
                for title, kind, scoring in ceilings]
    header = ["model"] + [c for c, _ in columns] + ["train steps", "train wall s", "tokens / detect-all answer", "eval wall s"]
    floors = reference["floors"]
    floor_line = (f"Floors of this split: one uniformly random proposal scores {100 * floors['rec_random_proposal']:.1f} % "
                  f"REC Acc@0.5 (FO1 picks among proposals; the twin has none); always answering "
                  f"{floors['counting_most_common']['count']} scores {100 * floors['counting_most_common']['accuracy']:.1f} % "
                  "counting accuracy.")
    tables["table1"] = {"rows": table1, "ceilings": {"coordinates": headline(reference["coordinates"], "constant"),
                                                     "fo1": headline(reference["fo1"], "proposal")},
                        "floors": floors, "reference_answer_tokens": reference_tokens,
                        "markdown": _markdown(header, md_rows) + "\n\n" + floor_line}

    # Tables 8 and 9: ablations
    for name, arms in (("table8", ("fo1", "fo1_vit_unfrozen", "aux_only", "primary_simple_fp")),
                       ("table9", ("primary_simple_fp", "primary_no_simple_fp"))):
        rows = [{"row": ARMS_BY_NAME[arm].title, "arm": arm, **stats_of(arm, "proposal"),
                 "steps": steps(arm), "train_seconds": wall(arm), "aligned": aligned(arm)} for arm in arms]
        columns = ROW_METRICS["ablation"]
        md = _markdown(["model"] + [c for c, _ in columns] + ["aligned: nearest own label (last batch)", "train wall s"],
                       [[row["row"]] + [_cell(row[key]) for _, key in columns]
                        + [_cell(row["aligned"]), _cell(row["train_seconds"], percent=False, digits=0)] for row in rows])
        tables[name] = {"rows": rows, "markdown": md}

    # Table 7: image-level questions before (base) and after training
    kinds = sorted(results[0]["base"]["scores"][split]["image_qa"]["per_type"])

    def qa(scores_list: list[dict[str, Any]]) -> dict[str, Any]:
        overall = mean_spread([s["image_qa"]["accuracy"] for s in scores_list])
        per_type = {k: mean_spread([s["image_qa"]["per_type"].get(k, {}).get("accuracy") for s in scores_list]) for k in kinds}
        return {"overall": overall, "per_type": per_type}

    base_scores = [r["base"]["scores"][split] for r in results]
    table7 = [{"row": "base VLM (stage 0, frozen copy)", "arm": "base", **qa(base_scores), "delta": None}]
    for arm in ARMS:
        arm_scores = [r["arms"][arm.name]["scores"][split] for r in results]
        deltas = [a["image_qa"]["accuracy"] - b["image_qa"]["accuracy"] for a, b in zip(arm_scores, base_scores)]
        table7.append({"row": arm.title, "arm": arm.name, **qa(arm_scores), "delta": mean_spread(deltas)})
    md_rows = [[row["row"], _cell(row["overall"]), "-" if row["delta"] is None else _cell(row["delta"])]
               + [_cell(row["per_type"][k]) for k in kinds] for row in table7]
    tables["table7"] = {"rows": table7, "question_types": kinds,
                        "markdown": _markdown(["model", "image QA", "Δ vs base"] + kinds, md_rows)}
    tables["claims"] = claims_table(results, split)
    tables["alignment"] = alignment_table(results, split)
    return tables


def seed_compute(result: dict[str, Any]) -> str:
    """The devices and thread counts a seed's training ran with, as noted in its records."""
    base = result["base"]["train"]
    pieces = [base, *base.get("language_stages", [])]
    pieces += [phase for arm in result["arms"].values() for phase in arm["phases"]]
    used = sorted({f"{p['device']}, {p['torch_threads']} thread{'s' if p['torch_threads'] != 1 else ''}"
                   for p in pieces if p.get("torch_threads") is not None})
    unnoted = sum(p.get("torch_threads") is None for p in pieces)
    if unnoted:
        used.append(f"{unnoted} of {len(pieces)} pieces not noted")
    return "; ".join(used)


def base_skills_table(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The base's language checks over seeds: region tokens right when copying and in each look-up."""
    names = list(results[0]["base"]["language_checks"])
    rows = [{"check": name,
             "region": mean_spread([r["base"]["language_checks"][name]["region"] for r in results]),
             "chance": mean_spread([r["base"]["language_checks"][name]["region_chance"] for r in results])}
            for name in names]
    titles = {"copy": "copy text with region tokens"} | {n: f"look-up over at most {n.removeprefix('lookup')} word-filled slots"
                                                        for n in names if n.startswith("lookup")}
    md = _markdown(["check (teacher-forced, new questions)", "region tokens right", "uniform guess"],
                   [[titles.get(row["check"], row["check"]), _cell(row["region"]),
                     "-" if row["check"] == "copy" else _cell(row["chance"])] for row in rows])
    return {"rows": rows, "markdown": md}


def curve_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for result in results:
        for arm in ARMS:
            for point in result["arms"][arm.name].get("curve", []):
                for scoring, value in point.items():
                    if scoring != "step":
                        rows.append({"arm": arm.name, "scoring": scoring, "seed": result["seed"], "step": point["step"], "AP": value})
    return rows


def write_curve(rows: list[dict[str, Any]], out: Path, alignment_steps: int | None = None,
                fo1_ceiling: float | None = None) -> str | None:
    """curve.csv, and curve.png when matplotlib is installed; returns the PNG path or None."""
    with open(out / "curve.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["arm", "scoring", "seed", "step", "AP"])
        writer.writeheader()
        writer.writerows(rows)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    figure, axis = plt.subplots(figsize=(6, 4))
    for (arm, scoring), label in {("coordinates", "token_probability"): "(a) coordinate twin, token-probability score",
                                  ("coordinates", "constant"): "(a) coordinate twin, score 1.0",
                                  ("fo1", "proposal"): "(b) FO1"}.items():
        series = [r for r in rows if r["arm"] == arm and r["scoring"] == scoring]
        steps = sorted({r["step"] for r in series})
        if not steps:
            continue
        values = [[r["AP"] * 100 for r in series if r["step"] == s] for s in steps]
        axis.plot(steps, [np.mean(v) for v in values], marker="o", label=label)
        axis.fill_between(steps, [min(v) for v in values], [max(v) for v in values], alpha=0.2)
    if alignment_steps:
        axis.axvline(alignment_steps, color="grey", linestyle=":", linewidth=1, label="end of FO1's alignment")
    if fo1_ceiling is not None:
        axis.axhline(fo1_ceiling * 100, color="grey", linestyle="--", linewidth=1, label="FO1 ceiling (reference answers)")
    axis.set_ylim(bottom=0)
    axis.set_xlabel("training steps (FO1: alignment + stage 2; twin: one run)")
    axis.set_ylabel("held-out detection mAP (%)")
    axis.legend(fontsize=8)
    figure.tight_layout()
    path = out / "curve.png"
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return str(path)


def render_report(budget_: ReproBudget, tables: dict[str, dict[str, Any]], base_skills: dict[str, Any], png: str | None,
                  wall_seconds: float, machine: dict[str, Any], compute_by_seed: dict[int, str]) -> str:
    """report.md: the tables of every held-out split (`tables`: split -> `build_tables`)."""
    seeds_run = next(iter(tables.values()))["seeds"]
    seeds = ", ".join(str(s) for s in seeds_run)
    spread = "mean ± sample std over seeds" if len(seeds_run) > 1 else "one seed, no spread"
    sections = [
        ("table1", "Table 1 style: (a) coordinate generation vs (b) region retrieval, equal training budget"),
        ("table8", "Table 8 style: HFRE ablations (FO1 alignment + stage 2 from the same base)"),
        ("table9", "Table 9 style: SimpleFP on the primary branch (primary region feature only)"),
        ("table7", "Table 7 style: image-level questions before and after training (forgetting)"),
        ("claims", "The claims, seed by seed: paired differences in points, positive = as the paper says"),
        ("alignment", "Alignment vs. held-out mAP: every FO1 arm of every seed (lower loss, more own labels = better aligned)"),
    ]
    lines = [
        f"# Reproduction on ShapeWorld: budget `{budget_.name}`, seeds {seeds}",
        "",
        (f"Scores in % on {budget_.heldout_scenes} held-out scenes per split; {spread}. Wall time of this invocation "
         f"{wall_seconds:.0f} s on {machine['platform']} ({machine['cpu_count']} CPUs, {machine['torch_threads']} torch threads)."),
        "",
        "Training compute of each seed (a seed's numbers reproduce only with the same): "
        + "; ".join(f"seed {seed}: {compute}" for seed, compute in compute_by_seed.items()) + ".",
        "",
        "## The base VLM's language skills (what FO1's answers are made of)",
        "",
        base_skills["markdown"],
        "",
    ]
    for split, split_tables in tables.items():
        changes = budget_.heldout_splits[split]
        world = f"the training world with {json.dumps(changes)}" if changes else "the training world, new scenes"
        lines += [f"# Held-out split `{split}` (seed {budget_.split_seed(split)}: {world})", ""]
        lines += [line for key, title in sections for line in (f"## {title}", "", split_tables[key]["markdown"], "")]
    lines += [
        f"## mAP vs. training steps (split `{next(iter(tables))}`, first {budget_.curve_scenes} scenes)",
        "",
        f"`curve.csv`{' and `curve.png`' if png else ' (matplotlib is not installed: no plot, the data is in the CSV)'}.",
        "",
    ]
    return "\n".join(lines)


def machine_info() -> dict[str, Any]:
    return {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def describe_heldout(heldout: HeldOut, reference: dict[str, Any]) -> dict[str, Any]:
    """A held-out split and the scores of its reference answers (no model): printed and returned."""
    items = heldout.items(EVAL_TASKS)
    objects = [len(i.meta["gt_boxes"]) for i in items if i.task == "detect_everything"]
    counts: dict[str, int] = {}
    for item in items:
        counts[item.task] = counts.get(item.task, 0) + 1
    single_rec = sum(i.task == "rec" and len(i.meta["gt_boxes"]) == 1 for i in items)
    description = {
        "split": heldout.split, "records": counts, "single_target_rec": single_rec,
        "objects_per_scene": {"mean": float(np.mean(objects)), "min": min(objects), "max": max(objects)},
        "proposals_per_scene": float(np.mean([len(i.bbox_list) for i in items if i.task == "detect_everything"])),
        "reference": {"fo1": headline(reference["fo1"], "proposal"),
                      "coordinates": headline(reference["coordinates"], "constant")},
    }
    print(json.dumps(description, indent=2), flush=True)
    return description


def run(budget_: ReproBudget, out: Path, seeds: Sequence[int] | None = None, threads: int | None = None,
        log: Callable[[str], None] | None = None, reference_only: bool = False, report_only: bool = False,
        arms: Sequence[str] | None = None, keep: Path | None = None) -> dict[str, Any] | None:
    """Runs (or resumes) every seed, then writes results.json, report.md and the curve; returns the results.
    With `reference_only`, writes the held-out splits and returns `describe_heldout` of each (no training).
    With `report_only`, trains and evaluates nothing: the report is rebuilt from the finished seeds'
    `seed*/result.json` in `out` alone (e.g. an archive of them: the held-out splits and a tokenizer,
    both deterministic, are remade when missing). `arms` (None: all) splits a seed's arms over parallel
    commands: each trains the base once between them and its own arms; the command that finishes a
    seed's last arm writes the seed's result. `keep`: a folder (of the same budget) that gets a copy of
    budget.json and of every finished seed's and arm's result.json. Returns None when no seed of the
    folder has finished."""
    unknown = sorted(set(arms or ()) - set(ARMS_BY_NAME))
    if unknown:
        raise ValueError(f"unknown arms {unknown}; choose from {', '.join(ARMS_BY_NAME)}")
    from transformers import AutoTokenizer
    from transformers.utils import logging as transformers_logging

    start = time.perf_counter()
    log = log or _log
    transformers_logging.disable_progress_bar()  # one bar per model load and save: noise in the log
    if threads:
        torch.set_num_threads(threads)
        budget_ = dataclasses.replace(budget_, recipe=dataclasses.replace(budget_.recipe, threads=threads))
    if report_only:
        if seeds is not None:
            raise ValueError("report_only trains no seed: leave seeds out")
        if not any(out.glob("seed*/result.json")):
            raise SystemExit(f"{out} holds no finished seed (seed*/result.json): nothing to report")
        seeds = ()
    seeds = tuple(seeds) if seeds is not None else budget_.seeds
    out.mkdir(parents=True, exist_ok=True)
    identity_file = out / "budget.json"
    identity = budget_.identity()
    with exclusive(out / ".lock"):  # what every seed shares: one writer at a time
        for folder, flag in ((out, "--out"), (keep, "--keep")):
            changed = budget_differences(folder / "budget.json", identity) if folder is not None else []
            if changed:
                raise SystemExit(f"{folder} holds results of another budget (differs in {changed}); use another {flag}")
        if not identity_file.exists():
            identity_file.write_text(json.dumps(identity, indent=2) + "\n")
        keep_copy(identity_file, out, keep)
        write_heldout(budget_, out / "heldout", log)
        heldouts = {split: HeldOut(out / "heldout", split) for split in budget_.heldout_splits}
        references = {}
        for split, heldout in heldouts.items():
            # Seconds of scoring, redone every time so that a folder from an older version gets today's fields.
            references[split] = reference_scores(heldout, heldout.items(EVAL_TASKS))
            (out / "heldout" / f"{split}.reference_scores.json").write_text(json.dumps(references[split], indent=2) + "\n")
    if reference_only:
        return {split: describe_heldout(heldouts[split], references[split]) for split in heldouts}
    for seed in seeds:
        log(f"seed {seed}")
        run_seed(budget_, seed, out, heldouts, log, arms, keep)
    with exclusive(out / ".lock"):  # seeds finishing in parallel commands write the report in turn
        # Every finished seed of the folder counts: seeds added by a later command join the tables.
        results = sorted((json.loads(path.read_text()) for path in out.glob("seed*/result.json")), key=lambda r: r["seed"])
        if not results:
            log(f"no seed of {out} has finished all its arms yet: no report")
            return None
        # The reference answers' lengths in tokens, by the first finished seed's tokenizer.
        tokenizer_dir = out / f"seed{results[0]['seed']}" / "tokenizer"
        write_tokenizer(dataclasses.replace(budget_.recipe, seed=results[0]["seed"]), tokenizer_dir)
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        tables = {split: build_tables(results, split, references[split], reference_answer_tokens(heldout, tokenizer))
                  for split, heldout in heldouts.items()}
        curve_split = next(iter(heldouts))
        rows = curve_rows(results)
        fo1_phases = results[0]["arms"]["fo1"]["phases"]
        png = write_curve(rows, out, alignment_steps=fo1_phases[0]["steps"] if len(fo1_phases) > 1 else None,
                          fo1_ceiling=tables[curve_split]["table1"]["ceilings"]["fo1"]["map"])
        machine = machine_info()
        wall = time.perf_counter() - start
        base_skills = base_skills_table(results)
        compute_by_seed = {r["seed"]: seed_compute(r) for r in results}
        report = render_report(budget_, tables, base_skills, png, wall, machine, compute_by_seed)
        (out / "report.md").write_text(report)
        summary = {"budget": budget_.to_dict(), "seeds": [r["seed"] for r in results], "seeds_run_now": list(seeds),
                   "machine": machine, "wall_seconds": round(wall, 1), "compute_by_seed": compute_by_seed,
                   "reference": references, "per_seed": results, "tables": tables, "base_skills": base_skills,
                   "curve": rows}
        (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(report, flush=True)
    return summary


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _seeds(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds takes integers separated by commas, got {text!r}") from None
    if not seeds:
        raise argparse.ArgumentTypeError("--seeds needs at least one seed")
    return seeds


def _arms(text: str) -> tuple[str, ...]:
    arms = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [name for name in arms if name not in ARMS_BY_NAME]
    if not arms or unknown:
        raise argparse.ArgumentTypeError(f"--arms takes arm names separated by commas ({', '.join(ARMS_BY_NAME)}), got {text!r}")
    return arms


def main(argv: Sequence[str] | None = None) -> dict[str, Any] | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", choices=("tiny", "small", "full"), default="small")
    parser.add_argument("--seeds", type=_seeds, default=None, help="comma-separated, e.g. 0,1,2 (default: the budget's)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (a rerun resumes it)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--arms", type=_arms, default=None,
                        help=f"comma-separated arms to train (default: all; {','.join(ARMS_BY_NAME)}): "
                             "split a seed over parallel commands")
    parser.add_argument("--keep", type=Path, default=None,
                        help="also copy budget.json and every finished seed's and arm's result.json here "
                             "(e.g. benchmarks/results/reproduce-full: what a lost --out folder can be rebuilt from)")
    modes = parser.add_mutually_exclusive_group()
    modes.add_argument("--reference-only", action="store_true",
                       help="only write the held-out split and print what its reference answers score")
    modes.add_argument("--report-only", action="store_true",
                       help="train nothing: rebuild the report from the seed*/result.json files in --out")
    args = parser.parse_args(argv)
    if args.report_only and (args.seeds is not None or args.arms is not None):
        parser.error("--report-only trains no seed: leave --seeds and --arms out")
    return run(budget(args.budget), args.out, seeds=args.seeds, threads=args.threads,
               reference_only=args.reference_only, report_only=args.report_only, arms=args.arms, keep=args.keep)


if __name__ == "__main__":
    main()
