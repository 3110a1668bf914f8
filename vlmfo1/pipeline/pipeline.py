"""FO1Pipeline: model + processor + proposer; one image and a question in, grounded answers out.

    from vlmfo1.pipeline import FO1Pipeline
    pipe = FO1Pipeline.from_pretrained("shapeworld")          # the bundled demo model
    result = pipe.detect("scene.png", ["red circle", "blue star"])
    result.boxes_by_label()      # {"red circle": [[x1, y1, x2, y2], ...], ...}
    result.to_json()             # see vlmfo1.pipeline.results

Every task method takes one image (path, PIL image, array or bytes) and returns an `FO1Result`.
Regions come from the pipeline's proposer unless `boxes` (xyxy, original pixels; optional
`scores`) are given. `run` answers many task requests together: calls on different images are
batched, and calls on the same image and regions (several questions of one request, or several
requests on one image) share its encoded prefix (see `generation`).

More than `max_regions` (100) regions: grounded tasks (detect, refer, count, detect_like,
detect_everything) and per-region tasks (caption, ocr) split them into chunks and merge
(`chunking`); free-text tasks (ask, grounded_caption, reason, chat) cannot merge answers across
chunks and raise a ValueError.
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from PIL import Image

from vlmfo1 import prompts
from vlmfo1.parsing import CUT_OFF_WARNING, ParsedAnswer, decode_and_parse
from vlmfo1.pipeline.chunking import DEFAULT_DEDUPE_IOU, ChunkedRegion, merge_chunk_regions, plan_chunks
from vlmfo1.pipeline.generation import FO1Generator, Generated, ModelCall
from vlmfo1.pipeline.results import FO1Result, ProposalSet, Region, RegionAnswer
from vlmfo1.pipeline.scoring import GrammarTokenIds, RegionProbabilities, check_score_mode, region_emissions, select_score
from vlmfo1.processing.image_processing import ImageInput, clip_boxes, load_image

BUNDLED_MODELS = {"shapeworld": Path(__file__).resolve().parents[1] / "assets" / "shapeworld-fo1"}
DEFAULT_PROPOSER = "selective-search"

# Each task's arguments (besides `boxes` and `scores`, which every task but chat-without-image takes):
# (required, optional).
TASK_ARGUMENTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "detect": (("categories",), ("per_category",)),
    "refer": (("expression",), ()),
    "count": (("category",), ()),
    "caption": ((), ("detailed",)),
    "ocr": ((), ()),
    "ask": (("question",), ()),
    "detect_like": (("reference_box",), ()),
    "detect_everything": ((), ()),
    "grounded_caption": ((), ()),
    "reason": (("question",), ()),
    "chat": (("messages",), ()),
}
TASKS = tuple(TASK_ARGUMENTS)
# How a task's answers are combined (see `_Plan`).
_GROUNDED, _PER_REGION, _FREE = "grounded", "per_region", "free"


def resolve_model_path(model: str | os.PathLike) -> Path:
    """A bundled model's name ("shapeworld") or a model folder -> the folder; a clear error if absent."""
    name = str(model)
    if name in BUNDLED_MODELS:
        path = BUNDLED_MODELS[name]
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"the bundled {name!r} model is not in this installation (expected at {path}); "
                "pass a model folder instead (e.g. --model PATH)"
            )
        return path
    path = Path(model)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no model at {path} (a model folder holds config.json); bundled models: {sorted(BUNDLED_MODELS)}")
    return path


def parse_categories(categories: str | Sequence[str]) -> list[str]:
    """"red circle, blue star" (or ";"-separated) or a list -> ["red circle", "blue star"]."""
    items = re.split(r"[;,]", categories) if isinstance(categories, str) else list(categories)
    names = [str(item).strip() for item in items if str(item).strip()]
    if not names:
        raise ValueError(f"no category names in {categories!r}")
    return names


@dataclass
class TaskRequest:
    """One task on one image, for `FO1Pipeline.run`: `args` are the task method's keyword arguments."""

    task: str
    image: ImageInput | None
    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Plan:
    """The model calls of one task request and how to turn their answers into an `FO1Result`."""

    task: str
    kind: str  # _GROUNDED | _PER_REGION | _FREE
    image_size: tuple[int, int]
    proposals: ProposalSet
    num_chunks: int = 1
    calls: list[ModelCall] = field(default_factory=list)
    queries: list[str] = field(default_factory=list)  # per call: its task text (chat: the last user turn)
    call_regions: list[list[int]] = field(default_factory=list)  # per call: the index in `proposals` of each region
    call_chunk: list[int] = field(default_factory=list)  # per call: its chunk
    label_overrides: list[str | None] = field(default_factory=list)  # per call (per-category detection)
    targets: list[int | None] = field(default_factory=list)  # per call: the region asked about
    asked_labels: list[str] = field(default_factory=list)  # detection: the categories asked
    warnings: list[str] = field(default_factory=list)


class FO1Pipeline:
    def __init__(
        self,
        model,
        processor,
        proposer: Callable[[Image.Image], Any] | str | None = DEFAULT_PROPOSER,
        score: str = "proposal",
        max_new_tokens: int = 256,
        batch_size: int = 8,
        reuse_prefix: bool = True,
        dedupe_iou: float = DEFAULT_DEDUPE_IOU,
    ):
        """`proposer`: a callable image -> proposals (anything with `.boxes` and optional `.scores`,
        `.labels`, `.masks`), a registered proposer name, or None (then every call needs `boxes`).
        `score`: "proposal", "llm" or "combined" (`scoring`)."""
        self.model = model.eval()
        self.processor = processor
        self.proposer = resolve_proposer(proposer)
        self.proposer_name = proposer if isinstance(proposer, str) else type(proposer).__name__
        self.score_mode = check_score_mode(score)
        self.dedupe_iou = dedupe_iou
        self.generator = FO1Generator(model, processor, max_new_tokens, batch_size, reuse_prefix)
        self.grammar_ids = GrammarTokenIds.from_tokenizer(processor.tokenizer, processor.max_regions)

    @classmethod
    def from_pretrained(
        cls,
        model: str | os.PathLike = "shapeworld",
        proposer: Callable[[Image.Image], Any] | str | None = DEFAULT_PROPOSER,
        device: str = "cpu",
        dtype: str | None = None,
        **kwargs,
    ) -> "FO1Pipeline":
        """Loads a model folder (ours or upstream's layout) or a bundled model by name. `device`:
        "cpu", "cuda", "cuda:1", ... or "auto" (the GPU when there is one)."""
        import torch

        from vlmfo1.modeling.modeling_fo1 import FO1ForConditionalGeneration
        from vlmfo1.processing.processing_fo1 import FO1Processor

        dtypes = {"auto": None, None: None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
        if dtype not in dtypes:
            raise ValueError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        path = resolve_model_path(model)
        loaded = FO1ForConditionalGeneration.from_pretrained(path, **({"dtype": dtypes[dtype]} if dtypes[dtype] else {}))
        return cls(loaded.to(device), FO1Processor.from_pretrained(path), proposer=proposer, **kwargs)

    @property
    def max_regions(self) -> int:
        return self.processor.max_regions

    # -- tasks -------------------------------------------------------------------------------
    def detect(self, image: ImageInput, categories: str | Sequence[str], *, boxes=None, scores=None, per_category: bool = False) -> FO1Result:
        """Objects of the given categories. One prompt for all categories (as upstream), or with
        `per_category` one prompt each (sharing the encoded image); labels are then the category asked."""
        return self.run([TaskRequest("detect", image, dict(categories=categories, boxes=boxes, scores=scores, per_category=per_category))])[0]

    def refer(self, image: ImageInput, expression: str, *, boxes=None, scores=None) -> FO1Result:
        """The object(s) a referring expression names; the first detection is the best (REC top-1)."""
        return self.run([TaskRequest("refer", image, dict(expression=expression, boxes=boxes, scores=scores))])[0]

    def count(self, image: ImageInput, category: str, *, boxes=None, scores=None) -> FO1Result:
        return self.run([TaskRequest("count", image, dict(category=category, boxes=boxes, scores=scores))])[0]

    def caption(self, image: ImageInput, boxes=None, *, detailed: bool = False, scores=None) -> FO1Result:
        """One description per box (`region_answers`); all boxes are regions of every prompt."""
        return self.run([TaskRequest("caption", image, dict(boxes=boxes, detailed=detailed, scores=scores))])[0]

    def ocr(self, image: ImageInput, boxes=None, *, scores=None) -> FO1Result:
        """The text in each box (`region_answers`)."""
        return self.run([TaskRequest("ocr", image, dict(boxes=boxes, scores=scores))])[0]

    def ask(self, image: ImageInput, question: str, boxes=None, *, scores=None) -> FO1Result:
        """A free question; it may refer to regions as `<regionK>` (K indexes `boxes`)."""
        return self.run([TaskRequest("ask", image, dict(question=question, boxes=boxes, scores=scores))])[0]

    def detect_like(self, image: ImageInput, reference_box: Sequence[float], *, boxes=None, scores=None) -> FO1Result:
        """Other objects of the reference object's category. The reference box becomes region 0
        (and is in every chunk); the other regions follow."""
        return self.run([TaskRequest("detect_like", image, dict(reference_box=reference_box, boxes=boxes, scores=scores))])[0]

    def detect_everything(self, image: ImageInput, *, boxes=None, scores=None) -> FO1Result:
        """Every object the model recognises, with the labels it gives them."""
        return self.run([TaskRequest("detect_everything", image, dict(boxes=boxes, scores=scores))])[0]

    def grounded_caption(self, image: ImageInput, *, boxes=None, scores=None) -> FO1Result:
        return self.run([TaskRequest("grounded_caption", image, dict(boxes=boxes, scores=scores))])[0]

    def reason(self, image: ImageInput, question: str, *, boxes=None, scores=None) -> FO1Result:
        """R1-style region reasoning: `think` holds the thinking, `answer` the final answer."""
        return self.run([TaskRequest("reason", image, dict(question=question, boxes=boxes, scores=scores))])[0]

    def chat(self, messages: Sequence[Mapping[str, str]], image: ImageInput | None = None, boxes=None, *, scores=None) -> FO1Result:
        """Any chat (`[{"role": "user", "content": ...}, ...]`); with an image, its regions follow it
        (at the start of the first user turn, or where that turn writes `<image>`)."""
        return self.run([TaskRequest("chat", image, dict(messages=messages, boxes=boxes, scores=scores))])[0]

    # -- many requests -----------------------------------------------------------------------
    def run(self, requests: Sequence[TaskRequest]) -> list[FO1Result]:
        """Answers task requests together (batched across images; prefixes shared within a request)."""
        plans = [self._plan(request) for request in requests]
        calls = [call for plan in plans for call in plan.calls]
        generations = self.generator.generate(calls)
        results, start = [], 0
        for plan in plans:
            results.append(self._finish(plan, generations[start : start + len(plan.calls)]))
            start += len(plan.calls)
        return results

    # -- planning ----------------------------------------------------------------------------
    def _plan(self, request: TaskRequest) -> _Plan:
        args = _check_arguments(request)
        boxes, scores = args.pop("boxes", None), args.pop("scores", None)
        if request.task == "chat":
            return self._plan_chat(request, args["messages"], boxes, scores)
        if request.image is None:
            raise ValueError(f"task {request.task!r} needs an image")
        image = load_image(request.image)
        task = request.task
        if task == "detect_like":
            proposals = self._regions(image, request.image, boxes, scores, reference=args["reference_box"])
            return self._plan_prompts(task, _GROUNDED, image, proposals, [prompts.visual_prompt_detection_prompt([0])], pinned=[0])
        asked = {
            "detect": lambda: parse_categories(args["categories"]),
            "count": lambda: [args["category"]],
            "refer": lambda: [args["expression"]],
        }.get(task, lambda: None)()
        proposals = self._regions(image, request.image, boxes, scores, prompts_for_proposer=asked)
        if task == "detect":
            categories = asked
            if args.get("per_category"):
                plan = self._plan_prompts(task, _GROUNDED, image, proposals, [prompts.detection_prompt(c) for c in categories], labels=categories)
            else:
                plan = self._plan_prompts(task, _GROUNDED, image, proposals, [prompts.detection_prompt(categories)])
            plan.asked_labels = categories
            return plan
        if task == "refer":
            return self._plan_prompts(task, _GROUNDED, image, proposals, [prompts.detection_prompt(args["expression"])])
        if task == "count":
            return self._plan_prompts(task, _GROUNDED, image, proposals, [prompts.counting_prompt(args["category"])])
        if task == "detect_everything":
            return self._plan_prompts(task, _GROUNDED, image, proposals, [prompts.detect_everything_prompt()])
        if task in ("caption", "ocr"):
            make_prompt = prompts.ocr_prompt if task == "ocr" else (
                prompts.detailed_caption_prompt if args.get("detailed") else prompts.brief_caption_prompt
            )
            return self._plan_per_region(task, image, proposals, make_prompt)
        text = {
            "ask": lambda: args["question"],
            "grounded_caption": prompts.grounded_caption_prompt,
            "reason": lambda: prompts.reasoning_prompt(args["question"]),
        }[task]()
        self._check_fits(task, proposals)
        return self._plan_prompts(task, _FREE, image, proposals, [text])

    def _plan_prompts(
        self, task, kind, image, proposals, texts, labels: Sequence[str] | None = None, pinned: Sequence[int] = ()
    ) -> _Plan:
        """Every text asked on every chunk of the regions."""
        chunks = plan_chunks(len(proposals), self.max_regions, pinned) if len(proposals) else [[]]
        plan = _Plan(task, kind, image.size, proposals, num_chunks=len(chunks))
        for chunk_number, chunk in enumerate(chunks):
            for k, text in enumerate(texts):
                _add_call(plan, image, chunk, chunk_number, text, label=labels[k] if labels else None)
        if len(chunks) > 1:
            plan.warnings.append(
                f"{len(proposals)} regions are more than the model's {self.max_regions}: asked in {len(chunks)} chunks and merged"
            )
        return plan

    def _plan_per_region(self, task, image, proposals, make_prompt) -> _Plan:
        """One prompt per region, asked in the chunk that holds it."""
        if not len(proposals):
            raise ValueError(f"{task} needs at least one box")
        chunks = plan_chunks(len(proposals), self.max_regions)
        plan = _Plan(task, _PER_REGION, image.size, proposals, num_chunks=len(chunks))
        for chunk_number, chunk in enumerate(chunks):
            for local, target in enumerate(chunk):
                _add_call(plan, image, chunk, chunk_number, make_prompt([local]), target=target)
        return plan

    def _plan_chat(self, request: TaskRequest, messages, boxes, scores) -> _Plan:
        messages = [dict(m) for m in messages]
        if not any(m.get("role") == "user" for m in messages):
            raise ValueError("chat needs at least one user message")
        if request.image is None:
            if boxes is not None and len(boxes):
                raise ValueError("boxes need an image")
            # A text-only chat: no image, no regions (the processor renders no vision tokens).
            image, proposals = None, ProposalSet([], None)
            size = (0, 0)
        else:
            image = load_image(request.image)
            proposals = self._regions(image, request.image, boxes, scores)
            self._check_fits("chat", proposals)
            size = image.size
        plan = _Plan("chat", _FREE, size, proposals)
        _add_call(plan, image, list(range(len(proposals))), 0, messages)
        return plan

    def _check_fits(self, task: str, proposals: ProposalSet) -> None:
        if len(proposals) > self.max_regions:
            raise ValueError(
                f"{task}: {len(proposals)} regions given but the model holds {self.max_regions}, and a free-text "
                "answer cannot be merged across chunks; pass at most that many boxes (or a proposer with a lower top-k)"
            )

    def _regions(
        self,
        image: Image.Image,
        source: ImageInput,
        boxes,
        scores,
        prompts_for_proposer: Sequence[str] | None = None,
        reference: Sequence[float] | None = None,
    ) -> ProposalSet:
        """The proposer's regions, or the given boxes, clipped to the image; `reference` goes first.
        `source` (the caller's image input) names the image for proposers that look boxes up by path;
        text-prompted proposers get `prompts_for_proposer` (the categories asked)."""
        width, height = image.size
        if boxes is None:
            proposals = self._propose(image, source, prompts_for_proposer)
        else:
            proposals = ProposalSet(clip_boxes(boxes, width, height).tolist(), _check_scores(scores, len(boxes)))
        proposals.boxes = clip_boxes(proposals.boxes, width, height).tolist() if len(proposals) else []
        if reference is None:
            return proposals
        reference_box = clip_boxes([list(reference)], width, height).tolist()
        masks = proposals.masks
        if masks is not None:
            x1, y1, x2, y2 = (int(round(v)) for v in reference_box[0])
            box_mask = np.zeros((1, height, width), dtype=bool)
            box_mask[0, y1:y2, x1:x2] = True
            masks = np.concatenate([box_mask, np.asarray(masks, dtype=bool)])
        return ProposalSet(
            boxes=reference_box + proposals.boxes,
            scores=None if proposals.scores is None else [1.0] + proposals.scores,
            labels=None if proposals.labels is None else ["reference"] + proposals.labels,
            source=proposals.source,
            masks=masks,
        )

    def _propose(self, image: Image.Image, source: ImageInput, categories: Sequence[str] | None) -> ProposalSet:
        from vlmfo1.proposals import Proposer

        if self.proposer is None:
            raise ValueError("this pipeline has no proposer: pass boxes=[[x1, y1, x2, y2], ...]")
        if not isinstance(self.proposer, Proposer):
            return proposals_from_output(self.proposer(image), self.proposer_name)
        image_id = os.fspath(source) if isinstance(source, (str, os.PathLike)) else None
        prompted = categories if categories and self.proposer.accepts_prompts else None
        return proposals_from_output(self.proposer(image, image_id=image_id, prompts=prompted), self.proposer_name)

    # -- answers -----------------------------------------------------------------------------
    def _finish(self, plan: _Plan, generations: Sequence[Generated]) -> FO1Result:
        tokenizer = self.processor.tokenizer
        found: list[ChunkedRegion] = []
        mentions: dict[int, Region] = {}
        answers: list[str] = []
        raw_answers: list[str] = []
        region_answers: list[RegionAnswer] = []
        parsed_answers: list[ParsedAnswer] = []
        warnings = list(plan.warnings)
        several = len(plan.calls) > 1
        for k, generated in enumerate(generations):
            regions = plan.call_regions[k]
            parsed = decode_and_parse(
                tokenizer, generated.token_ids, boxes=[plan.proposals.boxes[i] for i in regions] or None,
                num_regions=len(regions),
            )
            parsed_answers.append(parsed)
            where = f"call {k} ({plan.queries[k]!r}): " if several else ""
            warnings += [where + w for w in parsed.warnings]
            if not generated.finished:
                warnings.append(f"{where}{CUT_OFF_WARNING}={self.generator.max_new_tokens}")
            probabilities = RegionProbabilities(region_emissions(generated.token_ids, generated.probabilities, tokenizer, self.grammar_ids))
            override = plan.label_overrides[k]
            for group in parsed.groups:
                if override is not None and group.label and group.label.lower() != override.lower():
                    warnings.append(f"{where}the answer labels its regions {group.label!r}; kept as the asked {override!r}")
                for ref in group.regions:
                    region = self._region(plan.proposals, regions[ref.index], override or group.label, probabilities.of(ref.index, group.label))
                    found.append(ChunkedRegion(region, plan.call_chunk[k]))
            for ref in parsed.mentions:
                index = regions[ref.index]
                region = self._region(plan.proposals, index, None, probabilities.of(ref.index, None))
                if index not in mentions or region.score > mentions[index].score:
                    mentions[index] = region
            answers.append(parsed.plain_text)
            raw_answers.append(parsed.clean_text)
            if plan.targets[k] is not None:
                target = plan.targets[k]
                region_answers.append(RegionAnswer(target, plan.proposals.boxes[target], parsed.plain_text, parsed.clean_text))

        detections, removed = merge_chunk_regions(found, self.dedupe_iou)
        if removed:
            warnings.append(f"{removed} region(s) named by more than one chunk (IoU >= {self.dedupe_iou}) merged")
        if plan.num_chunks > 1 and plan.task == "refer":
            detections.sort(key=lambda r: -r.score)
        if plan.asked_labels and not any(plan.label_overrides):
            asked = {label.lower() for label in plan.asked_labels}
            unknown = sorted({r.label for r in detections if (r.label or "").lower() not in asked})
            if unknown:
                warnings.append(f"labels not among the asked categories: {unknown}")
        count = None
        if plan.task == "count":
            if plan.num_chunks == 1:
                count = parsed_answers[0].count
            else:
                count = len(detections)
                warnings.append("count over several chunks is the number of merged regions, not the model's number")
        think = parsed_answers[0].think if plan.kind == _FREE else None
        return FO1Result(
            task=plan.task,
            image_size=plan.image_size,
            queries=plan.queries,
            answer="\n".join(answers),
            raw_answers=raw_answers,
            proposals=plan.proposals,
            detections=detections,
            mentions=list(mentions.values()),
            region_answers=region_answers,
            count=count,
            think=think,
            score_mode=self.score_mode,
            num_chunks=plan.num_chunks,
            warnings=warnings,
        )

    def _region(self, proposals: ProposalSet, index: int, label: str | None, llm_score: float | None) -> Region:
        proposal_score = None if proposals.scores is None else float(proposals.scores[index])
        return Region(
            index=index,
            box=list(proposals.boxes[index]),
            label=label,
            score=select_score(self.score_mode, proposal_score, llm_score),
            proposal_score=proposal_score,
            llm_score=llm_score,
        )


def _add_call(plan: _Plan, image, regions: list[int], chunk: int, text_or_messages, label=None, target=None) -> None:
    """Adds one model call on `regions` (indexes into plan.proposals) to a plan."""
    if isinstance(text_or_messages, str):
        messages, query = [{"role": "user", "content": text_or_messages}], text_or_messages
    else:
        messages = text_or_messages
        query = next(m["content"] for m in reversed(messages) if m.get("role") == "user")
    boxes = np.asarray(plan.proposals.boxes, dtype=np.float64).reshape(-1, 4)[regions]
    plan.calls.append(ModelCall(image, boxes, messages, _share_key(image, boxes)))
    plan.queries.append(query)
    plan.call_regions.append(regions)
    plan.call_chunk.append(chunk)
    plan.label_overrides.append(label)
    plan.targets.append(target)


def _share_key(image: Image.Image | None, boxes: np.ndarray) -> str | None:
    """Equal for calls on the same pixels and boxes, whichever request they come from: those calls
    can share the encoded prefix (`FO1Generator`)."""
    if image is None:
        return None
    digest = hashlib.blake2b(image.tobytes(), digest_size=16)
    digest.update(f"{image.mode}{image.size}".encode())
    digest.update(np.ascontiguousarray(boxes, dtype=np.float64).tobytes())
    return digest.hexdigest()


def _check_arguments(request: TaskRequest) -> dict[str, Any]:
    if request.task not in TASK_ARGUMENTS:
        raise ValueError(f"unknown task {request.task!r}; choose from {', '.join(TASKS)}")
    required, optional = TASK_ARGUMENTS[request.task]
    args = dict(request.args)
    missing = [name for name in required if args.get(name) is None]
    unknown = sorted(set(args) - set(required) - set(optional) - {"boxes", "scores"})
    if missing or unknown:
        problems = [f"missing {missing}"] * bool(missing) + [f"unknown {unknown}"] * bool(unknown)
        raise ValueError(
            f"task {request.task!r}: {'; '.join(problems)} argument(s); it takes {list(required + optional)} and boxes/scores"
        )
    return args


def _as_numpy(value):
    if value is None:
        return None
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _check_scores(scores, count: int) -> list[float] | None:
    if scores is None:
        return None
    values = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(values) != count:
        raise ValueError(f"{len(values)} scores given for {count} boxes")
    if not np.isfinite(values).all():
        raise ValueError(f"scores must be finite numbers, got {values.tolist()}")
    return values.tolist()


def proposals_from_output(output: Any, source: str) -> ProposalSet:
    """A proposer's output (anything with `.boxes`, optional `.scores`, `.labels`, `.masks`) as a ProposalSet."""
    if isinstance(output, ProposalSet):
        return output
    boxes = getattr(output, "boxes", None)
    if boxes is None:
        raise TypeError(f"the proposer returned {type(output).__name__}, which has no .boxes")
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = getattr(output, "scores", None)
    labels = getattr(output, "labels", None)
    return ProposalSet(
        boxes=boxes.tolist(),
        scores=_check_scores(scores, len(boxes)),
        labels=None if labels is None else [str(label) for label in labels],
        source=source,
        masks=_as_numpy(getattr(output, "masks", None)),
    )


def resolve_proposer(proposer: Callable[[Image.Image], Any] | str | None):
    """None, a callable (a `vlmfo1.proposals.Proposer` or any image -> proposals function), or a
    proposer spec for `vlmfo1.proposals.build_proposer` ("selective-search", "user:boxes.json", ...)."""
    if proposer is None or callable(proposer):
        return proposer
    if isinstance(proposer, str):
        from vlmfo1.proposals import build_proposer

        return build_proposer(proposer)
    raise TypeError(f"proposer must be a name, a callable or None, got {type(proposer).__name__}")
