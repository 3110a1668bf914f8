"""Annotated pictures of pipeline results.

Detections: a box per region in its label's colour, tagged "label score #index"; masks (when the
proposer gave them) filled faintly in the same colour. Free-text mentions: white boxes tagged
"#index". Region answers (captions, OCR): gold boxes tagged "#index: text". Optionally every proposal
as a thin grey box underneath. The question and the answer are written under the picture.
"""
from __future__ import annotations

import textwrap
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from vlmfo1.pipeline.results import FO1Result

# Distinct, readable on light and dark backgrounds (Tableau 10).
PALETTE = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
)
MENTION_COLOUR = (255, 255, 255)
REGION_ANSWER_COLOUR = (255, 215, 0)  # not in the palette: a caption box is no detection
PROPOSAL_COLOUR = (200, 200, 200, 110)
# Small images are enlarged to at least this long side, so that tags stay legible.
MIN_LONG_SIDE = 640
_FOOTER_LINES_EACH = 3  # lines of the question and of the answer under the picture


def draw_result(
    image: Image.Image,
    result: FO1Result,
    *,
    show_proposals: bool = False,
    show_masks: bool = True,
    show_answer: bool = True,
    scale: float | None = None,
) -> Image.Image:
    """The image with `result` drawn on it (a new RGB image). `scale` enlarges it (default: small
    images are scaled up by an integer factor to a long side of at least 640 pixels)."""
    if image.size != tuple(result.image_size):
        raise ValueError(f"the result is for a {result.image_size[0]}x{result.image_size[1]} image, got {image.size[0]}x{image.size[1]}")
    if scale is None:
        scale = float(max(1, -(-MIN_LONG_SIDE // max(image.size))))
    width, height = round(image.width * scale), round(image.height * scale)
    canvas = image.convert("RGBA").resize((width, height), Image.Resampling.NEAREST if scale >= 2 else Image.Resampling.BILINEAR)
    font = ImageFont.load_default(size=max(11, min(22, round(min(width, height) / 40))))
    line = max(2, round(min(width, height) / 250))
    colours = _label_colours([r.label for r in result.detections])

    if show_masks and result.proposals.masks is not None:
        canvas = _fill_masks(canvas, result, colours)
    overlay = Image.new("RGBA", canvas.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    if show_proposals:
        for box in result.proposals.boxes:
            draw.rectangle(_scaled(box, scale), outline=PROPOSAL_COLOUR, width=1)
    canvas = Image.alpha_composite(canvas, overlay)

    draw = ImageDraw.Draw(canvas)
    for answer in result.region_answers:
        _box_with_tag(draw, _scaled(answer.box, scale), f"#{answer.index}: {_short(answer.text)}", REGION_ANSWER_COLOUR, line, font)
    for region in result.mentions:
        _box_with_tag(draw, _scaled(region.box, scale), f"#{region.index}", MENTION_COLOUR, line, font)
    for region in result.detections:
        tag = f"{region.label} {region.score:.2f} #{region.index}"
        _box_with_tag(draw, _scaled(region.box, scale), tag, colours[region.label], line, font)
    canvas = canvas.convert("RGB")
    if show_answer:
        canvas = _with_footer(canvas, _footer_text(result), font)
    return canvas


def _label_colours(labels: Sequence[str | None]) -> dict[str | None, tuple[int, int, int]]:
    colours: dict[str | None, tuple[int, int, int]] = {}
    for label in labels:
        if label not in colours:
            colours[label] = PALETTE[len(colours) % len(PALETTE)]
    return colours


def _scaled(box: Sequence[float], scale: float) -> list[float]:
    return [v * scale for v in box]


def _short(text: str, limit: int = 40) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _fill_masks(canvas: Image.Image, result: FO1Result, colours) -> Image.Image:
    masks = np.asarray(result.proposals.masks, dtype=bool)
    layer = np.zeros((*masks.shape[1:], 4), dtype=np.uint8)
    for region in result.detections:
        layer[masks[region.index]] = (*colours[region.label], 100)
    mask_image = Image.fromarray(layer, "RGBA").resize(canvas.size, Image.Resampling.NEAREST)
    return Image.alpha_composite(canvas, mask_image)


def _box_with_tag(draw: ImageDraw.ImageDraw, box, text: str, colour, line: int, font) -> None:
    x1, y1, x2, y2 = box
    draw.rectangle((x1, y1, x2, y2), outline=(0, 0, 0), width=line + 2)
    draw.rectangle((x1, y1, x2, y2), outline=colour, width=line)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    tag_height = bottom - top + 4
    y = y1 - tag_height if y1 - tag_height >= 0 else y1  # inside the box when there is no room above
    draw.rectangle((x1, y, x1 + right - left + 6, y + tag_height), fill=colour)
    ink = (0, 0, 0) if sum(colour[:3]) > 382 else (255, 255, 255)
    draw.text((x1 + 3 - left, y + 2 - top), text, fill=ink, font=font)


def _footer_text(result: FO1Result) -> list[str]:
    """The question(s) and the answer, as paragraphs."""
    queries = result.queries
    asked = queries[0] if len(queries) == 1 else f"{len(queries)} questions, the first: {queries[0]}" if queries else ""
    answer = " | ".join(part for part in result.answer.splitlines() if part.strip()) or "(empty answer)"
    if result.count is not None:
        answer = f"count {result.count}; {answer}"
    return [f"{result.task}: {asked}", f"answer: {answer}"]


def _with_footer(canvas: Image.Image, paragraphs: list[str], font) -> Image.Image:
    probe = ImageDraw.Draw(canvas)
    char_width = max(1, probe.textlength("n", font=font))
    width = max(10, int((canvas.width - 12) / char_width))
    lines: list[str] = []
    for paragraph in paragraphs:
        wrapped = textwrap.wrap(paragraph, width=width)
        if len(wrapped) > _FOOTER_LINES_EACH:
            wrapped = wrapped[:_FOOTER_LINES_EACH]
            wrapped[-1] = wrapped[-1][:-1] + "…"
        lines += wrapped
    left, top, right, bottom = probe.textbbox((0, 0), "Ag", font=font)
    line_height = bottom - top + 4
    out = Image.new("RGB", (canvas.width, canvas.height + line_height * len(lines) + 8), (255, 255, 255))
    out.paste(canvas, (0, 0))
    draw = ImageDraw.Draw(out)
    for k, text_line in enumerate(lines):
        draw.text((6, canvas.height + 4 + k * line_height - top), text_line, fill=(0, 0, 0), font=font)
    return out
