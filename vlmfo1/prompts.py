"""Task prompts of the released VLM-FO1 model and the grammar of its answers.

Every part of the package (data generation, training, pipeline, evaluation) builds
prompts and answers through this module, so the wording stays the released model's.
"""
from __future__ import annotations

from typing import Iterable, Sequence

MAX_REGIONS = 100
SYSTEM_PROMPT = "You are a helpful assistant."

GROUND_OPEN, GROUND_CLOSE = "<ground>", "</ground>"
OBJECTS_OPEN, OBJECTS_CLOSE = "<objects>", "</objects>"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
# Answer of a detection/REC query when none of the asked objects is in the image.
NO_OBJECT_ANSWER = "None"
# Stands where the image goes in a user turn of an FO1 JSONL record (LLaVA convention).
IMAGE_TAG = "<image>"


def region_token(index: int) -> str:
    return f"<region{index}>"


def region_tokens(max_regions: int = MAX_REGIONS) -> list[str]:
    return [region_token(i) for i in range(max_regions)]


def grammar_tokens() -> list[str]:
    return [GROUND_OPEN, GROUND_CLOSE, OBJECTS_OPEN, OBJECTS_CLOSE]


def join_categories(categories: str | Sequence[str], sep: str = ", ") -> str:
    if isinstance(categories, str):
        return categories
    return sep.join(categories)


def detection_prompt(categories: str | Sequence[str]) -> str:
    return f"Please detect {join_categories(categories)} in this image. Answer the question with object indexes."


def coco_detection_prompt(categories: Sequence[str]) -> str:
    """The all-categories-in-one-query prompt used for COCO evaluation."""
    return f"Please detect {join_categories(categories, '; ')} in the image and return the object indexes."


def counting_prompt(category: str) -> str:
    return (
        f"How many {category} are there in this image? Count each instance of the target object. "
        "Locate them with object indexes and then answer the question with the number of objects."
    )


def ocr_prompt(regions: str | Sequence[int]) -> str:
    return f"Please provide the ocr results of {_region_refs(regions)} in the image."


def brief_caption_prompt(regions: str | Sequence[int]) -> str:
    return f"Provide a brief description for {_region_refs(regions)}."


def detailed_caption_prompt(regions: str | Sequence[int]) -> str:
    return f"Provide a detailed description for {_region_refs(regions)}."


def grounded_caption_prompt() -> str:
    return "Briefly describe this image and detect all mentioned objects. Answer with grounded object indexes."


def visual_prompt_detection_prompt(regions: str | Sequence[int]) -> str:
    return (
        f"Using the provided object {_region_refs(regions)} as a reference, identify all other objects "
        "of the same category in this image. Respond with object indexes."
    )


def detect_everything_prompt() -> str:
    return "Please identify every object in the image and provide their labels along with their indexes."


def reasoning_prompt(question: str) -> str:
    return (
        f"{question} First think about the question in {THINK_OPEN}{THINK_CLOSE} and provide image regions "
        "that can help you answer the question better, then give the final answer in "
        f"{ANSWER_OPEN}{ANSWER_CLOSE}."
    )


def _region_refs(regions: str | Sequence[int]) -> str:
    if isinstance(regions, str):
        return regions
    return ", ".join(region_token(i) for i in regions)


def format_objects(indexes: Iterable[int]) -> str:
    return OBJECTS_OPEN + "".join(region_token(i) for i in indexes) + OBJECTS_CLOSE


def format_grounded_answer(groups: Sequence[tuple[str, Sequence[int]]]) -> str:
    """`[("red circle", [2, 10])]` -> `<ground>red circle</ground><objects><region2><region10></objects>`.

    Groups with no index are left out; when nothing is left the answer is `NO_OBJECT_ANSWER`.
    """
    parts = [f"{GROUND_OPEN}{label}{GROUND_CLOSE}{format_objects(idx)}" for label, idx in groups if len(idx)]
    return "".join(parts) if parts else NO_OBJECT_ANSWER
