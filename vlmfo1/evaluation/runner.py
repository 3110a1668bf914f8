"""The model runner: a benchmark's items through an FO1 model, predictions to a file, then scoring.

    from vlmfo1.evaluation.runner import run_evaluation
    report = run_evaluation("shapeworld", "shapeworld_out", "shapeworld", split="val", out_dir="eval/sw")

Per item (the contract of `vlmfo1.evaluation.tasks`): the boxes the model gets are the item's own
`regions` (named by the prompt as ``<region0>``, ...) followed by its proposals: the precomputed
ones when the item carries them (ShapeWorld records, upstream's proposal files attached with
``proposals=``), else the proposer's (tasks that use proposals), else none. More than the model's
100 region tokens: the proposals with the highest scores are kept (SPEC §3: top-100 by detector
score) and the item's record says how many were dropped. The item's prompt is asked with greedy
decoding through `FO1Pipeline.run` (batched across items, left padding; items on the same image and
boxes share the encoded prefix), the answer is parsed with `vlmfo1.parsing` and the task turns it
into a prediction record.

Outputs in `out_dir`:

* ``predictions.jsonl``: one record per item, appended (and flushed) as soon as it is made; besides
  the task's fields, ``warnings`` (what the parser had to repair, answers cut off at
  ``max_new_tokens``), ``num_regions`` and ``proposals_dropped``;
* ``metrics.json``: the task's report (`Task.score` of the whole predictions file) plus
  ``score_mode``, ``run`` (settings, items predicted now / found done) and ``answers`` (how many
  answers needed repairs, labels that are no category, ...);
* ``coco_results.json`` (detection tasks): the COCO results list of every item;
* ``run.json``: the settings that define the predictions, checked when a run resumes.

Resuming: items whose id is already in ``predictions.jsonl`` are skipped. A last line without its
newline (the process was killed while writing it) is cut off and its item answered again. A run
whose settings (task, data, split, model, proposer, proposal file, score mode, max_new_tokens)
differ from ``run.json`` refuses to add to the file (``resume=False`` starts it afresh).

Score modes (`vlmfo1.pipeline.scoring`): each region an answer names gets the proposer's score
(``proposal``), the probability the model gave its region token (``llm``) or their product
(``combined``); detection results carry that score.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from vlmfo1.evaluation.items import EvalDataset, EvalItem
from vlmfo1.evaluation.predictions import append_prediction_record, read_prediction_records
from vlmfo1.evaluation.tasks import DetectionTask, Task, get_task
from vlmfo1.parsing import ParsedAnswer, parse_answer, was_cut_off

PREDICTIONS_FILE = "predictions.jsonl"
METRICS_FILE = "metrics.json"
COCO_RESULTS_FILE = "coco_results.json"
RUN_FILE = "run.json"
DEFAULT_MODEL = "shapeworld"
DEFAULT_PROPOSER = "selective-search"
# Keys of run.json that must match for a run to add to an existing predictions file.
IDENTITY_KEYS = ("task", "data", "split", "model", "model_fingerprint", "proposer", "proposals", "score_mode", "max_new_tokens")


@dataclass
class ItemAnswer:
    """The model's answer to one item, with the boxes it was given."""

    answer: str  # as generated, control tokens removed (region tokens and tags kept)
    parsed: ParsedAnswer  # parsed with the boxes given; each named region scored per the score mode
    boxes: list[list[float]]  # the boxes the model got (regions, then proposals), clipped to the image
    warnings: list[str]  # parser repairs and cut-off answers
    proposals_dropped: int  # proposals beyond the model's region capacity (lowest scores)


class ItemProposer:
    """Proposals for items that carry none: a proposer spec or callable, built on first use (a
    benchmark whose items all carry proposals never imports a detector)."""

    def __init__(self, proposer: str | Callable | None):
        self.spec = proposer
        self._built: Any = None

    @property
    def name(self) -> str | None:
        if self.spec is None or isinstance(self.spec, str):
            return self.spec
        return type(self.spec).__name__

    def __call__(self, image, item: EvalItem, dataset: EvalDataset) -> tuple[list[list[float]], list[float] | None]:
        from vlmfo1.pipeline.pipeline import proposals_from_output, resolve_proposer
        from vlmfo1.proposals import Proposer

        if self.spec is None:
            raise ValueError(f"item {item.id!r} has no proposals and no proposer was given")
        if self._built is None:
            self._built = resolve_proposer(self.spec)
        if isinstance(self._built, Proposer):
            # Text-prompted proposers are asked for what the item asks about, when that is known.
            labels = item.meta.get("labels") or [c["name"] for c in dataset.categories or []]
            prompted = labels if labels and self._built.accepts_prompts else None
            output = self._built(image, image_id=item.image, prompts=prompted)
        else:
            output = self._built(image)
        proposals = proposals_from_output(output, self.name or "proposer")
        return proposals.boxes, proposals.scores


def answer_items(
    pipeline,
    items: Sequence[EvalItem],
    dataset: EvalDataset | None = None,
    proposer: ItemProposer | None = None,
    uses_proposals: bool = True,
    score_mode: str = "proposal",
) -> list[ItemAnswer]:
    """Greedy answers of `pipeline` (an `FO1Pipeline`) to each item's prompt, one `FO1Pipeline.run`
    for all of them (its generator batches them `batch_size` at a time)."""
    from vlmfo1.pipeline import TaskRequest
    from vlmfo1.pipeline.scoring import check_score_mode
    from vlmfo1.processing.image_processing import load_image

    check_score_mode(score_mode)
    dataset = dataset or EvalDataset(task="", items=list(items))
    requests, dropped = [], []
    for item in items:
        image = load_image(item.image)
        if item.proposals is not None:
            proposals, scores = item.proposals, item.proposal_scores
        elif uses_proposals:
            proposals, scores = (proposer or ItemProposer(None))(image, item, dataset)
        else:
            proposals, scores = [], None
        proposals, scores, cut = _fit(item, list(proposals), scores, pipeline.max_regions)
        boxes = list(item.regions) + proposals
        box_scores = [1.0] * len(item.regions) + (list(scores) if scores is not None else [1.0] * len(proposals))
        requests.append(TaskRequest("ask", image, {"question": item.prompt, "boxes": boxes, "scores": box_scores}))
        dropped.append(cut)
    try:
        results = pipeline.run(requests)
    except ValueError as error:
        raise ValueError(f"items {items[0].id!r} .. {items[-1].id!r}: {error}") from error
    return [_item_answer(result, score_mode, cut) for result, cut in zip(results, dropped)]


def _fit(item: EvalItem, proposals: list, scores, capacity: int) -> tuple[list, list | None, int]:
    """The proposals that fit next to the item's regions: the highest-scoring ones, in their order."""
    room = capacity - len(item.regions)
    if room < 0:
        raise ValueError(f"item {item.id!r} names {len(item.regions)} regions; the model holds {capacity}")
    if scores is not None and len(scores) != len(proposals):
        raise ValueError(f"item {item.id!r}: {len(scores)} proposal scores for {len(proposals)} proposals")
    if len(proposals) <= room:
        return proposals, scores, 0
    ranked = list(range(len(proposals)))
    if scores is not None:
        ranked.sort(key=lambda k: -float(scores[k]))  # stable: equal scores keep the file's order
    kept = sorted(ranked[:room])
    return [proposals[k] for k in kept], None if scores is None else [scores[k] for k in kept], len(proposals) - room


def _item_answer(result, score_mode: str, proposals_dropped: int) -> ItemAnswer:
    """Re-parses the pipeline's answer with the boxes it used, and gives each named region the
    score of the run's mode, from the proposal and LLM scores the pipeline recorded."""
    from vlmfo1.pipeline.scoring import select_score

    answer = result.raw_answers[0]
    boxes = [list(box) for box in result.proposals.boxes]
    parsed = parse_answer(answer, boxes, result.proposals.scores)
    grounded = {(region.label, region.index): region for region in result.detections}
    mentioned = {region.index: region for region in result.mentions}
    for group in parsed.groups:
        for ref in group.regions:
            ref.score = _score(grounded.get((group.label, ref.index)), score_mode, select_score, answer)
    for ref in parsed.mentions:
        ref.score = _score(mentioned.get(ref.index), score_mode, select_score, answer)
    return ItemAnswer(answer, parsed, boxes, list(result.warnings), proposals_dropped)


def _score(region, score_mode: str, select_score, answer: str) -> float:
    if region is None:  # the pipeline parsed the same text; a region it lacks is a bug, not bad output
        raise RuntimeError(f"the pipeline's result lacks a region of the answer {answer!r}")
    return select_score(score_mode, region.proposal_score, region.llm_score)


def run_evaluation(
    task: str | Task,
    data: str | os.PathLike | EvalDataset,
    model: Any = DEFAULT_MODEL,
    *,
    out_dir: str | os.PathLike,
    proposer: str | Callable | None = DEFAULT_PROPOSER,
    proposals: str | os.PathLike | None = None,
    images: str | os.PathLike | None = None,
    split: str | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    max_new_tokens: int = 256,
    score_mode: str = "proposal",
    device: str = "cpu",
    dtype: str | None = None,
    resume: bool = True,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Answers every item of a benchmark with `model` and scores the answers (see the module docstring).

    `data`: the benchmark's files (as `vlmfo1 eval score --gt` takes them), or an `EvalDataset`.
    `model`: a model folder, a bundled model's name, or an `FO1Pipeline` (its model and processor
    are used; `device`/`dtype` are then ignored). `proposer`: a proposer spec, a callable image ->
    proposals, or None; used only for items without proposals of their own. `proposals`: upstream's
    precomputed proposal file (JSONL), attached to the items by image id. Returns the report also
    written to ``metrics.json``.
    """
    from vlmfo1.pipeline.scoring import check_score_mode

    task_object = get_task(task) if isinstance(task, str) else task
    check_score_mode(score_mode)
    if batch_size < 1 or max_new_tokens < 1:
        raise ValueError(f"batch_size and max_new_tokens must be at least 1, got {batch_size} and {max_new_tokens}")
    dataset = _load(task_object, data, images, split, proposals).limit(limit)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    predictions_path = out / PREDICTIONS_FILE
    item_proposer = ItemProposer(proposer)
    settings = {
        "task": task_object.name,
        "data": dataset.source,
        "split": split,
        "model": _model_name(model),
        "model_fingerprint": _model_fingerprint(model),
        # Only when some item needs it: the proposer of a benchmark with its own proposals is irrelevant.
        "proposer": item_proposer.name if task_object.uses_proposals and any(i.proposals is None for i in dataset.items) else None,
        "proposals": None if proposals is None else str(proposals),
        "score_mode": score_mode,
        "max_new_tokens": max_new_tokens,
    }
    done = _prepare_predictions_file(out, settings, resume, log)
    todo = [item for item in dataset.items if item.id not in done]

    start = time.perf_counter()
    if todo:
        pipeline = _pipeline(model, score_mode, max_new_tokens, batch_size, device, dtype)
        _answer_all(task_object, dataset, todo, pipeline, item_proposer, score_mode, predictions_path, progress)
    seconds = time.perf_counter() - start

    report = task_object.score(dataset, task_object.read_predictions(predictions_path))
    records = read_prediction_records(predictions_path)
    mine = [records[item.id] for item in dataset.items if item.id in records]
    report["score_mode"] = score_mode
    report["run"] = {
        **{key: value for key, value in settings.items() if key != "model_fingerprint"},
        "limit": limit,
        "batch_size": batch_size,
        "device": device if isinstance(model, (str, os.PathLike)) else None,
        "dtype": dtype,
        "num_predicted": len(todo),
        "num_resumed": len(dataset.items) - len(todo),
        "seconds": round(seconds, 2),
    }
    report["answers"] = _answer_summary(mine)
    report["files"] = {"predictions": str(predictions_path), "metrics": str(out / METRICS_FILE)}
    if isinstance(task_object, DetectionTask):
        results = [detection for record in mine for detection in record.get("detections") or []]
        (out / COCO_RESULTS_FILE).write_text(json.dumps(results) + "\n", encoding="utf-8")
        report["files"]["coco_results"] = str(out / COCO_RESULTS_FILE)
    (out / METRICS_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


def _load(task: Task, data, images, split, proposals) -> EvalDataset:
    if isinstance(data, EvalDataset):
        if images is not None or split is not None:
            raise ValueError("images and split are for reading a dataset's files; this dataset is already loaded")
        dataset = data
    else:
        dataset = task.load(data, images, split)
    if proposals is not None:
        from vlmfo1.evaluation.adapters.proposals import attach_proposals, load_proposal_file

        dataset = attach_proposals(dataset, load_proposal_file(proposals), source=str(proposals))
    return dataset


def _answer_all(task: Task, dataset: EvalDataset, todo: list[EvalItem], pipeline, proposer: ItemProposer,
                score_mode: str, predictions_path: Path, progress: bool) -> None:
    from tqdm import tqdm

    step = pipeline.generator.batch_size
    with tqdm(total=len(todo), desc=f"eval {task.name}", unit="item", disable=not progress) as bar:
        for start in range(0, len(todo), step):
            batch = todo[start : start + step]
            answers = answer_items(pipeline, batch, dataset, proposer, task.uses_proposals, score_mode)
            for item, answer in zip(batch, answers):
                record = task.make_prediction(dataset, item, answer.answer, answer.parsed)
                record.update(warnings=answer.warnings, num_regions=len(answer.boxes), proposals_dropped=answer.proposals_dropped)
                append_prediction_record(predictions_path, record)
            bar.update(len(batch))


def _answer_summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    """What the answers needed: repairs by the parser, cut-off answers, labels that are no category."""
    warned = [record for record in records if record.get("warnings")]
    examples = list(dict.fromkeys(f"{record['id']}: {w}" for record in warned for w in record["warnings"]))[:5]
    return {
        "num_with_warnings": len(warned),
        "num_cut_off": sum(was_cut_off(record["warnings"]) for record in warned),
        "num_unknown_labels": sum(len(record.get("unknown_labels") or []) for record in records),
        "num_proposals_truncated": sum(bool(record.get("proposals_dropped")) for record in records),
        "warning_examples": examples,
    }


def _prepare_predictions_file(out: Path, settings: dict[str, Any], resume: bool, log: Callable[[str], None]) -> set[str]:
    """Ids already predicted (none when not resuming), after checking the run's settings and
    cutting off a torn last line."""
    predictions_path, run_path = out / PREDICTIONS_FILE, out / RUN_FILE
    if not resume or not predictions_path.exists():
        predictions_path.write_text("", encoding="utf-8")
        run_path.write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
        return set()
    previous = json.loads(run_path.read_text(encoding="utf-8")) if run_path.is_file() else None
    if previous is None:
        raise ValueError(f"{predictions_path} exists but {run_path} does not: its settings are unknown; "
                         "use another output folder or start afresh (resume=False / --no-resume)")
    differing = [key for key in IDENTITY_KEYS if previous.get(key) != settings.get(key)]
    if differing:
        changes = ", ".join(f"{key}: {previous.get(key)!r} -> {settings.get(key)!r}" for key in differing)
        raise ValueError(f"{out} holds predictions of another run ({changes}); use another output folder "
                         "or start afresh (resume=False / --no-resume)")
    content = predictions_path.read_bytes()
    if content and not content.endswith(b"\n"):
        complete = content.rfind(b"\n") + 1
        os.truncate(predictions_path, complete)
        log(f"{predictions_path}: dropped an unfinished last line ({len(content) - complete} bytes); its item is redone")
    done = set(read_prediction_records(predictions_path))
    if done:
        log(f"{predictions_path}: resuming, {len(done)} items already predicted")
    return done


def _pipeline(model, score_mode: str, max_new_tokens: int, batch_size: int, device: str, dtype: str | None):
    from vlmfo1.pipeline import FO1Pipeline

    settings = dict(proposer=None, score=score_mode, max_new_tokens=max_new_tokens, batch_size=batch_size)
    if isinstance(model, FO1Pipeline):
        return FO1Pipeline(model.model, model.processor, **settings)
    return FO1Pipeline.from_pretrained(model, device=device, dtype=dtype, **settings)


def _model_name(model) -> str:
    if isinstance(model, (str, os.PathLike)):
        return str(model)
    return f"<in-memory {type(model).__name__}>"


def _model_fingerprint(model) -> str | None:
    """Names, sizes and modification times of a model folder's config and weight files: a model
    retrained into the same folder is another model."""
    if not isinstance(model, (str, os.PathLike)):
        return None
    from vlmfo1.pipeline.pipeline import resolve_model_path

    folder = resolve_model_path(model)
    digest = hashlib.blake2b(digest_size=8)
    for path in sorted(folder.iterdir()):
        if path.name == "config.json" or path.suffix in (".safetensors", ".bin"):
            stat = path.stat()
            digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()


__all__ = ["ItemAnswer", "ItemProposer", "answer_items", "run_evaluation"]
