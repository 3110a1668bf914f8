"""Task samples: what to ask about a scene and the exact answer, before any answer format is chosen.

A `TaskSample` names objects by their scene index. `formats.py` turns one sample into an FO1 record
(objects become `<regionK>` indexes into the proposal list) and into a coordinate record (objects
become pixel boxes in Qwen2.5-VL's JSON style), so both carry the same content.

Every answer is computed from the scene's geometry. Questions whose answer would be a judgement
call (two shapes nearly the same size for "largest", a box edge within a few pixels for
"left of") are not asked: the builder tries another one.
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence, Union

from vlmfo1 import prompts
from vlmfo1.data.shapeworld import coordinate_prompts as coord_prompts
from vlmfo1.data.shapeworld.config import COUNTED_TASKS, ShapeWorldConfig
from vlmfo1.data.shapeworld.geometry import RELATIONS, holds, is_clear
from vlmfo1.data.shapeworld.language import (
    BLOB_BRIEF,
    NounPhrase,
    blob_detailed_description,
    brief_description,
    counted,
    detailed_description,
)
from vlmfo1.data.shapeworld.proposals import DISTRACTOR, Proposals
from vlmfo1.data.shapeworld.sampling import Draws
from vlmfo1.data.shapeworld.scene import Scene, ShapeObject
from vlmfo1.data.shapeworld.vocab import WORDS

SIZE_RATIO = 1.3  # "largest"/"smallest"/"larger" need this lead over the runner-up
NEAREST_RATIO = 0.75  # "closest to" needs the nearest to be this much nearer than the next
RELATION_MARGIN = 0.03  # of the shorter image side: gap a relation or an extreme needs to be clear
_TRIES = 12
CHOICE_OPTIONS = 3  # options of a multiple-choice image question, one of them right


@dataclass
class Grounding:
    """Answer part naming objects: `[(label, object ids), ...]`.

    Rendered as FO1 grammar (`<ground>label</ground><objects><regionK>...</objects>`, "None" when
    every group is empty) or as JSON boxes. `inline` marks a phrase inside running text (grounded
    captions): coordinate answers keep its words in the text and list its boxes after it.
    """

    groups: list[tuple[str, list[int]]]
    inline: bool = False


AnswerPart = Union[str, Grounding]


@dataclass
class TaskSample:
    task: str
    prompt: str  # FO1 wording: regions named as <regionK>
    coordinate_prompt: str  # the same request with regions named by their pixel boxes
    answer: list[AnswerPart]
    meta: dict[str, Any] = field(default_factory=dict)
    regions: list[int] = field(default_factory=list)  # proposal indexes the prompt names
    uses_regions: bool = True  # image-level questions carry no proposals

    def grounded_object_ids(self) -> list[int]:
        return sorted({obj for part in self.answer if isinstance(part, Grounding) for _, ids in part.groups for obj in ids})


class _Facts:
    """Lookups over one scene that the task builders share."""

    def __init__(self, scene: Scene, proposals: Proposals, config: ShapeWorldConfig, rng: Draws):
        self.scene = scene
        self.objects = scene.objects
        self.proposals = proposals
        self.config = config
        self.rng = rng
        self.margin = RELATION_MARGIN * min(scene.width, scene.height)
        self.by_category: dict[str, list[ShapeObject]] = defaultdict(list)
        self.labels: set[tuple[str, str]] = set()
        for obj in scene.objects:
            self.by_category[obj.category].append(obj)
            self.labels.add((obj.category, obj.colour))

    def matching(self, phrase: NounPhrase, exclude: int | None = None) -> list[ShapeObject]:
        return [obj for obj in self.objects if phrase.matches(obj) and obj.id != exclude]

    def region(self, obj: ShapeObject) -> int:
        return self.proposals.index_of(obj.id)

    def region_refs(self, index: int) -> tuple[str, str]:
        """How the FO1 prompt and the coordinate prompt name region `index`."""
        return prompts.region_token(index), coord_prompts.object_at(self.proposals.boxes[index])

    def absent_phrase(self, exclude_categories: Sequence[str] = ()) -> NounPhrase | None:
        """A label the world knows that no object in the scene fits: an absent shape, or a present
        shape in a colour it does not have here (the harder negative)."""
        rng, config = self.rng, self.config
        shapes = [c for c in config.categories if c not in exclude_categories]
        absent_shapes = [c for c in shapes if c not in self.by_category]
        if absent_shapes and rng.chance(0.4):
            colour = rng.choice(config.colours) if rng.chance(0.5) else None
            return NounPhrase(rng.choice(absent_shapes), colour)
        combos = [(c, colour) for c in shapes for colour in config.colours if (c, colour) not in self.labels]
        if not combos:
            return None
        category, colour = rng.choice(combos)
        return NounPhrase(category, colour)

    def describing_phrases(self, obj: ShapeObject) -> list[NounPhrase]:
        """Ways to describe `obj` (each may fit other objects too)."""
        phrases = [NounPhrase(obj.category, obj.colour), NounPhrase(obj.category), NounPhrase(None, obj.colour)]
        if obj.texture != "plain":
            phrases.append(NounPhrase(obj.category, None, obj.texture))
        return phrases

    def unique_phrase(self, obj: ShapeObject) -> NounPhrase | None:
        """A phrase that fits `obj` and no other object."""
        for phrase in (NounPhrase(obj.category), NounPhrase(obj.category, obj.colour)):
            if len(self.matching(phrase)) == 1:
                return phrase
        return None


# ---------------------------------------------------------------------------------------------
# Detection, rejection, counting
# ---------------------------------------------------------------------------------------------


def _detection(f: _Facts) -> TaskSample | None:
    rng = f.rng
    present = sorted(f.by_category)
    if not present:
        return None
    count = min(len(present), (1, 1, 1, 2, 2, 3)[rng.integer(6)])
    phrases = []
    for category in rng.sample(present, count):
        if rng.chance(0.5):
            colours = sorted({obj.colour for obj in f.by_category[category]})
            phrases.append(NounPhrase(category, rng.choice(colours)))
        else:
            phrases.append(NounPhrase(category))
    if count >= 2 and rng.chance(0.3):
        # One asked label is absent: the answer simply leaves it out.
        absent = f.absent_phrase(exclude_categories=[p.category for p in phrases])
        if absent is not None:
            phrases[rng.integer(count)] = absent
    return _grounding_query(f, "detection", phrases)


def _rejection(f: _Facts) -> TaskSample | None:
    rng = f.rng
    phrases: list[NounPhrase] = []
    for _ in range(1 if rng.chance(0.7) else 2):
        absent = f.absent_phrase(exclude_categories=[p.category for p in phrases])
        if absent is not None:
            phrases.append(absent)
    if not phrases:
        return None
    return _grounding_query(f, "rejection", phrases)


def _grounding_query(f: _Facts, task: str, phrases: list[NounPhrase]) -> TaskSample:
    labels = [phrase.text() for phrase in phrases]
    groups = [(label, [obj.id for obj in f.matching(phrase)]) for label, phrase in zip(labels, phrases)]
    return TaskSample(
        task=task,
        prompt=prompts.detection_prompt(labels),
        coordinate_prompt=coord_prompts.detection_prompt(labels),
        answer=[Grounding(groups)],
        meta={
            "queries": [dict(label=label, **phrase.to_dict()) for label, phrase in zip(labels, phrases)],
            "absent_labels": [label for label, ids in groups if not ids],
        },
    )


def _counting(f: _Facts) -> TaskSample | None:
    rng = f.rng
    if rng.chance(f.config.no_target_share) or not f.objects:
        phrase = f.absent_phrase()
        if phrase is None:
            return None
    else:
        obj = rng.choice(f.objects)
        options = [NounPhrase(obj.category, obj.colour), NounPhrase(obj.category), NounPhrase(None, obj.colour)]
        phrase = options[rng.weighted_index((0.45, 0.45, 0.1))]
    label = phrase.text(count=2)  # "red circles": the question is asked in the plural
    ids = [obj.id for obj in f.matching(phrase)]
    return TaskSample(
        task="counting",
        prompt=prompts.counting_prompt(label),
        coordinate_prompt=coord_prompts.counting_prompt(label),
        answer=[Grounding([(label, ids)]), f"\n{len(ids)}"],
        meta={"label": label, **phrase.to_dict(), "count": len(ids)},
    )


# ---------------------------------------------------------------------------------------------
# Referring expressions
# ---------------------------------------------------------------------------------------------

_SUPERLATIVES = ("largest", "smallest", "leftmost", "rightmost", "topmost", "bottommost")


def _rec(f: _Facts) -> TaskSample | None:
    rng = f.rng
    want_none = rng.chance(f.config.no_target_share)
    builders: list[tuple[Callable, float]] = [
        (_rec_attribute, 0.3),
        (_rec_superlative, 0.25),
        (_rec_relation, 0.25),
        (_rec_closest, 0.1),
    ]
    if any(obj.word for obj in f.objects):
        builders.append((_rec_word, 0.1))
    for _ in range(_TRIES):
        builder = builders[rng.weighted_index([weight for _, weight in builders])][0]
        built = builder(f, want_none)
        if built is None:
            continue
        expression, targets, details = built
        if (not targets) != want_none:
            continue
        return TaskSample(
            task="rec",
            prompt=prompts.detection_prompt(expression),
            coordinate_prompt=coord_prompts.detection_prompt(expression),
            answer=[Grounding([(expression, [obj.id for obj in targets])])],
            meta={"expression": expression, "no_target": not targets, **details},
        )
    return None


def _rec_attribute(f: _Facts, want_none: bool):
    if want_none:
        phrase = f.absent_phrase()
        if phrase is None:
            return None
        return f"the {phrase.text()}", [], {"template": "attribute", "phrase": phrase.to_dict()}
    phrase = f.rng.choice(f.describing_phrases(f.rng.choice(f.objects)))
    targets = f.matching(phrase)
    return f"the {phrase.text(len(targets))}", targets, {"template": "attribute", "phrase": phrase.to_dict()}


def _rec_superlative(f: _Facts, want_none: bool):
    rng = f.rng
    superlative = rng.choice(_SUPERLATIVES)
    details = {"template": "superlative", "superlative": superlative}
    if want_none:
        phrase = f.absent_phrase()
        if phrase is None:
            return None
        return f"the {superlative} {phrase.text()}", [], {**details, "phrase": phrase.to_dict()}
    phrase = rng.choice(f.describing_phrases(rng.choice(f.objects)) + [NounPhrase()])
    candidates = f.matching(phrase)
    best = _extreme(candidates, superlative, f.margin)
    if best is None:
        return None
    return f"the {superlative} {phrase.text()}", [best], {**details, "phrase": phrase.to_dict()}


def _extreme(candidates: list[ShapeObject], superlative: str, margin: float) -> ShapeObject | None:
    """The one candidate that is clearly the most `superlative`; None when fewer than two or a near tie."""
    if len(candidates) < 2:
        return None
    if superlative in ("largest", "smallest"):
        ranked = sorted(candidates, key=lambda obj: obj.size_measure, reverse=superlative == "largest")
        big, small = sorted((ranked[0].size_measure, ranked[1].size_measure), reverse=True)
        return ranked[0] if big >= SIZE_RATIO * small else None
    axis, lowest_first = {"leftmost": (0, True), "rightmost": (0, False), "topmost": (1, True), "bottommost": (1, False)}[superlative]
    ranked = sorted(candidates, key=lambda obj: obj.center[axis], reverse=not lowest_first)
    return ranked[0] if abs(ranked[0].center[axis] - ranked[1].center[axis]) >= margin else None


def _rec_relation(f: _Facts, want_none: bool):
    rng = f.rng
    if len(f.objects) < 2:
        return None
    anchor = rng.choice(f.objects)
    anchor_phrase = f.unique_phrase(anchor)
    if anchor_phrase is None:
        return None
    relation = rng.choice(RELATIONS)
    other = rng.choice([obj for obj in f.objects if obj.id != anchor.id])
    head = NounPhrase() if rng.chance(0.15) else rng.choice(f.describing_phrases(other))
    candidates = f.matching(head, exclude=anchor.id)
    if not all(is_clear(obj.bbox, anchor.bbox, relation, f.margin) for obj in candidates):
        return None
    targets = [obj for obj in candidates if holds(obj.bbox, anchor.bbox, relation)]
    expression = f"the {head.text(len(targets))} {relation} the {anchor_phrase.text()}"
    details = {"template": "relation", "relation": relation, "anchor_object_id": anchor.id,
               "phrase": head.to_dict(), "candidate_object_ids": [obj.id for obj in candidates]}
    return expression, targets, details


def _rec_closest(f: _Facts, want_none: bool):
    rng = f.rng
    if want_none or len(f.objects) < 2:
        return None
    anchor = rng.choice(f.objects)
    anchor_phrase = f.unique_phrase(anchor)
    if anchor_phrase is None:
        return None
    other = rng.choice([obj for obj in f.objects if obj.id != anchor.id])
    head = rng.choice(f.describing_phrases(other))
    candidates = f.matching(head, exclude=anchor.id)
    ranked = sorted(candidates, key=lambda obj: math.dist(obj.center, anchor.center))
    if len(ranked) >= 2 and math.dist(ranked[0].center, anchor.center) > NEAREST_RATIO * math.dist(ranked[1].center, anchor.center):
        return None
    expression = f"the {head.text()} closest to the {anchor_phrase.text()}"
    return expression, ranked[:1], {"template": "closest", "anchor_object_id": anchor.id, "phrase": head.to_dict(),
                                    "candidate_object_ids": [obj.id for obj in candidates]}


def _rec_word(f: _Facts, want_none: bool):
    present = sorted({obj.word for obj in f.objects if obj.word})
    if want_none:
        word = f.rng.choice([w for w in WORDS if w not in present])
    else:
        word = f.rng.choice(present)
    targets = [obj for obj in f.objects if obj.word == word]
    noun = "shape" if len(targets) <= 1 else "shapes"
    return f"the {noun} with the word {word}", targets, {"template": "word", "word": word}


# ---------------------------------------------------------------------------------------------
# Region tasks: captions, OCR, VQA, visual prompts
# ---------------------------------------------------------------------------------------------


def _region_caption(f: _Facts, detailed: bool) -> TaskSample | None:
    rng = f.rng
    blobs = [k for k, obj in enumerate(f.proposals.object_ids) if obj == DISTRACTOR]
    if blobs and (not f.objects or rng.chance(0.1)):
        region = rng.choice(blobs)
        box = f.proposals.boxes[region]
        center = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
        caption = blob_detailed_description(center, f.scene.width, f.scene.height) if detailed else BLOB_BRIEF
        meta = {"object_id": None, "distractor": True}
    elif f.objects:
        obj = rng.choice(f.objects)
        region = f.region(obj)
        caption = detailed_description(obj, f.scene.width, f.scene.height) if detailed else brief_description(obj)
        meta = {"object_id": obj.id, "distractor": False, "category": obj.category, **obj.attributes()}
    else:
        return None
    fo1_ref, coordinate_ref = f.region_refs(region)
    build = prompts.detailed_caption_prompt if detailed else prompts.brief_caption_prompt
    return TaskSample(
        task="region_caption_detailed" if detailed else "region_caption_brief",
        prompt=build(fo1_ref),
        coordinate_prompt=build(coordinate_ref),
        answer=[caption],
        meta={"caption": caption, **meta},
        regions=[region],
    )


def _region_ocr(f: _Facts) -> TaskSample | None:
    carriers = [obj for obj in f.objects if obj.word]
    if not carriers:
        return None
    obj = f.rng.choice(carriers)
    region = f.region(obj)
    fo1_ref, coordinate_ref = f.region_refs(region)
    return TaskSample(
        task="region_ocr",
        prompt=prompts.ocr_prompt(fo1_ref),
        coordinate_prompt=prompts.ocr_prompt(coordinate_ref),
        answer=[obj.word],
        meta={"object_id": obj.id, "word": obj.word, "word_bbox": list(obj.word_bbox)},
        regions=[region],
    )


def _region_vqa(f: _Facts) -> TaskSample | None:
    rng = f.rng
    if not f.objects:
        return None
    kinds = ["colour", "shape", "size"]
    if len(f.objects) >= 2:
        kinds += ["relation", "same_colour", "same_shape", "larger"]
    for _ in range(_TRIES):
        kind = rng.choice(kinds)
        built = _vqa_question(f, kind)
        if built is None:
            continue
        objects, question, answer = built
        regions = [f.region(obj) for obj in objects]
        refs = [f.region_refs(k) for k in regions]
        return TaskSample(
            task="region_vqa",
            prompt=question(*[fo1 for fo1, _ in refs]),
            coordinate_prompt=question(*[coordinate for _, coordinate in refs]),
            answer=[answer],
            meta={"question_type": kind, "object_ids": [obj.id for obj in objects], "answer": answer},
            regions=regions,
        )
    return None


def _vqa_question(f: _Facts, kind: str):
    """(objects asked about, question builder taking their references, answer) or None."""
    rng = f.rng
    a = rng.choice(f.objects)
    if kind == "colour":
        return [a], lambda r: f"What colour is {r}?", a.colour
    if kind == "shape":
        return [a], lambda r: f"What shape is {r}?", a.category
    if kind == "size":
        return [a], lambda r: f"Is {r} small, medium or large?", a.size
    others = [obj for obj in f.objects if obj.id != a.id]
    if kind == "same_shape" and rng.chance(0.5):
        others = [obj for obj in others if obj.category == a.category] or others  # "Yes" needs a chance
    if kind == "same_colour" and rng.chance(0.5):
        others = [obj for obj in others if obj.colour == a.colour] or others
    b = rng.choice(others)
    if kind == "relation":
        relation = rng.choice(RELATIONS)
        if not is_clear(a.bbox, b.bbox, relation, f.margin):
            return None
        return [a, b], lambda r, s: f"Is {r} {relation} {s}?", _yes_no(holds(a.bbox, b.bbox, relation))
    if kind == "same_colour":
        return [a, b], lambda r, s: f"Do {r} and {s} have the same colour?", _yes_no(a.colour == b.colour)
    if kind == "same_shape":
        return [a, b], lambda r, s: f"Are {r} and {s} the same shape?", _yes_no(a.category == b.category)
    if kind == "larger":
        big, small = max(a.size_measure, b.size_measure), min(a.size_measure, b.size_measure)
        if big < SIZE_RATIO * small:
            return None
        return [a, b], lambda r, s: f"Is {r} larger than {s}?", _yes_no(a.size_measure > b.size_measure)
    raise ValueError(f"unknown region question kind {kind!r}")


def _yes_no(value: bool) -> str:
    return "Yes" if value else "No"


def _visual_prompt_detection(f: _Facts) -> TaskSample | None:
    if not f.objects:
        return None
    reference = f.rng.choice(f.objects)
    region = f.region(reference)
    fo1_ref, _ = f.region_refs(region)
    same = [obj.id for obj in f.by_category[reference.category]]
    return TaskSample(
        task="visual_prompt_detection",
        prompt=prompts.visual_prompt_detection_prompt(fo1_ref),
        coordinate_prompt=coord_prompts.visual_prompt_detection_prompt(f.proposals.boxes[region]),
        # The answer lists the reference too, as the released model does.
        answer=[Grounding([(reference.category, same)])],
        meta={"reference_object_id": reference.id, "category": reference.category},
        regions=[region],
    )


# ---------------------------------------------------------------------------------------------
# Whole-image tasks
# ---------------------------------------------------------------------------------------------

_MAX_CAPTION_PHRASES = 6


def _grounded_caption(f: _Facts) -> TaskSample | None:
    if not f.objects:
        return None
    groups: dict[tuple[str, str], list[ShapeObject]] = defaultdict(list)
    for obj in f.objects:
        groups[(obj.colour, obj.category)].append(obj)
    # Larger groups first, then top to bottom.
    ordered = sorted(groups.items(), key=lambda item: (-len(item[1]), min(obj.center[1] for obj in item[1])))
    mentioned = ordered[:_MAX_CAPTION_PHRASES]
    phrases = [(counted(NounPhrase(category, colour), len(members)), [obj.id for obj in members])
               for (colour, category), members in mentioned]
    answer: list[AnswerPart] = ["The image shows "]
    for i, (phrase, ids) in enumerate(phrases):
        if i:
            answer.append(" and " if i == len(phrases) - 1 else ", ")
        answer.append(Grounding([(phrase, ids)], inline=True))
    answer.append(", among other shapes." if len(ordered) > len(mentioned) else ".")
    return TaskSample(
        task="grounded_caption",
        prompt=prompts.grounded_caption_prompt(),
        coordinate_prompt=coord_prompts.grounded_caption_prompt(),
        answer=answer,
        meta={"phrases": [{"phrase": phrase, "object_ids": ids} for phrase, ids in phrases],
              "mentions_all": len(ordered) == len(mentioned)},
    )


def _detect_everything(f: _Facts) -> TaskSample | None:
    if not f.objects:
        return None
    order = {category: i for i, category in enumerate(f.config.categories)}
    groups = [(category, [obj.id for obj in members]) for category, members in sorted(f.by_category.items(), key=lambda item: order.get(item[0], 99))]
    return TaskSample(
        task="detect_everything",
        prompt=prompts.detect_everything_prompt(),
        coordinate_prompt=coord_prompts.detect_everything_prompt(),
        answer=[Grounding(groups)],
        meta={"categories": [category for category, _ in groups]},
    )


def _image_qa(f: _Facts) -> TaskSample | None:
    rng = f.rng
    if not f.objects:
        return None
    kinds = ["count_all", "count_colour", "exists", "choice"]
    if len(f.objects) >= 2:
        kinds += ["largest_colour", "extreme_shape", "most_common_colour"]
    if sum(1 for obj in f.objects if obj.word) == 1:
        kinds.append("word")
    for _ in range(_TRIES):
        kind = rng.choice(kinds)
        built = _image_question(f, kind)
        if built is None:
            continue
        question, answer, ids = built
        return TaskSample(
            task="image_qa",
            prompt=question,
            coordinate_prompt=question,
            answer=[answer],
            meta={"question_type": kind, "answer": answer, "object_ids": ids},
            uses_regions=False,
        )
    return None


def _image_question(f: _Facts, kind: str):
    """(question, answer, ids of the objects the answer rests on) or None."""
    rng, objects = f.rng, f.objects
    if kind == "count_all":
        return "How many shapes are in this image?", str(len(objects)), [obj.id for obj in objects]
    if kind == "count_colour":
        present = sorted({obj.colour for obj in objects})
        colour = rng.choice(present) if present and rng.chance(0.7) else rng.choice(f.config.colours)
        ids = [obj.id for obj in objects if obj.colour == colour]
        return f"How many {colour} shapes are in this image?", str(len(ids)), ids
    if kind == "exists":
        phrase = f.absent_phrase() if rng.chance(0.5) else None
        if phrase is None:
            obj = rng.choice(objects)
            phrase = NounPhrase(obj.category, obj.colour)
        ids = [obj.id for obj in f.matching(phrase)]
        return f"Is there {counted(phrase, 1)} in this image?", _yes_no(bool(ids)), ids
    if kind == "choice":
        # Multiple choice with the answer's letter and text: the image-level form of what FO1 asks
        # later (find the listed item that fits the image, name its marker, copy its label). A base
        # VLM brings this ability from pre-training; the stand-in base learns it here.
        obj = rng.choice(objects)
        options, seen = [NounPhrase(obj.category, obj.colour)], {(obj.category, obj.colour)}
        for _ in range(_TRIES):
            if len(options) == CHOICE_OPTIONS:
                break
            phrase = f.absent_phrase()
            if phrase is not None and (phrase.category, phrase.colour) not in seen:
                options.append(phrase)
                seen.add((phrase.category, phrase.colour))
        if len(options) < 2:
            return None
        rng.shuffle(options)
        letters = "ABCD"
        listed = " ".join(f"({letters[i]}) {phrase.text()}" for i, phrase in enumerate(options))
        right = next(i for i, phrase in enumerate(options) if phrase.matches(obj))
        answer = f"({letters[right]}) {options[right].text()}"
        return f"Which of these is in the image? {listed}", answer, [o.id for o in f.matching(options[right])]
    if kind == "largest_colour":
        best = _extreme(list(objects), "largest", f.margin)
        return None if best is None else ("What colour is the largest shape?", best.colour, [best.id])
    if kind == "extreme_shape":
        direction = rng.choice(("left", "right", "top", "bottom"))
        superlative = {"left": "leftmost", "right": "rightmost", "top": "topmost", "bottom": "bottommost"}[direction]
        best = _extreme(list(objects), superlative, f.margin)
        if best is None:
            return None
        where = f"furthest to the {direction}" if direction in ("left", "right") else f"nearest the {direction}"
        return f"Which shape is {where}?", best.label, [best.id]
    if kind == "most_common_colour":
        tally: dict[str, list[int]] = defaultdict(list)
        for obj in objects:
            tally[obj.colour].append(obj.id)
        ranked = sorted(tally.items(), key=lambda item: -len(item[1]))
        if len(ranked) >= 2 and len(ranked[0][1]) == len(ranked[1][1]):
            return None
        return "Which colour appears most often among the shapes?", ranked[0][0], ranked[0][1]
    if kind == "word":
        carrier = next(obj for obj in objects if obj.word)
        return "What word is written in the image?", carrier.word, [carrier.id]
    raise ValueError(f"unknown image question kind {kind!r}")


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------

_BUILDERS: dict[str, Callable[[_Facts], TaskSample | None]] = {
    "detection": _detection,
    "rec": _rec,
    "counting": _counting,
    "region_caption_brief": lambda f: _region_caption(f, detailed=False),
    "region_caption_detailed": lambda f: _region_caption(f, detailed=True),
    "region_ocr": _region_ocr,
    "region_vqa": _region_vqa,
    "visual_prompt_detection": _visual_prompt_detection,
    "grounded_caption": _grounded_caption,
    "detect_everything": _detect_everything,
    "image_qa": _image_qa,
}
assert set(_BUILDERS) == set(COUNTED_TASKS)


def make_task_samples(scene: Scene, proposals: Proposals, rng: Draws, config: ShapeWorldConfig) -> list[TaskSample]:
    """`config.task_counts[task]` samples of every task the scene allows (a scene with no words
    has no OCR sample); each detection slot becomes a rejection sample with `config.rejection_share`."""
    facts = _Facts(scene, proposals, config, rng)
    samples = []
    for task in COUNTED_TASKS:
        for _ in range(config.task_counts.get(task, 0)):
            sample = None
            if task == "detection" and rng.chance(config.rejection_share):
                sample = _rejection(facts)
            if sample is None:
                sample = _BUILDERS[task](facts)
            if sample is not None:
                samples.append(sample)
    return samples
