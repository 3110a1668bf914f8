"""Text-only ShapeWorld records: list look-up, the language skill a pre-trained LLM brings to FO1.

FO1 answers by finding, among listed region tokens, those that fit a label and naming their index
tokens. A real base VLM has long been able to do the text form of this ("(A) red circle (B) blue
star ... which are stars?" -> "(B)"): it is in-context retrieval, learned in language
pre-training. A model trained from scratch (the bundled demo) has no such pre-training; these
records teach that skill in text, with nothing about images (by default no FO1 token appears in
them either)::

    Items: (A) red circle (B) blue star (C) red star. Find red shapes, star, green heart.
    -> red shapes: (A) (C); star: (B) (C); green heart: none

With ``keys="regions"`` the same look-up takes FO1's own form: the items are keyed by region index
tokens, the question is the detection prompt and the answer is in the grounding grammar, so the
look-up is learned over the very tokens that detection names later (only the ``[R]`` region token
is replaced by words)::

    <region0> red circle <region1> blue star <region2> red star
    Please detect star, green heart in this image. Answer the question with object indexes.
    -> <ground>star</ground><objects><region1><region2></objects>

With ``keys="slots"`` the items leave the text: each sits in a region slot as FO1 prints it
(``<region0><regionfeat><region1><regionfeat>...``), the slot holding the sum of the item's word
embeddings (the record's ``region_text``), so the prompt is exactly a detection prompt over regions.

And, for a share of them (``describe_share``), the reverse look-up from key to content in the
words of ShapeWorld's region questions: "What shape is <region1>?" -> "star", "What colour is
<region1>?" -> "blue", "Provide a brief description for <region1>." -> "blue star".

`repeat_records` are the simplest skill of all, copying: "Repeat: <region3> red star blue" ->
"<region3> red star blue". A transformer learns to copy through induction heads, and the look-up
grows out of the same heads; trained from scratch on look-ups alone, the demo LLM had not learned
even to copy the asked label after 2000 steps. Repeats of a few words teach copying those words
only; repeats of random text (``vocabulary="random"``) teach copying itself (docs/training.md).

Records are text-only (`image` null), so a training step on them costs no vision encoder.

`word_slot_records` is the step between text and pixels: ShapeWorld's own image records (detection,
counting, ...) with each object's region slot holding its label's words, the image beside them. A
look-up learned in text alone does not work beside an image, not even over the right words
(docs/training.md, session 6); these records teach it there.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from vlmfo1 import prompts
from vlmfo1.data.records import FO1Record, regions_in_order
from vlmfo1.data.shapeworld.language import plural
from vlmfo1.data.shapeworld.vocab import COLOURS, SHAPES

MARKERS = tuple(chr(ord("A") + k) for k in range(26))
NONE_FOUND = "none"


KEYS = ("letters", "regions", "slots")


def lookup_record(rng: np.random.Generator, index: int, max_items: int = 12, max_queries: int = 3,
                  split: str = "lookup", keys: str = "letters", describe_share: float = 0.0,
                  present_share: float = 0.0, turns: int = 1) -> FO1Record:
    """One look-up question over a random item list (repeats made likely so labels fit several);
    `keys` "letters" ((A) (B) ...) or "regions" (FO1's detection form, see the module docstring).
    About half of the queries drawn freely name nothing in the list (the answer is "None");
    `present_share` of the queries are instead taken from a listed item, so that they have an answer
    (more look-up signal per question while the skill forms). With `turns` > 1 (region keys), the
    same list is asked `turns` questions in one conversation: a look-up answer is a token or two, so
    more turns put more of the skill's signal in each sequence."""
    if not 0.0 <= present_share <= 1.0:
        raise ValueError(f"present_share must be in [0, 1], got {present_share}")
    if keys not in KEYS:
        raise ValueError(f"keys must be one of {KEYS}, got {keys!r}")
    if describe_share and keys == "letters":
        raise ValueError("describe_share needs keys='regions' or 'slots'")
    if turns < 1 or (turns > 1 and keys == "letters"):
        raise ValueError(f"turns must be >= 1, and more than one needs keys='regions' or 'slots'; got {turns}")
    if keys != "letters" and max_items > prompts.MAX_REGIONS:
        raise ValueError(f"at most {prompts.MAX_REGIONS} items can be keyed by region tokens, got max_items={max_items}")
    colours, shapes = list(COLOURS), list(SHAPES)
    n = int(rng.integers(2, max_items + 1))
    # A small palette per list makes shared colours and shapes (multi-item answers) common.
    palette_c = rng.choice(colours, size=min(len(colours), int(rng.integers(2, 5))), replace=False)
    palette_s = rng.choice(shapes, size=min(len(shapes), int(rng.integers(2, 5))), replace=False)
    items = [(str(rng.choice(palette_c)), str(rng.choice(palette_s))) for _ in range(n)]

    def draw_queries() -> list[tuple[str | None, str | None]]:
        queries: list[tuple[str | None, str | None]] = []
        for _ in range(int(rng.integers(1, max_queries + 1))):
            for _ in range(10):  # distinct queries; absent ones come from the full vocabulary
                if present_share and rng.random() < present_share:
                    colour, shape = items[int(rng.integers(n))]
                else:
                    colour = str(rng.choice(colours if rng.random() < 0.15 else palette_c))
                    shape = str(rng.choice(shapes if rng.random() < 0.15 else palette_s))
                kind = rng.random()
                if keys != "letters":  # detection asks for a shape, with or without its colour
                    kind *= 0.8
                query = (colour, shape) if kind < 0.5 else ((None, shape) if kind < 0.8 else (colour, None))
                if query not in queries:
                    queries.append(query)
                    break
        return queries

    queries = draw_queries()
    meta: dict = {"items": [list(item) for item in items], "queries": [list(q) for q in queries]}
    if keys == "letters":
        return _letter_keyed(index, split, items, queries, meta)
    listed, region_text = _listing(items, slots=keys == "slots")
    conversations = []
    for turn in range(turns):
        if turn:
            queries = draw_queries()
        if rng.random() < describe_share:
            question, answer, target = _describe_turn(rng, items)
            meta.setdefault("described", target)
        else:
            question, answer = _detection_turn(items, queries)
        if turn:
            meta.setdefault("more_queries", []).append([list(q) for q in queries])
        conversations += [{"from": "human", "value": (listed if not turn else "") + question}, {"from": "gpt", "value": answer}]
    return FO1Record(id=f"{split}-{index:06d}", image=None, conversations=conversations, task="text_lookup", meta=meta,
                     region_text=region_text or [])


def _letter_keyed(index: int, split: str, items, queries, meta) -> FO1Record:
    listed = " ".join(f"({MARKERS[k]}) {colour} {shape}" for k, (colour, shape) in enumerate(items))
    labels, answers = [], []
    for colour, shape in queries:
        hits = [k for k, item in enumerate(items) if colour in (None, item[0]) and shape in (None, item[1])]
        noun = shape or "shape"
        label = " ".join(w for w in (colour, noun if len(hits) == 1 else plural(noun)) if w)
        labels.append(label)
        found = " ".join(f"({MARKERS[k]})" for k in hits) if hits else NONE_FOUND
        answers.append(f"{label}: {found}")
    prompt = f"Items: {listed}. Find {', '.join(labels)}."
    return FO1Record.single_turn(
        id=f"{split}-{index:06d}", image=None, prompt=prompt, answer="; ".join(answers), task="text_lookup", meta=meta,
    )


def _listing(items, slots: bool) -> tuple[str, list[str] | None]:
    """The item list as the prompt's first line, or (slots) as region texts with no line at all."""
    if slots:
        return "", [f"{colour} {shape}" for colour, shape in items]
    return " ".join(f"{prompts.region_token(k)} {colour} {shape}" for k, (colour, shape) in enumerate(items)) + "\n", None


def _detection_turn(items, queries) -> tuple[str, str]:
    # Detection labels are singular ("red circle", "star"), as ShapeWorld's detection questions ask.
    labels = [" ".join(w for w in query if w) for query in queries]
    groups = [(label, [k for k, item in enumerate(items) if colour in (None, item[0]) and shape == item[1]])
              for label, (colour, shape) in zip(labels, queries)]
    return prompts.detection_prompt(labels), prompts.format_grounded_answer(groups)


def _describe_turn(rng: np.random.Generator, items) -> tuple[str, str, int]:
    target = int(rng.integers(len(items)))
    colour, shape = items[target]
    region = prompts.region_token(target)
    question, answer = [
        (f"What shape is {region}?", shape),
        (f"What colour is {region}?", colour),
        (prompts.brief_caption_prompt(region), f"{colour} {shape}"),
    ][int(rng.integers(3))]
    return question, answer, target


def lookup_records(n: int, seed: int, max_items: int = 12, max_queries: int = 3, split: str = "lookup",
                   keys: str = "letters", describe_share: float = 0.0, present_share: float = 0.0,
                   turns: int = 1) -> list[FO1Record]:
    rng = np.random.default_rng([seed, 7919])
    return [lookup_record(rng, k, max_items, max_queries, split, keys, describe_share, present_share, turns)
            for k in range(n)]


REPEAT_PROMPT = "Repeat:"


REPEAT_VOCABULARIES = ("shapeworld", "random")
_LETTERS = "abcdefghijklmnopqrstuvwxyz0123456789"


def repeat_records(n: int, seed: int, min_words: int = 3, max_words: int = 12, region_share: float = 0.25,
                   split: str = "repeat", vocabulary: str = "shapeworld") -> list[FO1Record]:
    """`n` copy questions: a random sequence of words and, at `region_share` of the positions, region
    index tokens, to be repeated verbatim. `vocabulary` "shapeworld" draws ShapeWorld words (colours,
    shapes, numbers); "random" draws random strings of 1-4 letters and digits, which a tokenizer cuts
    into many different pieces: a copier trained on a few words learns those words (copying 22 % of
    other words), one trained on random text learns to copy (docs/training.md)."""
    if not 1 <= min_words <= max_words:
        raise ValueError(f"need 1 <= min_words <= max_words, got {min_words}, {max_words}")
    if not 0.0 <= region_share <= 1.0:
        raise ValueError(f"region_share must be in [0, 1], got {region_share}")
    if vocabulary not in REPEAT_VOCABULARIES:
        raise ValueError(f"vocabulary must be one of {REPEAT_VOCABULARIES}, got {vocabulary!r}")
    rng = np.random.default_rng([seed, 104729])
    words = list(COLOURS) + list(SHAPES) + [str(k) for k in range(10)]

    def word() -> str:
        if vocabulary == "shapeworld":
            return str(rng.choice(words))
        return "".join(rng.choice(list(_LETTERS), size=int(rng.integers(1, 5))))

    records = []
    for index in range(n):
        length = int(rng.integers(min_words, max_words + 1))
        sequence = [prompts.region_token(int(rng.integers(prompts.MAX_REGIONS))) if rng.random() < region_share
                    else word() for _ in range(length)]
        text = " ".join(sequence)
        records.append(FO1Record.single_turn(id=f"{split}-{index:06d}", image=None, prompt=f"{REPEAT_PROMPT} {text}",
                                             answer=text, task="text_repeat"))
    return records


WORD_SLOT_SUFFIX = "-words"  # the id of a word-slot record is its source record's id + this


def word_slot_records(records, coco: dict) -> list[FO1Record]:
    """ShapeWorld image records (with `meta.proposal_objects`) whose region slots hold their objects'
    labels (`region_text`, e.g. "red circle", from the split's COCO `attributes.label`). Boxes that
    hold no object (background proposals, distractors) are dropped and the answers rewritten; a
    record left with no box is skipped. Ids get `WORD_SLOT_SUFFIX`."""
    from vlmfo1.data.shapeworld.coco import annotation_id

    labels = {annotation["id"]: annotation["attributes"]["label"] for annotation in coco["annotations"]}
    out = []
    for record in records:
        objects = record.meta.get("proposal_objects")
        if objects is None:
            raise ValueError(f"record {record.id!r} has no meta.proposal_objects: not a ShapeWorld image record")
        kept = [k for k, obj in enumerate(objects) if obj >= 0]
        if not kept:
            continue
        scene = record.meta["scene_index"]
        words = regions_in_order(record, kept)
        out.append(dataclasses.replace(words, id=record.id + WORD_SLOT_SUFFIX,
                                       region_text=[labels[annotation_id(scene, objects[k])] for k in kept]))
    return out
