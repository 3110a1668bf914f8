"""Classical proposers (no weights) on generated scenes with known objects.

The recall floors below are what the proposers achieve on these fixed scenes (measured when
they were written: contours 65/65 plain and 68/71 cluttered objects, selective search 29/29
and 29/31), less one or two objects of slack for OpenCV builds that round differently.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from vlmfo1.proposals import build_proposer
from vlmfo1.proposals.scenes import make_scene, recall

cv2 = pytest.importorskip("cv2", reason="OpenCV is not installed (extra: proposals)")


def pooled_recall(proposer, seeds, size, clutter):
    matched = total = 0
    for seed in seeds:
        image, boxes = make_scene(seed, size, clutter=clutter)
        proposals = proposer(image)
        assert len(proposals) <= 100
        assert torch.all(proposals.scores[:-1] >= proposals.scores[1:])
        matched += round(recall(boxes, proposals.boxes, iou=0.5) * len(boxes))
        total += len(boxes)
    return matched / total


@pytest.fixture(scope="module")
def contours():
    return build_proposer("contours")


@pytest.fixture(scope="module")
def selective_search():
    if not hasattr(cv2, "ximgproc"):
        pytest.skip("cv2.ximgproc missing (opencv-contrib shadowed); test_proposals_install checks the install")
    return build_proposer("selective-search")


def test_contours_recall_at_100(contours):
    seeds = range(1000, 1012)
    assert pooled_recall(contours, seeds, (640, 480), clutter=False) >= 0.98
    assert pooled_recall(contours, seeds, (640, 480), clutter=True) >= 0.93


def test_selective_search_recall_at_100(selective_search):
    seeds = range(1000, 1006)
    assert pooled_recall(selective_search, seeds, (384, 288), clutter=False) >= 0.96
    assert pooled_recall(selective_search, seeds, (384, 288), clutter=True) >= 0.90


def test_classical_alias_builds_selective_search(selective_search):
    assert type(build_proposer("classical")) is type(selective_search)


@pytest.mark.parametrize("name", ["contours", "selective_search"])
def test_big_image_boxes_map_back_to_original_pixels(name, request):
    proposer = request.getfixturevalue(name)
    image = Image.new("RGB", (1600, 1000), (40, 90, 40))
    truth = (700, 300, 1100, 650)
    ImageDraw.Draw(image).rectangle([truth[0], truth[1], truth[2] - 1, truth[3] - 1], fill=(230, 200, 20))
    proposals = proposer(image)
    assert proposals.boxes[:, 2].max() <= 1600 and proposals.boxes[:, 3].max() <= 1000
    # IoU 0.8, not ~1: the resize blends the object's edge into a thin ring that selective search
    # may segment on its own. A box left in the downscaled frame would have IoU ~0.
    assert recall(np.array([truth], np.float32), proposals.boxes, iou=0.8) == 1.0


@pytest.mark.parametrize("name", ["contours", "selective_search"])
def test_same_image_same_proposals(name, request):
    proposer = request.getfixturevalue(name)
    image, _ = make_scene(5, (320, 240), clutter=True)
    first, second = proposer(image), proposer(image)
    assert torch.equal(first.boxes, second.boxes) and torch.equal(first.scores, second.scores)


@pytest.mark.parametrize("name", ["contours", "selective_search"])
def test_degenerate_images_do_not_fail(name, request):
    proposer = request.getfixturevalue(name)
    for image in (Image.new("RGB", (200, 150), (128, 128, 128)), Image.new("RGB", (6, 5), (10, 200, 10)), Image.new("L", (64, 48), 200)):
        proposals = proposer(image)
        width, height = image.size
        assert len(proposals) <= 100
        if len(proposals):
            assert proposals.boxes[:, 2].max() <= width and proposals.boxes[:, 3].max() <= height


def test_options_are_validated():
    with pytest.raises(ValueError, match="mode"):
        build_proposer("selective-search", mode="slow")
    with pytest.raises(ValueError, match="canny_factors"):
        build_proposer("contours", canny_factors=())
