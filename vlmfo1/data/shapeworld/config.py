"""The knobs of ShapeWorld, with a `train()` preset and a harder `heldout()` preset."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from vlmfo1 import prompts
from vlmfo1.data.shapeworld.vocab import COLOURS, SHAPES

MAX_OBJECTS = 60
IMAGE_FORMATS = ("jpg", "png")

# Task names written into records (`FO1Record.task`). Rejection records come out of the detection
# slots (see `ShapeWorldConfig.rejection_share`), so they have no count of their own.
TASKS: tuple[str, ...] = (
    "detection",
    "rejection",
    "rec",
    "counting",
    "region_caption_brief",
    "region_caption_detailed",
    "region_ocr",
    "region_vqa",
    "visual_prompt_detection",
    "grounded_caption",
    "detect_everything",
    "image_qa",
)
COUNTED_TASKS = tuple(task for task in TASKS if task != "rejection")


def _one_of_each() -> dict[str, int]:
    return {task: 1 for task in COUNTED_TASKS}


@dataclass
class ShapeWorldConfig:
    """What a scene may contain and which task records are made from it.

    Sizes are fractions of the shorter image side (shape diameter). The size range is split in log
    space into five bands; small, medium and large take bands 1, 3 and 5, so the gaps between
    them keep the size names unambiguous.
    """

    # --- the image -----------------------------------------------------------------------------
    image_size: tuple[int, int] = (256, 256)  # width, height
    objects_per_image: tuple[int, int] = (1, 12)  # inclusive; scenes that fill up hold fewer
    categories: tuple[str, ...] = SHAPES
    colours: tuple[str, ...] = tuple(COLOURS)
    size_range: tuple[float, float] = (0.07, 0.30)
    size_weights: tuple[float, float, float] = (0.4, 0.35, 0.25)  # small, medium, large
    # Later objects may cover at most this fraction of an earlier object's box (0 = no overlap).
    occlusion: float = 0.25
    # An object whose visible pixels fall under this fraction of its own pixels is left out.
    min_visible: float = 0.4
    repeat_prob: float = 0.5  # chance that an object repeats an earlier object's shape (counting)
    max_rotation: float = 20.0  # degrees, either way
    outline_prob: float = 0.3
    texture_prob: float = 0.2
    clutter: float = 0.3  # 0..1: lines and specks on the background
    noise: int = 6  # pixel noise amplitude (0..64), added to every channel
    distractors: tuple[int, int] = (0, 3)  # irregular blobs that belong to no category
    words: bool = True
    word_prob: float = 0.7  # share of medium/large circles, squares and hexagons that carry a word

    image_format: str = "jpg"  # "jpg" (fast; quality 90, no chroma subsampling) or "png" (lossless, slow)

    # --- proposals (the boxes region tokens stand for) -----------------------------------------
    max_proposals: int = prompts.MAX_REGIONS
    proposal_jitter: float = 0.04  # std of box-edge noise, as a fraction of box size (0 = exact)
    background_proposals: tuple[int, int] = (0, 5)  # random boxes that hold no object

    # --- task records --------------------------------------------------------------------------
    task_counts: dict[str, int] = field(default_factory=_one_of_each)  # records per scene and task
    rejection_share: float = 0.2  # share of detection records that ask only for absent labels
    no_target_share: float = 0.15  # share of REC and counting records with no target

    def __post_init__(self) -> None:
        self.image_size = _pair(self.image_size, "image_size", int)
        self.objects_per_image = _pair(self.objects_per_image, "objects_per_image", int)
        self.size_range = _pair(self.size_range, "size_range", float)
        self.distractors = _pair(self.distractors, "distractors", int)
        self.background_proposals = _pair(self.background_proposals, "background_proposals", int)
        self.categories = tuple(self.categories)
        self.colours = tuple(self.colours)
        self.size_weights = tuple(float(w) for w in self.size_weights)
        self.task_counts = dict(self.task_counts)
        self.validate()

    @classmethod
    def train(cls, **overrides: Any) -> "ShapeWorldConfig":
        """The default world: up to 12 objects, light occlusion and clutter."""
        return cls(**overrides)

    @classmethod
    def heldout(cls, **overrides: Any) -> "ShapeWorldConfig":
        """Harder: crowded scenes, heavier occlusion, clutter, noise, distractors and proposal jitter."""
        harder: dict[str, Any] = dict(
            objects_per_image=(8, 40),
            size_weights=(0.55, 0.3, 0.15),
            occlusion=0.45,
            min_visible=0.35,
            clutter=0.7,
            noise=10,
            distractors=(2, 8),
            outline_prob=0.4,
            texture_prob=0.35,
            proposal_jitter=0.07,
            background_proposals=(3, 12),
        )
        harder.update(overrides)
        return cls(**harder)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "ShapeWorldConfig":
        presets = {"train": cls.train, "heldout": cls.heldout}
        if name not in presets:
            raise ValueError(f"unknown ShapeWorld preset {name!r}; choose from {sorted(presets)}")
        return presets[name](**overrides)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ShapeWorldConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown ShapeWorld config field(s) {unknown}")
        return cls(**data)

    def validate(self) -> None:
        width, height = self.image_size
        if min(width, height) < 64:
            raise ValueError(f"image_size must be at least 64x64 pixels, got {self.image_size}")
        low, high = self.objects_per_image
        if not 1 <= low <= high <= MAX_OBJECTS:
            raise ValueError(f"objects_per_image must satisfy 1 <= min <= max <= {MAX_OBJECTS}, got {self.objects_per_image}")
        unknown = [c for c in self.categories if c not in SHAPES]
        if unknown or not self.categories or len(set(self.categories)) != len(self.categories):
            raise ValueError(f"categories must be distinct names from {SHAPES}, got {self.categories}")
        unknown = [c for c in self.colours if c not in COLOURS]
        if unknown or not self.colours or len(set(self.colours)) != len(self.colours):
            raise ValueError(f"colours must be distinct names from {tuple(COLOURS)}, got {self.colours}")
        small, large = self.size_range
        if not 0.02 <= small < large <= 0.6:
            raise ValueError(f"size_range must satisfy 0.02 <= min < max <= 0.6 (fractions of the shorter side), got {self.size_range}")
        if len(self.size_weights) != 3 or min(self.size_weights) < 0 or sum(self.size_weights) <= 0:
            raise ValueError(f"size_weights must be 3 non-negative weights (small, medium, large), got {self.size_weights}")
        for name in ("occlusion", "repeat_prob", "outline_prob", "texture_prob", "clutter", "word_prob",
                     "rejection_share", "no_target_share"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if not 0.0 < self.min_visible <= 1.0:
            raise ValueError(f"min_visible must be in (0, 1], got {self.min_visible}")
        if not 0.0 <= self.max_rotation <= 45.0:
            raise ValueError(f"max_rotation must be in [0, 45] degrees (more turns squares into diamonds), got {self.max_rotation}")
        if self.image_format not in IMAGE_FORMATS:
            raise ValueError(f"image_format must be one of {IMAGE_FORMATS}, got {self.image_format!r}")
        if not 0 <= self.noise <= 64:
            raise ValueError(f"noise must be in [0, 64], got {self.noise}")
        if not 0 <= self.distractors[0] <= self.distractors[1]:
            raise ValueError(f"distractors must be 0 <= min <= max, got {self.distractors}")
        if not 0 <= self.background_proposals[0] <= self.background_proposals[1]:
            raise ValueError(f"background_proposals must be 0 <= min <= max, got {self.background_proposals}")
        if not high <= self.max_proposals <= prompts.MAX_REGIONS:
            raise ValueError(
                f"max_proposals must hold every object (>= {high}) and at most {prompts.MAX_REGIONS} region tokens, "
                f"got {self.max_proposals}"
            )
        if not 0.0 <= self.proposal_jitter <= 0.2:
            raise ValueError(f"proposal_jitter must be in [0, 0.2], got {self.proposal_jitter}")
        unknown = sorted(set(self.task_counts) - set(COUNTED_TASKS))
        if unknown:
            raise ValueError(f"task_counts names unknown task(s) {unknown}; tasks are {COUNTED_TASKS} "
                             "(rejection records come from detection slots, see rejection_share)")
        if any(not isinstance(n, int) or n < 0 for n in self.task_counts.values()):
            raise ValueError(f"task_counts must be non-negative integers, got {self.task_counts}")

    def size_bands(self) -> dict[str, tuple[float, float]]:
        """Diameter range of each size name, as fractions of the shorter image side."""
        small, large = self.size_range
        step = (large / small) ** (1 / 5)
        return {name: (small * step ** (2 * i), small * step ** (2 * i + 1)) for i, name in enumerate(("small", "medium", "large"))}


def _pair(value: Any, name: str, kind: type) -> tuple:
    if isinstance(value, (int, float)) and kind is int and name == "image_size":
        value = (value, value)  # a square image
    try:
        first, second = value
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair of numbers, got {value!r}") from None
    return kind(first), kind(second)
