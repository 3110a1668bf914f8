"""Scene generation: lay out shapes with controlled overlap, render them, measure what is visible.

Every random choice is made while planning (`_plan_scene`); rendering (`_render`) is a pure function
of the plan. That is what lets a scene be regenerated alone from (seed, split, index), and lets the
generator drop an object that ended up hidden and draw the rest again without new random draws.
"""
from __future__ import annotations

import functools
import math
import zlib
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFont

from vlmfo1.data.shapeworld.config import ShapeWorldConfig
from vlmfo1.data.shapeworld.geometry import area, intersection
from vlmfo1.data.shapeworld.sampling import Draws
from vlmfo1.data.shapeworld.vocab import COLOURS, SIZES, WORD_CARRIERS, WORDS

_PLACEMENT_ATTEMPTS = 24
_MIN_FONT_SIZE = 9
_WORD_MARGIN = 1  # pixels kept free around a word: nothing drawn later may touch it


# ---------------------------------------------------------------------------------------------
# Public types
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShapeObject:
    """One annotated shape. `bbox` is what is visible (the COCO box): xyxy pixels, x2/y2 exclusive."""

    id: int  # index in `Scene.objects`, in drawing order (later ones lie on top)
    category: str
    colour: str
    size: str
    bbox: tuple[int, int, int, int]
    area: int  # visible pixels
    visible_fraction: float  # visible pixels / pixels of the shape drawn alone
    amodal_bbox: tuple[float, float, float, float]  # the whole shape, hidden parts included
    rotation: float  # degrees
    texture: str
    outline: bool
    rgb: tuple[int, int, int]  # fill colour before noise (this colour name, slightly jittered)
    word: str | None = None
    word_bbox: tuple[int, int, int, int] | None = None

    @property
    def label(self) -> str:
        """Colour and shape, the name a detection query uses: "red circle"."""
        return f"{self.colour} {self.category}"

    @property
    def center(self) -> tuple[float, float]:
        return (self.bbox[0] + self.bbox[2]) / 2, (self.bbox[1] + self.bbox[3]) / 2

    @property
    def size_measure(self) -> float:
        """How large the shape is (area of its whole box): what "largest"/"smallest" compare."""
        x1, y1, x2, y2 = self.amodal_bbox
        return (x2 - x1) * (y2 - y1)

    def attributes(self) -> dict[str, Any]:
        return {
            "colour": self.colour,
            "size": self.size,
            "texture": self.texture,
            "outline": self.outline,
            "word": self.word,
            "word_bbox": list(self.word_bbox) if self.word_bbox else None,
            "rotation": self.rotation,
            "visible_fraction": self.visible_fraction,
            "amodal_bbox": list(self.amodal_bbox),
            "label": self.label,
        }


@dataclass(frozen=True)
class Distractor:
    """An irregular blob that belongs to no category (a hard negative for proposals and queries)."""

    bbox: tuple[int, int, int, int]
    rgb: tuple[int, int, int]


@dataclass
class Scene:
    image: Image.Image
    objects: list[ShapeObject]
    distractors: list[Distractor]
    index: int
    seed: int
    split: str
    requested_objects: int  # how many the scene was asked to hold; fewer when it filled up
    background: tuple[int, int, int]
    file_name: str  # where the dataset writer stores the image, relative to the dataset folder

    @property
    def width(self) -> int:
        return self.image.width

    @property
    def height(self) -> int:
        return self.image.height


def image_file_name(split: str, index: int, image_format: str = "jpg") -> str:
    return f"images/{split}/{index:06d}.{image_format}"


def scene_seeds(seed: int, split: str, index: int) -> tuple[np.random.SeedSequence, np.random.SeedSequence]:
    """The two independent seed streams of one scene: drawing it, and making its task records.
    They depend on (seed, split, index) only, so any scene can be made alone, in any order."""
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(index, (int, np.integer)) or index < 0:
        raise ValueError(f"index must be a non-negative integer, got {index!r}")
    key = [int(seed), zlib.crc32(split.encode("utf-8")), int(index)]
    return np.random.SeedSequence(key + [0]), np.random.SeedSequence(key + [1])


def generate_scene(config: ShapeWorldConfig | None = None, index: int = 0, seed: int = 0, split: str = "train") -> Scene:
    """Draws scene `index` of (`seed`, `split`); the same arguments give the same pixels and labels."""
    config = config or ShapeWorldConfig()
    scene_stream, _ = scene_seeds(seed, split, index)
    plan = _plan_scene(config, Draws(np.random.default_rng(scene_stream)))
    image, labels = _render(plan, config)
    objects = _measure(plan, labels)
    hidden = {i for i, obj in enumerate(objects) if obj.visible_fraction < config.min_visible}
    if hidden:
        # Dropping a shape only uncovers what lies under it, so one redraw settles it.
        plan.shapes = [shape for i, shape in enumerate(plan.shapes) if i not in hidden]
        image, labels = _render(plan, config)
        objects = _measure(plan, labels)
    return Scene(
        image=image,
        objects=objects,
        distractors=[Distractor(d.bbox, d.rgb) for d in plan.distractors],
        index=int(index),
        seed=int(seed),
        split=split,
        requested_objects=plan.requested,
        background=plan.background,
        file_name=image_file_name(split, index, config.image_format),
    )


# ---------------------------------------------------------------------------------------------
# Shape outlines
# ---------------------------------------------------------------------------------------------


def _regular_polygon(sides: int, start_degrees: float) -> np.ndarray:
    angles = np.deg2rad(start_degrees + 360.0 * np.arange(sides) / sides)
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _star() -> np.ndarray:
    angles = np.deg2rad(-90.0 + 36.0 * np.arange(10))
    radii = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
    return np.stack([np.cos(angles) * radii, np.sin(angles) * radii], axis=1)


def _cross(arm: float = 0.32) -> np.ndarray:
    a = arm
    return np.array([(-a, -1), (a, -1), (a, -a), (1, -a), (1, a), (a, a), (a, 1), (-a, 1), (-a, a), (-1, a), (-1, -a), (-a, -a)], dtype=np.float64)


def _heart(points: int = 36) -> np.ndarray:
    t = np.linspace(0.0, 2 * np.pi, points, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    outline = np.stack([x, y], axis=1)
    outline -= (outline.max(axis=0) + outline.min(axis=0)) / 2
    return outline / np.abs(outline).max()


def _crescent(inner_radius: float = 0.8, offset: float = 0.45, points: int = 20) -> np.ndarray:
    """The unit disc minus a disc of `inner_radius` shifted right by `offset`, as one polygon."""
    x = (1 - inner_radius**2 + offset**2) / (2 * offset)  # where the two circles cross
    y = math.sqrt(1 - x * x)
    outer_start = math.atan2(y, x)
    outer = np.linspace(outer_start, 2 * np.pi - outer_start, points)
    inner_start = math.atan2(-y, x - offset) + 2 * np.pi
    inner = np.linspace(inner_start, math.atan2(y, x - offset), points)
    outline = np.concatenate([
        np.stack([np.cos(outer), np.sin(outer)], axis=1),
        np.stack([offset + inner_radius * np.cos(inner), inner_radius * np.sin(inner)], axis=1),
    ])
    outline[:, 0] -= (outline[:, 0].max() + outline[:, 0].min()) / 2
    return outline


_UNIT_POLYGONS: dict[str, np.ndarray] = {
    "square": np.array([(-0.85, -0.85), (0.85, -0.85), (0.85, 0.85), (-0.85, 0.85)]),
    "triangle": _regular_polygon(3, -90.0) * 1.1 + np.array([0.0, 0.25 * 1.1]),
    "star": _star(),
    "hexagon": _regular_polygon(6, 0.0),
    "cross": _cross() * 0.95,
    "heart": _heart(),
    "diamond": np.array([(0.0, -1.0), (0.62, 0.0), (0.0, 1.0), (-0.62, 0.0)]),
    "crescent": _crescent(),
}
_ROUND_SHAPES = ("circle", "ring")
_BLOB_ANGLES = np.linspace(0, 2 * np.pi, 28, endpoint=False)


def _ring_width(radius: float) -> int:
    return max(2, round(0.35 * radius))


def _outline_width(radius: float) -> int:
    return max(1, round(radius / 12))


# ---------------------------------------------------------------------------------------------
# Planning
# ---------------------------------------------------------------------------------------------


@dataclass
class _ShapePlan:
    category: str
    colour: str
    size: str
    rgb: tuple[int, int, int]
    center: tuple[float, float]
    radius: float
    rotation: float
    points: np.ndarray | None  # polygon vertices in image pixels; None for round shapes
    box: tuple[float, float, float, float]  # amodal, float
    texture: str = "plain"
    outline: bool = False
    word: str | None = None
    font_size: int = 0
    word_bbox: tuple[int, int, int, int] | None = None
    covered: bool = False  # some later shape's box overlaps this one's


@dataclass
class _DistractorPlan:
    points: np.ndarray
    bbox: tuple[int, int, int, int]
    rgb: tuple[int, int, int]


@dataclass
class _ScenePlan:
    width: int
    height: int
    background: tuple[int, int, int]
    lines: list[tuple[list[float], tuple[int, int, int], int]]
    specks: list[tuple[tuple[float, float, float, float], tuple[int, int, int]]]
    distractors: list[_DistractorPlan]
    shapes: list[_ShapePlan]
    noise_offset: tuple[int, int]
    requested: int


def _plan_scene(config: ShapeWorldConfig, rng: Draws) -> _ScenePlan:
    width, height = config.image_size
    background = _background_colour(rng)
    lines, specks = _plan_clutter(config, rng, width, height, background)
    requested = rng.integer(config.objects_per_image[0], config.objects_per_image[1] + 1)
    shapes = _plan_shapes(config, rng, width, height, requested)
    distractors = _plan_distractors(config, rng, width, height, shapes)
    noise_offset = (rng.integer(width), rng.integer(height))
    return _ScenePlan(width, height, background, lines, specks, distractors, shapes, noise_offset, requested)


def _background_colour(rng: Draws) -> tuple[int, int, int]:
    """A dull grey, either dark or light, slightly tinted: every palette colour stands out on it."""
    level = rng.uniform(25, 70) if rng.chance(0.5) else rng.uniform(180, 215)
    return tuple(int(level + rng.uniform(-12, 12)) for _ in range(3))


def _plan_clutter(config, rng, width, height, background):
    scale = width * height / 256**2
    lines = []
    # A few clutter colours per scene, each a little off the background.
    inks = [_shifted(background, rng, 25, 75) for _ in range(3)]
    for _ in range(rng.poisson(config.clutter * 10 * scale)):
        points = [rng.random() * (width if k % 2 == 0 else height) for k in range(2 * rng.integer(2, 4))]
        lines.append((points, rng.choice(inks), rng.integer(1, 3)))
    specks = []
    for _ in range(rng.poisson(config.clutter * 40 * scale)):
        x, y, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(0.8, 2.2)
        specks.append(((x - r, y - r, x + r, y + r), rng.choice(inks)))
    return lines, specks


def _shifted(rgb, rng: Draws, low: float, high: float) -> tuple[int, int, int]:
    """A colour that differs from `rgb` by low..high per channel (toward the brighter or darker side)."""
    sign = 1 if sum(rgb) < 3 * 128 else -1
    return tuple(min(255, max(0, int(v + sign * rng.uniform(low, high)))) for v in rgb)


def _plan_shapes(config: ShapeWorldConfig, rng: Draws, width: int, height: int, requested: int) -> list[_ShapePlan]:
    bands = config.size_bands()
    short_side = min(width, height)
    shapes: list[_ShapePlan] = []
    # Per placed shape: its box area, and how much of it later shapes' boxes overlap.
    box_areas: list[float] = []
    covered_areas: list[float] = []
    word_boxes: list[tuple[int, int, int, int]] = []
    for _ in range(requested):
        if shapes and rng.chance(config.repeat_prob):
            model = rng.choice(shapes)
            category = model.category
            colour = model.colour if rng.chance(0.5) else rng.choice(config.colours)
        else:
            category = rng.choice(config.categories)
            colour = rng.choice(config.colours)
        placed = None
        # A scene that fills up tries smaller sizes before giving up on the object.
        for size_index in range(rng.weighted_index(config.size_weights), -1, -1):
            low, high = bands[SIZES[size_index]]
            radius = rng.uniform(low, high) * short_side / 2
            rotation = 0.0 if category in _ROUND_SHAPES else rng.uniform(-config.max_rotation, config.max_rotation)
            offsets = _outline_offsets(category, radius, rotation)
            if offsets is None:
                left, top, right, bottom = -radius, -radius, radius, radius
            else:
                (left, top), (right, bottom) = offsets.min(axis=0).tolist(), offsets.max(axis=0).tolist()
            x_low, x_high = 1 - left, width - 1 - right
            y_low, y_high = 1 - top, height - 1 - bottom
            if x_low >= x_high or y_low >= y_high:
                continue  # too large for the image at this size
            for _attempt in range(_PLACEMENT_ATTEMPTS):
                cx, cy = rng.uniform(x_low, x_high), rng.uniform(y_low, y_high)
                box = (cx + left, cy + top, cx + right, cy + bottom)
                overlaps = _overlaps_if_placed(config, shapes, box_areas, covered_areas, box, colour, word_boxes)
                if overlaps is not None:
                    placed = (radius, rotation, (cx, cy), None if offsets is None else offsets + (cx, cy), box, overlaps)
                    break
            if placed:
                break
        if not placed:
            continue
        radius, rotation, center, points, box, overlaps = placed
        for i, overlap in overlaps:
            covered_areas[i] += overlap
            shapes[i].covered = True
        box_areas.append((box[2] - box[0]) * (box[3] - box[1]))
        covered_areas.append(0.0)
        shape = _ShapePlan(
            category=category,
            colour=colour,
            size=SIZES[size_index],
            rgb=_jittered(COLOURS[colour], rng),
            center=center,
            radius=radius,
            rotation=round(rotation, 2),
            points=points,
            box=box,
        )
        _plan_surface(config, rng, shape)
        if shape.word_bbox:
            word_boxes.append(shape.word_bbox)
        shapes.append(shape)
    return shapes


def _outline_offsets(category: str, radius: float, rotation: float) -> np.ndarray | None:
    """Polygon vertices around the origin, or None for shapes drawn as ellipses."""
    if category in _ROUND_SHAPES:
        return None
    theta = math.radians(rotation)
    cos, sin = math.cos(theta) * radius, math.sin(theta) * radius
    return _UNIT_POLYGONS[category] @ np.array(((cos, sin), (-sin, cos)))


def _overlaps_if_placed(config, shapes, box_areas, covered_areas, box, colour, word_boxes) -> list[tuple[int, float]] | None:
    """The (shape index, overlap area) pairs a shape at `box` would make, or None if it may not go there.

    A new shape lies on top of the earlier ones. It may not cover more than `config.occlusion` of
    any earlier shape's box (counting what other shapes already cover), may not overlap a shape of
    its own colour (the two would merge into one blob with an ambiguous box), and may not touch a
    word. Boxes are grown by a pixel for the test: rasterised shapes reach a little past their
    exact outline, and with no occlusion allowed even their pixel boxes must stay apart.
    """
    x1, y1, x2, y2 = box[0] - 1, box[1] - 1, box[2] + 1, box[3] + 1
    for wx1, wy1, wx2, wy2 in word_boxes:
        if x1 < wx2 + _WORD_MARGIN and wx1 - _WORD_MARGIN < x2 and y1 < wy2 + _WORD_MARGIN and wy1 - _WORD_MARGIN < y2:
            return None
    overlaps = []
    for i, shape in enumerate(shapes):
        bx1, by1, bx2, by2 = shape.box
        overlap_width = min(x2, bx2) - max(x1, bx1)
        if overlap_width <= 0:
            continue
        overlap_height = min(y2, by2) - max(y1, by1)
        if overlap_height <= 0:
            continue
        overlap = overlap_width * overlap_height
        if shape.colour == colour or covered_areas[i] + overlap > config.occlusion * box_areas[i]:
            return None
        overlaps.append((i, overlap))
    return overlaps


def _jittered(rgb, rng: Draws, amount: int = 12) -> tuple[int, int, int]:
    return tuple(min(255, max(0, v + rng.integer(-amount, amount + 1))) for v in rgb)


def _plan_surface(config: ShapeWorldConfig, rng: Draws, shape: _ShapePlan) -> None:
    """Texture, outline and word of a placed shape."""
    can_carry_word = config.words and shape.category in WORD_CARRIERS and shape.size != "small"
    if can_carry_word and rng.chance(config.word_prob):
        word = rng.choice(WORDS)
        font_size = _fitting_font_size(word, shape.radius)
        if font_size:
            left, top, right, bottom = _text_box(word, font_size, "mm")
            cx, cy = shape.center
            shape.word, shape.font_size = word, font_size
            shape.word_bbox = (math.floor(cx + left), math.floor(cy + top), math.ceil(cx + right), math.ceil(cy + bottom))
            return  # words sit on plain, outlined-or-not shapes so they stay legible
    if shape.category != "ring":
        if rng.chance(config.texture_prob):
            shape.texture = "striped" if rng.chance(0.5) else "dotted"
        shape.outline = rng.chance(config.outline_prob)


def _fitting_font_size(word: str, radius: float) -> int:
    """The largest font size at which `word` fits well inside a solid shape of `radius`; 0 if none."""
    # Glyph extents grow about linearly with the font size: start from the estimate, then step down.
    left, top, right, bottom = _text_box(word, 20, None)
    estimate = int(20 * min(1.2 * radius / (right - left), 0.6 * radius / (bottom - top))) + 1
    for size in range(min(40, estimate), _MIN_FONT_SIZE - 1, -1):
        left, top, right, bottom = _text_box(word, size, None)
        if right - left <= 1.2 * radius and bottom - top <= 0.6 * radius:
            return size
    return 0


@functools.lru_cache(maxsize=8192)
def _text_box(word: str, size: int, anchor: str | None) -> tuple[int, int, int, int]:
    return _font(size).getbbox(word, anchor=anchor)


@functools.lru_cache(maxsize=64)
def _font(size: int) -> ImageFont.FreeTypeFont:
    # Pillow's bundled scalable font: the same glyphs on every machine with the same Pillow.
    return ImageFont.load_default(size=size)


def _plan_distractors(config, rng, width, height, shapes) -> list[_DistractorPlan]:
    count = rng.integer(config.distractors[0], config.distractors[1] + 1)
    bands = config.size_bands()
    distractors = []
    for _ in range(count):
        radius = rng.uniform(bands["small"][0], bands["large"][1]) * min(width, height) / 2
        lobe2, lobe3 = rng.uniform(0.15, 0.35), rng.uniform(0.15, 0.35)
        phase2, phase3 = rng.uniform(0, 2 * np.pi), rng.uniform(0, 2 * np.pi)
        squash = rng.uniform(0.6, 1.0)
        radii = radius * (1 + lobe2 * np.sin(2 * _BLOB_ANGLES + phase2) + lobe3 * np.sin(3 * _BLOB_ANGLES + phase3))
        offsets = np.stack([np.cos(_BLOB_ANGLES) * radii, np.sin(_BLOB_ANGLES) * radii * squash], axis=1)
        (left, top), (right, bottom) = offsets.min(axis=0).tolist(), offsets.max(axis=0).tolist()
        if right - left >= width - 2 or bottom - top >= height - 2:
            continue
        # A blob that finds no free spot is left out: blobs are decoys, their number is random anyway.
        for _attempt in range(_PLACEMENT_ATTEMPTS):
            cx, cy = rng.uniform(1 - left, width - 1 - right), rng.uniform(1 - top, height - 1 - bottom)
            box = (cx + left, cy + top, cx + right, cy + bottom)
            # Blobs lie under the shapes: keep most of each blob in view, and never let its box
            # pass for a shape's box.
            if any(intersection(box, shape.box) > 0.3 * area(box) for shape in shapes):
                continue
            points = offsets + (cx, cy)
            bbox = (int(math.floor(box[0])), int(math.floor(box[1])), int(math.ceil(box[2])) + 1, int(math.ceil(box[3])) + 1)
            rgb = (rng.integer(30, 230), rng.integer(30, 230), rng.integer(30, 230))
            distractors.append(_DistractorPlan(points, bbox, rgb))
            break
    return distractors


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------


def _render(plan: _ScenePlan, config: ShapeWorldConfig) -> tuple[Image.Image, np.ndarray]:
    """The RGB image and a label map (0 = no shape, i + 1 = shape i on top there)."""
    # Every colour is kept `noise` away from 0 and 255, so the noise can be added modulo 256 (a fast
    # integer op) without ever wrapping. Nothing is anti-aliased except text, which blends two
    # such colours, so no pixel leaves that range.
    low, high = config.noise, 255 - config.noise

    def ink(rgb) -> tuple[int, int, int]:
        return (min(high, max(low, int(rgb[0]))), min(high, max(low, int(rgb[1]))), min(high, max(low, int(rgb[2]))))

    image = Image.new("RGB", (plan.width, plan.height), ink(plan.background))
    draw = ImageDraw.Draw(image)
    for points, rgb, line_width in plan.lines:
        draw.line(points, fill=ink(rgb), width=line_width)
    for box, rgb in plan.specks:
        draw.ellipse(box, fill=ink(rgb))
    for blob in plan.distractors:
        draw.polygon(blob.points.ravel().tolist(), fill=ink(blob.rgb))
    labels = Image.new("L", (plan.width, plan.height), 0)
    label_draw = ImageDraw.Draw(labels)
    for i, shape in enumerate(plan.shapes):
        _draw_fill(draw, shape, ink(shape.rgb))
        _draw_fill(label_draw, shape, i + 1)
        if shape.texture != "plain":
            _paint_texture(image, labels, i + 1, shape, ink(_darker(shape.rgb, 0.6)))
        if shape.outline:
            _draw_outline(draw, shape, ink(_darker(shape.rgb, 0.4)))
            _draw_outline(label_draw, shape, i + 1)
        if shape.word:
            text_ink = (20, 20, 20) if _luminance(shape.rgb) > 140 else (245, 245, 245)
            draw.text(shape.center, shape.word, fill=ink(text_ink), font=_font(shape.font_size), anchor="mm")
    if config.noise:
        ox, oy = plan.noise_offset
        noise = _noise_field(plan.width, plan.height, config.noise).crop((ox, oy, ox + plan.width, oy + plan.height))
        image = ImageChops.add_modulo(image, noise)
    return image, np.asarray(labels)


def _draw_fill(draw: ImageDraw.ImageDraw, shape: _ShapePlan, fill) -> None:
    if shape.category == "ring":
        draw.ellipse(shape.box, outline=fill, width=_ring_width(shape.radius))
    elif shape.category == "circle":
        draw.ellipse(shape.box, fill=fill)
    else:
        draw.polygon(shape.points.ravel().tolist(), fill=fill)


def _draw_outline(draw: ImageDraw.ImageDraw, shape: _ShapePlan, outline) -> None:
    # A separate call from the fill: Pillow skips an outline whose ink equals the fill, and the
    # label map draws both with the shape's id, so it must take the same path as the image.
    if shape.category == "circle":
        draw.ellipse(shape.box, outline=outline, width=_outline_width(shape.radius))
    elif shape.category != "ring":
        draw.polygon(shape.points.ravel().tolist(), outline=outline, width=_outline_width(shape.radius))


def _paint_texture(image: Image.Image, labels: Image.Image, label: int, shape: _ShapePlan, colour) -> None:
    """Stripes or dots over the shape's fill, exactly where the label map says the shape is."""
    x1, y1 = int(math.floor(shape.box[0])), int(math.floor(shape.box[1]))
    x2, y2 = int(math.ceil(shape.box[2])) + 1, int(math.ceil(shape.box[3])) + 1
    inside = labels.crop((x1, y1, x2, y2)).point([255 if value == label else 0 for value in range(256)])
    pattern = _pattern(shape.texture, image.width, image.height).crop((x1, y1, x2, y2))
    image.paste(colour, (x1, y1, x2, y2), ImageChops.multiply(inside, pattern))


@functools.lru_cache(maxsize=16)
def _pattern(texture: str, width: int, height: int) -> Image.Image:
    """A full-image mask of stripes or dots (255 = paint), cut out per shape."""
    period = max(4, round(min(width, height) / 40))
    y, x = np.mgrid[0 : height + 2, 0 : width + 2]
    if texture == "striped":
        on = (x + y) % period < period / 2
    else:
        on = (x % period < period / 2) & (y % period < period / 2)
    return Image.fromarray((on * 255).astype(np.uint8), mode="L")


@functools.lru_cache(maxsize=8)
def _noise_field(width: int, height: int, amplitude: int) -> Image.Image:
    """Uniform noise in [-amplitude, amplitude] stored modulo 256 (for `ImageChops.add_modulo`),
    twice the image size; each scene takes a crop at its planned offset. The field itself comes
    from a fixed seed, so a scene's noise depends only on that offset."""
    rng = np.random.default_rng(0x5EED)
    values = rng.integers(-amplitude, amplitude + 1, size=(2 * height, 2 * width, 3)).astype(np.uint8)
    return Image.fromarray(values, mode="RGB")


def _darker(rgb, factor: float) -> tuple[int, int, int]:
    return tuple(int(v * factor) for v in rgb)


def _luminance(rgb) -> float:
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]


# ---------------------------------------------------------------------------------------------
# Measuring what is visible
# ---------------------------------------------------------------------------------------------


def _measure(plan: _ScenePlan, labels: np.ndarray) -> list[ShapeObject]:
    objects = []
    for i, shape in enumerate(plan.shapes):
        x1, y1 = max(0, int(math.floor(shape.box[0]))), max(0, int(math.floor(shape.box[1])))
        x2, y2 = min(plan.width, int(math.ceil(shape.box[2])) + 2), min(plan.height, int(math.ceil(shape.box[3])) + 2)
        mine = labels[y1:y2, x1:x2] == i + 1
        visible = int(np.count_nonzero(mine))
        if visible == 0:
            bbox, fraction = (x1, y1, x1, y1), 0.0
        else:
            rows = np.nonzero(mine.any(axis=1))[0]
            cols = np.nonzero(mine.any(axis=0))[0]
            bbox = (x1 + int(cols[0]), y1 + int(rows[0]), x1 + int(cols[-1]) + 1, y1 + int(rows[-1]) + 1)
            fraction = visible / _pixels_alone(shape, x1, y1, x2, y2) if shape.covered else 1.0
        objects.append(
            ShapeObject(
                id=i,
                category=shape.category,
                colour=shape.colour,
                size=shape.size,
                bbox=bbox,
                area=visible,
                visible_fraction=round(min(1.0, fraction), 4),
                amodal_bbox=tuple(round(v, 2) for v in shape.box),
                rotation=shape.rotation,
                texture=shape.texture,
                outline=shape.outline,
                rgb=shape.rgb,
                word=shape.word,
                word_bbox=shape.word_bbox,
            )
        )
    return objects


def _pixels_alone(shape: _ShapePlan, x1: int, y1: int, x2: int, y2: int) -> int:
    """Pixels the shape covers when drawn on its own (its visible area if nothing hid it)."""
    mask = Image.new("L", (x2 - x1, y2 - y1), 0)
    moved = replace(
        shape,
        box=(shape.box[0] - x1, shape.box[1] - y1, shape.box[2] - x1, shape.box[3] - y1),
        points=None if shape.points is None else shape.points - (x1, y1),
    )
    draw = ImageDraw.Draw(mask)
    _draw_fill(draw, moved, 1)
    if shape.outline:
        _draw_outline(draw, moved, 1)
    return max(1, int(np.count_nonzero(np.asarray(mask))))
