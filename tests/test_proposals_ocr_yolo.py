"""Text-region (rapidocr) and ultralytics YOLO proposers."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from vlmfo1.proposals import build_proposer
from vlmfo1.proposals.scenes import recall


def text_image():
    image = Image.new("RGB", (400, 200), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=32)
    lines = [((20, 30), "HELLO WORLD"), ((50, 120), "region ocr")]
    truth = []
    for origin, text in lines:
        draw.text(origin, text, fill="black", font=font)
        truth.append(draw.textbbox(origin, text, font=font))
    return image, np.asarray(truth, dtype=np.float32)


@pytest.fixture(scope="module")
def ocr():
    pytest.importorskip("rapidocr", reason="rapidocr is not installed (extra: ocr)")
    return build_proposer("rapidocr", recognize=True)


def test_rapidocr_finds_text_lines_with_their_text(ocr):
    image, truth = text_image()
    out = ocr(image)
    assert len(out) == 2
    assert recall(truth, out.boxes, iou=0.5) == 1.0
    assert sorted(out.labels) == ["HELLO WORLD", "region ocr"]
    assert all(0.5 < s <= 1.0 for s in out.scores.tolist())


def test_rapidocr_detection_only_and_blank_image():
    pytest.importorskip("rapidocr", reason="rapidocr is not installed (extra: ocr)")
    detector = build_proposer("rapidocr")
    image, truth = text_image()
    out = detector(image)
    assert out.labels is None and recall(truth, out.boxes, iou=0.5) == 1.0
    assert len(detector(Image.new("RGB", (120, 80), "white"))) == 0


def test_yolo_proposer(tmp_path):
    ultralytics = pytest.importorskip("ultralytics", reason="ultralytics is not installed (extra: yolo; it needs torchvision)")
    with pytest.raises(FileNotFoundError, match="does not download"):
        build_proposer(f"yolo:{tmp_path / 'missing.pt'}")
    # A randomly initialised YOLO saved locally: checks loading and the box frame, not detection quality.
    model = ultralytics.YOLO("yolov8n.yaml")
    weights = tmp_path / "tiny.pt"
    model.save(str(weights))
    proposer = build_proposer(f"yolo:{weights}", confidence=0.0)
    out = proposer(Image.new("RGB", (200, 120), (90, 140, 30)))
    assert len(out) <= 100
    if len(out):
        assert out.boxes[:, 2].max() <= 200 and out.boxes[:, 3].max() <= 120
