"""The Gradio app's logic (without a browser): box drawing, templates, and a full run on a tiny model."""
from __future__ import annotations

import pytest
from PIL import Image, ImageDraw

pytest.importorskip("gradio")
from vlmfo1 import prompts  # noqa: E402
from vlmfo1.serving.app import (  # noqa: E402
    NO_PROPOSER,
    TEMPLATES,
    add_corner,
    build_demo,
    format_boxes,
    parse_boxes,
    run_template,
    template_request,
)
from vlmfo1.serving.engine import InferenceEngine  # noqa: E402
from vlmfo1.serving.limits import InvalidRequest, PayloadTooLarge, ServingLimits  # noqa: E402


@pytest.fixture(scope="module")
def engine(serving_model_dir):
    import torch

    from vlmfo1.pipeline import FO1Pipeline
    from vlmfo1.proposals import build_proposer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    pipeline = FO1Pipeline.from_pretrained(serving_model_dir, proposer=None, max_new_tokens=8)
    engine = InferenceEngine(pipeline, model_name="tiny", limits=ServingLimits(max_image_pixels=100_000),
                             proposers={"contours": build_proposer("contours")}, default_proposer="contours")
    yield engine
    engine.close()
    torch.set_num_threads(threads)


def scene() -> Image.Image:
    image = Image.new("RGB", (160, 120), (30, 40, 180))
    ImageDraw.Draw(image).ellipse([10, 12, 50, 52], fill=(230, 20, 20))
    return image


def test_parse_boxes_accepts_commas_spaces_and_brackets():
    assert parse_boxes("1, 2, 3, 4\n\n[5 6 7 8]\n(9,10, 11,12)") == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]]
    assert parse_boxes("30, 40, 10, 20") == [[10, 20, 30, 40]]  # corners in any order
    assert parse_boxes("") == [] and parse_boxes(None) == []


@pytest.mark.parametrize("text, message", [("1, 2, 3", "has 3 numbers"), ("a, b, c, d", "line 1"), ("1,2,3,4\n1,2,x,4", "line 2")])
def test_parse_boxes_names_the_bad_line(text, message):
    with pytest.raises(InvalidRequest, match=message):
        parse_boxes(text)


def test_two_clicks_draw_one_box_and_boxes_accumulate():
    corner, boxes = add_corner(None, (50, 60), [])
    assert corner == (50.0, 60.0) and boxes == []
    corner, boxes = add_corner(corner, (10, 20), boxes)
    assert corner is None and boxes == [[10, 20, 50, 60]]
    corner, boxes = add_corner(None, (100, 5), boxes)
    corner, boxes = add_corner(corner, (120, 30), boxes)
    assert boxes == [[10, 20, 50, 60], [100, 5, 120, 30]]
    assert parse_boxes(format_boxes(boxes)) == boxes


def test_a_double_click_on_one_spot_draws_nothing():
    corner, boxes = add_corner((10, 10), (10.4, 30), [[1, 2, 3, 4]])
    assert corner is None and boxes == [[1, 2, 3, 4]]


def test_templates_map_to_tasks_and_their_text():
    assert template_request("Detection", " red circle, star ", []) == ("detect", {"categories": "red circle, star", "boxes": None})
    assert template_request("Counting", "circle", [[1, 2, 3, 4]]) == ("count", {"category": "circle", "boxes": [[1, 2, 3, 4]]})
    assert template_request("Detailed region caption", "", [[1, 2, 3, 4]]) == ("caption", {"detailed": True, "boxes": [[1, 2, 3, 4]]})
    assert template_request("Detect everything", "", []) == ("detect_everything", {"boxes": None})
    with pytest.raises(InvalidRequest, match="Counting needs text"):
        template_request("Counting", "  ", [])
    with pytest.raises(InvalidRequest, match="works on drawn boxes"):
        template_request("Region OCR", "", [])
    names = set(TEMPLATES)
    assert {"Detection", "Counting", "Region OCR", "Brief region caption", "Detailed region caption", "Region reasoning",
            "Detect everything", "Grounded caption", "Free prompt"} <= names


def test_run_with_drawn_boxes(engine):
    image = scene()
    annotated, proposals, raw, data = run_template(engine, image, "10, 12, 50, 52\n70, 40, 120, 90", "Free prompt",
                                                   "What is <region1>?", NO_PROPOSER, 0.0)
    assert data["task"] == "ask" and data["queries"] == ["What is <region1>?"]
    assert data["proposals"]["boxes"] == [[10, 12, 50, 52], [70, 40, 120, 90]] and data["proposals"]["source"] == "user"
    assert raw == "\n".join(data["raw_answers"])
    # Pictures: enlarged for legibility, with the answer written under the annotated one.
    assert annotated.width == proposals.width >= 640 and annotated.height > proposals.height


def test_run_with_a_proposer_and_threshold(engine):
    image = scene()
    _, _, _, everything = run_template(engine, image, "", "Detect everything", "", "contours", 0.0)
    scores = everything["proposals"]["scores"]
    assert everything["queries"] == [prompts.detect_everything_prompt()] and everything["proposals"]["source"] == "contours"
    threshold = max(scores)
    _, _, _, best = run_template(engine, image, "", "Detect everything", "", "contours", threshold)
    assert best["proposals"]["scores"] == [s for s in scores if s >= threshold]


def test_run_explains_what_is_missing(engine):
    with pytest.raises(InvalidRequest, match="upload an image first"):
        run_template(engine, None, "", "Detection", "circle", "contours", 0)
    with pytest.raises(InvalidRequest, match="draw a box or pick a proposer"):
        run_template(engine, scene(), "", "Detection", "circle", NO_PROPOSER, 0)
    with pytest.raises(PayloadTooLarge, match="the limit is 100000"):
        run_template(engine, Image.new("RGB", (400, 300)), "", "Detection", "circle", "contours", 0)


def test_demo_builds_with_every_control(engine):
    demo = build_demo(engine)
    ids = {block.elem_id for block in demo.blocks.values() if getattr(block, "elem_id", None)}
    assert {"input-image", "boxes", "task", "prompt-text", "proposer", "min-score", "run", "annotated", "proposals",
            "raw-answer", "result-json"} <= ids


def test_an_upload_handled_after_the_clicks_on_its_picture_keeps_their_box(engine):
    """Clicks and the upload event run on separate queues: when the clicks on a newly uploaded picture
    are handled first, the upload event that follows must not wipe the box they drew."""
    import gradio as gr

    demo = build_demo(engine)
    handlers = {f.fn.__name__: f.fn for f in demo.fns.values()}
    on_click, on_upload = handlers["on_click"], handlers["on_upload"]
    picture = scene()
    state = (None, None, [])  # original, pending corner, drawn boxes: nothing uploaded yet
    for point in ((18, 18), (82, 82)):
        original, corner, drawn, boxes_text, _ = on_click(picture, *state, gr.SelectData(None, {"index": list(point), "value": None}))
        state = (original, corner, drawn)
    assert boxes_text == "18, 18, 82, 82"

    assert on_upload(picture.copy(), state[0]) == (gr.skip(),) * 4  # the same picture, handled late: kept
    other = Image.new("RGB", (64, 48), "white")
    assert on_upload(other, state[0]) == (other, None, [], "")  # a new picture: its boxes start empty
    assert on_upload(picture, None) == (picture, None, [], "")
