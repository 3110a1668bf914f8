"""Pictures of scenes with their boxes, for previews and docs."""
from __future__ import annotations

from PIL import Image, ImageDraw, ImageFont

from vlmfo1.data.shapeworld.proposals import Proposals
from vlmfo1.data.shapeworld.scene import Scene


def draw_scene(scene: Scene, proposals: Proposals | None = None, scale: int = 2) -> Image.Image:
    """The scene enlarged `scale` times, each object's box and label drawn on it; with `proposals`,
    boxes are tagged with their region index instead ("<3> red circle") and boxes that hold no object
    are drawn dashed-grey."""
    canvas = scene.image.resize((scene.width * scale, scene.height * scale), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=max(10, 5 * scale))
    if proposals is not None:
        for k, (box, obj) in enumerate(zip(proposals.boxes, proposals.object_ids)):
            if obj < 0:
                _dashed_box(draw, [v * scale for v in box], (150, 150, 150))
                _tag(draw, (box[0] * scale, box[1] * scale), f"<{k}>", font)
    for obj in scene.objects:
        box = [v * scale for v in obj.bbox]
        draw.rectangle(box, outline=(0, 0, 0), width=3)
        draw.rectangle(box, outline=(255, 255, 255), width=1)
        label = obj.label if proposals is None else f"<{proposals.index_of(obj.id)}> {obj.label}"
        _tag(draw, (box[0], box[1]), label, font)
    return canvas


def side_by_side(scene: Scene, proposals: Proposals | None = None, scale: int = 2) -> Image.Image:
    """The plain scene (what a model sees) next to `draw_scene`'s annotated copy."""
    annotated = draw_scene(scene, proposals, scale)
    plain = scene.image.resize(annotated.size, Image.Resampling.NEAREST)
    gap = 4 * scale
    canvas = Image.new("RGB", (2 * annotated.width + gap, annotated.height), (255, 255, 255))
    canvas.paste(plain, (0, 0))
    canvas.paste(annotated, (annotated.width + gap, 0))
    return canvas


def _tag(draw: ImageDraw.ImageDraw, corner, text: str, font) -> None:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    x, y = corner[0], max(0, corner[1] - (bottom - top) - 3)
    draw.rectangle((x, y, x + right - left + 4, y + bottom - top + 3), fill=(0, 0, 0))
    draw.text((x + 2 - left, y + 1 - top), text, fill=(255, 255, 255), font=font)


def _dashed_box(draw: ImageDraw.ImageDraw, box, colour, dash: int = 6) -> None:
    x1, y1, x2, y2 = box
    for start in range(int(x1), int(x2), 2 * dash):
        end = min(start + dash, x2)
        draw.line((start, y1, end, y1), fill=colour)
        draw.line((start, y2, end, y2), fill=colour)
    for start in range(int(y1), int(y2), 2 * dash):
        end = min(start + dash, y2)
        draw.line((x1, start, x1, end), fill=colour)
        draw.line((x2, start, x2, end), fill=colour)
