"""Gradio demo: upload an image, draw regions or let a proposer find them, ask a task, see the answer.

    vlmfo1 ui                       # the bundled ShapeWorld model
    vlmfo1 ui --model PATH          # any checkpoint

Regions: click two opposite corners on the image to draw a box (box K is `<regionK>`; the prompt
may name it), or edit the boxes text (one `x1, y1, x2, y2` per line). Without boxes the chosen
proposer finds regions, and proposals below the score threshold are dropped. Outputs: the
annotated image, the proposals (each tagged with its region index), the raw answer and the JSON.

The app answers through the same `InferenceEngine` as the HTTP API (same limits, micro-batching).
It never contacts the internet: analytics are off and nothing is shared.
"""
# No `from __future__ import annotations` here: Gradio reads the event handlers' annotations
# (gr.SelectData) at run time, and `gr` is imported inside build_demo.
import os

# Before gradio is imported: it reads the setting at import time.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import re  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any, Sequence  # noqa: E402

from PIL import Image  # noqa: E402

from vlmfo1.serving.engine import (  # noqa: E402
    TASK_TEXT_ARGS,
    TASKS_NEEDING_BOXES,
    InferenceEngine,
    RegionOptions,
)
from vlmfo1.serving.limits import InvalidRequest, PayloadTooLarge, ServingError  # noqa: E402


@dataclass(frozen=True)
class Template:
    """A task the app offers, and what its text box asks for (`TASK_TEXT_ARGS` says which argument it fills)."""

    task: str
    text_hint: str
    extra: tuple[tuple[str, Any], ...] = ()

    @property
    def text_arg(self) -> str | None:
        return TASK_TEXT_ARGS.get(self.task)

    @property
    def needs_boxes(self) -> bool:
        return self.task in TASKS_NEEDING_BOXES


TEMPLATES: dict[str, Template] = {
    "Detection": Template("detect", "categories, comma-separated (e.g. red circle, blue star)"),
    "Referring expression (REC)": Template("refer", "the object to find (e.g. the largest red shape)"),
    "Counting": Template("count", "what to count (e.g. circle)"),
    "Region OCR": Template("ocr", "(no text: reads the text in each drawn box)"),
    "Brief region caption": Template("caption", "(no text: describes each drawn box)"),
    "Detailed region caption": Template("caption", "(no text: describes each drawn box)", (("detailed", True),)),
    "Region reasoning": Template("reason", "a question; may name regions as <region0>"),
    "Detect everything": Template("detect_everything", "(no text)"),
    "Grounded caption": Template("grounded_caption", "(no text)"),
    "Free prompt": Template("ask", "any prompt; name regions as <region0>, <region1>, ..."),
}
DEFAULT_TEMPLATE = "Detection"
NO_PROPOSER = "(none: use drawn boxes only)"


def parse_boxes(text: str | None) -> list[list[float]]:
    """`"x1, y1, x2, y2"` per line (commas or spaces; brackets allowed) -> boxes; a clear error otherwise."""
    boxes = []
    for number, line in enumerate((text or "").splitlines(), start=1):
        cleaned = line.strip().strip("[](),")
        if not cleaned:
            continue
        parts = [p for p in re.split(r"[,\s]+", cleaned) if p]
        try:
            values = [float(p) for p in parts]
        except ValueError:
            raise InvalidRequest(f"boxes line {number} ({line.strip()!r}) is not four numbers x1, y1, x2, y2") from None
        if len(values) != 4:
            raise InvalidRequest(f"boxes line {number} has {len(values)} numbers; a box is x1, y1, x2, y2")
        x1, y1, x2, y2 = values
        boxes.append([min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)])
    return boxes


def format_boxes(boxes: Sequence[Sequence[float]]) -> str:
    return "\n".join(", ".join(f"{v:g}" for v in box) for box in boxes)


def add_corner(corner: tuple[float, float] | None, point: tuple[float, float], boxes: list[list[float]]):
    """A click: the first corner of a box is remembered; the second completes the box.

    Returns (pending corner, boxes)."""
    if corner is None:
        return (float(point[0]), float(point[1])), boxes
    (x1, y1), (x2, y2) = corner, point
    box = [min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)]
    if box[2] - box[0] < 1 or box[3] - box[1] < 1:
        return None, boxes  # two clicks on one spot: no box
    return None, [*boxes, box]


def template_request(template_name: str, text: str, boxes: list[list[float]]) -> tuple[str, dict[str, Any]]:
    """(serving task, its arguments) for a template, the text box and the drawn boxes."""
    if template_name not in TEMPLATES:
        raise InvalidRequest(f"unknown task template {template_name!r}")
    template = TEMPLATES[template_name]
    args: dict[str, Any] = dict(template.extra)
    if template.text_arg is not None:
        if not (text or "").strip():
            raise InvalidRequest(f"{template_name} needs text: {template.text_hint}")
        args[template.text_arg] = text.strip()
    if template.needs_boxes and not boxes:
        raise InvalidRequest(f"{template_name} works on drawn boxes: click two corners on the image to draw one")
    args["boxes"] = boxes or None
    return template.task, args


def proposals_view(image: Image.Image, result) -> Image.Image:
    """The regions the model saw, each tagged with its region index."""
    from vlmfo1.pipeline.results import FO1Result, Region
    from vlmfo1.pipeline.visualize import draw_result

    proposals = result.proposals
    scores = proposals.scores or [None] * len(proposals)
    regions = [Region(k, list(box), None, 0.0 if s is None else s, s, None) for k, (box, s) in enumerate(zip(proposals.boxes, scores))]
    view = FO1Result(result.task, result.image_size, [], "", [], proposals, mentions=regions)
    return draw_result(image, view, show_answer=False)


def same_picture(a: Image.Image | None, b: Image.Image | None) -> bool:
    """Whether two images hold the same pixels (an upload of the picture already shown)."""
    return a is not None and b is not None and a.size == b.size and a.mode == b.mode and a.tobytes() == b.tobytes()


def boxes_view(image: Image.Image, boxes: list[list[float]]) -> Image.Image:
    """The uploaded image at its own size with the drawn boxes tagged #K (so clicks map to pixels)."""
    from vlmfo1.pipeline.results import FO1Result, ProposalSet, Region
    from vlmfo1.pipeline.visualize import draw_result

    if not boxes:
        return image
    clipped = [[min(max(v, 0.0), bound) for v, bound in zip(box, (image.width, image.height) * 2)] for box in boxes]
    regions = [Region(k, box, None, 1.0, None, None) for k, box in enumerate(clipped)]
    view = FO1Result("boxes", image.size, [], "", [], ProposalSet(clipped), mentions=regions)
    return draw_result(image, view, show_answer=False, scale=1.0)


def run_template(engine: InferenceEngine, image: Image.Image | None, boxes_text: str, template_name: str, text: str,
                 proposer: str | None, min_score: float | None):
    """Answers one UI request: (annotated image, proposals image, raw answer, result JSON)."""
    from vlmfo1.pipeline.visualize import draw_result

    if image is None:
        raise InvalidRequest("upload an image first")
    if image.width * image.height > engine.limits.max_image_pixels:
        raise PayloadTooLarge(f"the image has {image.width * image.height} pixels; the limit is {engine.limits.max_image_pixels}")
    image = image.convert("RGB")
    boxes = parse_boxes(boxes_text)
    task, args = template_request(template_name, text, boxes)
    regions = None
    if not boxes:
        if proposer in (None, "", NO_PROPOSER):
            raise InvalidRequest("draw a box or pick a proposer")
        regions = RegionOptions(proposer, min_score if min_score else None)
    result = engine.answer(task, image, args, regions)
    return draw_result(image, result), proposals_view(image, result), "\n".join(result.raw_answers), result.to_dict()


def build_demo(engine: InferenceEngine, title: str = "VLM-FO1"):
    import gradio as gr

    # Clicks on a new picture may be handled before its upload event (another queue); they have then
    # stored this very picture as the original, and the boxes drawn on it are kept.
    def on_upload(image, original):
        if same_picture(image, original):
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        return image, None, [], ""

    # The drawn boxes live in server-side state, so clicks handled one after another (in order) each
    # see the boxes of the clicks before. A click may be handled before the upload event has stored
    # the original; until a box is drawn the picture shown *is* the original, so use it then.
    def on_click(shown, original, corner, drawn, event: gr.SelectData):
        original = original if original is not None else shown
        if original is None:
            return None, corner, drawn, gr.skip(), gr.skip()
        corner, drawn = add_corner(corner, tuple(event.index[:2]), drawn or [])
        return original, corner, drawn, format_boxes(drawn), boxes_view(original, drawn)

    def on_boxes_typed(original, boxes_text):
        try:
            boxes = parse_boxes(boxes_text)
        except InvalidRequest:
            return gr.skip(), gr.skip()  # a half-typed line: keep boxes and picture until it parses
        return boxes, boxes_view(original, boxes) if original is not None else gr.skip()

    def on_clear_boxes(original):
        return None, [], "", original

    def on_template(name):
        template = TEMPLATES[name]
        return gr.update(placeholder=template.text_hint, interactive=template.text_arg is not None)

    def on_run(shown, original, boxes_text, template_name, text, proposer, min_score):
        original = original if original is not None else shown
        try:
            annotated, proposals, raw, data = run_template(engine, original, boxes_text, template_name, text, proposer, min_score)
        except ServingError as error:
            raise gr.Error(error.message) from None
        summary = f"**{template_name}** done: {len(data['detections'])} detection(s), {len(data['proposals']['boxes'])} region(s)"
        return annotated, proposals, raw, data, summary

    proposer_choices = [NO_PROPOSER, *sorted(engine.proposers)]
    with gr.Blocks(title=title) as demo:
        original = gr.State(None)  # the uploaded image, without drawn boxes
        corner = gr.State(None)  # first corner of a box being drawn
        drawn = gr.State([])  # the boxes drawn or typed so far
        gr.Markdown(
            f"# {title} — `{engine.model_name}`\n"
            "Upload an image. **Draw regions** by clicking two opposite corners (box K is `<regionK>`), "
            "or leave the boxes empty and pick a proposer. Choose a task and run."
        )
        with gr.Row():
            with gr.Column():
                image_in = gr.Image(type="pil", label="Image (click two corners to draw a box)", sources=["upload", "clipboard"],
                                    format="png", height=360, elem_id="input-image")
                boxes_text = gr.Textbox(label="Boxes: x1, y1, x2, y2 per line (line K is <regionK>)", lines=3, elem_id="boxes")
                clear = gr.Button("Clear boxes", size="sm", elem_id="clear-boxes")
                template = gr.Dropdown(list(TEMPLATES), value=DEFAULT_TEMPLATE, label="Task", elem_id="task")
                text = gr.Textbox(label="Text", placeholder=TEMPLATES[DEFAULT_TEMPLATE].text_hint, elem_id="prompt-text")
                with gr.Row():
                    proposer = gr.Dropdown(proposer_choices, value=engine.default_proposer or NO_PROPOSER, label="Proposer (when no boxes)",
                                           elem_id="proposer")
                    min_score = gr.Slider(0.0, 1.0, value=0.0, step=0.01, label="Proposal score threshold", elem_id="min-score")
                run = gr.Button("Run", variant="primary", elem_id="run")
            with gr.Column():
                status = gr.Markdown(elem_id="status")
                annotated = gr.Image(label="Answer", format="png", interactive=False, elem_id="annotated")
                proposals = gr.Image(label="Regions (proposals)", format="png", interactive=False, elem_id="proposals")
                raw = gr.Textbox(label="Raw answer", lines=3, interactive=False, elem_id="raw-answer")
                result_json = gr.JSON(label="Result JSON", elem_id="result-json")

        image_in.upload(on_upload, [image_in, original], [original, corner, drawn, boxes_text])
        image_in.clear(lambda: (None, None, [], ""), None, [original, corner, drawn, boxes_text])
        # Every click counts (two make a box): no progress overlay on the picture to swallow the next
        # click, and clicks are handled one at a time (a box does not depend on which corner came first).
        image_in.select(on_click, [image_in, original, corner, drawn], [original, corner, drawn, boxes_text, image_in],
                        trigger_mode="multiple", concurrency_limit=1, show_progress="hidden")
        # always_last: keystrokes that come while the picture is redrawn are not lost; the last text wins.
        boxes_text.input(on_boxes_typed, [original, boxes_text], [drawn, image_in], trigger_mode="always_last", show_progress="hidden")
        clear.click(on_clear_boxes, original, [corner, drawn, boxes_text, image_in])
        template.change(on_template, template, text)
        run.click(
            on_run, [image_in, original, boxes_text, template, text, proposer, min_score], [annotated, proposals, raw, result_json, status],
            concurrency_limit=engine.limits.max_batch_size,
        )
    demo.queue(max_size=engine.limits.max_queue)
    return demo


def launch(engine: InferenceEngine, host: str = "127.0.0.1", port: int = 7860, block: bool = True):
    """Serves the demo; never shares it publicly. `block=False` returns once it is up (tests)."""
    demo = build_demo(engine)
    demo.launch(
        server_name=host,
        server_port=port,
        share=False,
        inbrowser=False,
        prevent_thread_lock=not block,
        max_file_size=engine.limits.max_image_bytes,
        quiet=True,
        footer_links=[],
        ssr_mode=False,
    )
    return demo
