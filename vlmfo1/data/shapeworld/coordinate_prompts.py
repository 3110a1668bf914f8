"""Prompts of the coordinate-answer twin: the FO1 requests, asking for pixel boxes instead of indexes.

A coordinate-generating model (Qwen2.5-VL's native grounding) sees no proposals: regions are named
by their boxes in the text, and answers list boxes as JSON. The wording follows `vlmfo1.prompts`
so the two kinds of record differ only where FO1 speaks of object indexes.
"""
from __future__ import annotations

from typing import Sequence

from vlmfo1 import prompts

JSON_BOXES = "bounding boxes in JSON format"


def box_text(box: Sequence[float]) -> str:
    """`[12, 30, 41, 66]`: integer pixels, as Qwen2.5-VL writes boxes."""
    return "[" + ", ".join(str(int(round(v))) for v in box) + "]"


def object_at(box: Sequence[float]) -> str:
    """How a region is named in a coordinate prompt: "the object at [12, 30, 41, 66]"."""
    return f"the object at {box_text(box)}"


def detection_prompt(categories: str | Sequence[str]) -> str:
    return f"Please detect {prompts.join_categories(categories)} in this image. Answer the question with {JSON_BOXES}."


def counting_prompt(category: str) -> str:
    return (
        f"How many {category} are there in this image? Count each instance of the target object. "
        f"Locate them with {JSON_BOXES} and then answer the question with the number of objects."
    )


def visual_prompt_detection_prompt(box: Sequence[float]) -> str:
    return (
        f"Using the provided object at {box_text(box)} as a reference, identify all other objects "
        f"of the same category in this image. Respond with {JSON_BOXES}."
    )


def grounded_caption_prompt() -> str:
    return f"Briefly describe this image and detect all mentioned objects. Answer with grounded {JSON_BOXES}."


def detect_everything_prompt() -> str:
    return f"Please identify every object in the image and provide their labels along with their {JSON_BOXES}."
