"""Generated scenes with known objects, to measure proposers (recall at k) in tests and benchmarks.

A scene is a few well-separated filled shapes (rectangles, ellipses, triangles) on either a
plain noisy background (``clutter=False``) or a photo-like one (``clutter=True``: a colour
gradient strewn with blurred small blobs, objects outlined and crossed by a stripe of another
colour). Every object's box is exact. Scene ``seed`` is always the same image.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

from vlmfo1.proposals.base import box_iou

# Gap in pixels (at 640 px width) that keeps objects "clearly separated".
_SEPARATION = 10


def make_scene(
    seed: int,
    size: tuple[int, int] = (640, 480),
    clutter: bool = False,
    num_objects: tuple[int, int] = (3, 8),
) -> tuple[Image.Image, np.ndarray]:
    """``(RGB image of size (width, height), float32 [N, 4] xyxy object boxes)``."""
    rng = np.random.default_rng(seed)
    width, height = size
    unit = width / 640
    background = _cluttered_background(rng, width, height, unit) if clutter else _plain_background(rng, width, height)
    base_colour = np.asarray(background.resize((1, 1), Image.Resampling.BOX)).reshape(3).astype(int)
    draw = ImageDraw.Draw(background)
    boxes: list[tuple[int, int, int, int]] = []
    wanted = int(rng.integers(num_objects[0], num_objects[1] + 1))
    gap = max(2, round(_SEPARATION * unit))
    for _ in range(500):
        if len(boxes) == wanted:
            break
        w = int(rng.integers(int(0.07 * width), int(0.3 * width)))
        h = int(rng.integers(int(0.07 * height), int(0.3 * height)))
        x, y = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
        box = (x, y, x + w, y + h)
        if any(box[0] < o[2] + gap and o[0] < box[2] + gap and box[1] < o[3] + gap and o[1] < box[3] + gap for o in boxes):
            continue
        colour = rng.integers(0, 256, 3)
        if not clutter:
            while np.abs(colour - base_colour).sum() < 150:  # clearly visible on the plain background
                colour = rng.integers(0, 256, 3)
        fill = tuple(int(v) for v in colour)
        outline = tuple(int(v) for v in colour // 2) if clutter else fill
        line = max(1, round(3 * unit))
        kind = int(rng.integers(0, 3))
        corners = [x, y, x + w - 1, y + h - 1]
        if kind == 0:
            draw.rectangle(corners, fill=fill, outline=outline, width=line)
        elif kind == 1:
            draw.ellipse(corners, fill=fill, outline=outline, width=line)
        else:
            draw.polygon([(x, y + h - 1), (x + w - 1, y + h - 1), (x + w // 2, y)], fill=fill, outline=outline)
        if clutter:
            stripe = tuple(int(v) for v in 255 - colour)
            draw.line([x + w // 4, y + h // 2, x + 3 * w // 4, y + h // 2], fill=stripe, width=max(2, h // 10))
        boxes.append(box)
    pixels = np.asarray(background).astype(np.float32) + rng.normal(0, 6 if clutter else 12, (height, width, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    return image, np.asarray(boxes, dtype=np.float32).reshape(-1, 4)


def _plain_background(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    colour = tuple(int(v) for v in rng.integers(60, 200, 3))
    return Image.new("RGB", (width, height), colour)


def _cluttered_background(rng: np.random.Generator, width: int, height: int, unit: float) -> Image.Image:
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    start, end = rng.integers(40, 220, 3), rng.integers(40, 220, 3)
    ramp = xx / width * rng.uniform(-1, 1) + yy / height * rng.uniform(-1, 1)
    ramp = (ramp - ramp.min()) / (ramp.max() - ramp.min() + 1e-9)
    pixels = start * (1 - ramp[..., None]) + end * ramp[..., None]
    image = Image.fromarray(pixels.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(150):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        radius = int(rng.integers(2, 12) * unit) + 1
        colour = tuple(int(v) for v in np.clip(pixels[y, x] + rng.normal(0, 40, 3), 0, 255))
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=colour)
    return image.filter(ImageFilter.GaussianBlur(1.5 * unit))


def recall(gt_boxes: np.ndarray, proposal_boxes: np.ndarray | torch.Tensor, iou: float = 0.5) -> float:
    """Share of ground-truth boxes matched by some proposal with IoU >= ``iou`` (1.0 if no GT)."""
    gt = torch.as_tensor(np.asarray(gt_boxes, dtype=np.float32)).reshape(-1, 4)
    proposals = torch.as_tensor(proposal_boxes, dtype=torch.float32).reshape(-1, 4)
    if len(gt) == 0:
        return 1.0
    if len(proposals) == 0:
        return 0.0
    return float((box_iou(gt, proposals).amax(dim=1) >= iou).float().mean())


__all__ = ["make_scene", "recall"]
