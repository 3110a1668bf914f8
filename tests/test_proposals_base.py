"""Proposals type, NMS and the shared post-processing (vlmfo1.proposals.base)."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from vlmfo1.proposals import PostProcessConfig, Proposals, Proposer, box_iou, nms, postprocess
from vlmfo1.proposals.base import _greedy_nms_sorted, load_image


def brute_force_nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, max_keep: int | None = None) -> list[int]:
    """Textbook greedy NMS with a per-pair IoU in plain Python floats."""

    def iou(a, b):
        iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = iw * ih
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
        return inter / union if union > 0 else 0.0

    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    kept: list[int] = []
    for i in order:
        if all(iou(boxes[i], boxes[k]) <= threshold for k in kept):
            kept.append(i)
            if max_keep is not None and len(kept) == max_keep:
                break
    return kept


def random_boxes(rng: np.random.Generator, n: int, extent: float = 200.0) -> np.ndarray:
    xy = rng.uniform(0, extent, (n, 2))
    wh = rng.uniform(5, 60, (n, 2))
    return np.concatenate([xy, xy + wh], axis=1).astype(np.float32)


# ---------------------------------------------------------------- Proposals


def test_proposals_converts_lists_and_checks_shapes():
    proposals = Proposals([[0, 0, 10, 10], [5, 5, 20, 30]], [0.9, 0.1], ["a", "b"])
    assert proposals.boxes.dtype == torch.float32 and proposals.boxes.shape == (2, 4)
    assert proposals.scores.shape == (2,) and len(proposals) == 2
    with pytest.raises(ValueError, match="2 boxes but 1 scores"):
        Proposals([[0, 0, 1, 1], [0, 0, 2, 2]], [0.5])
    with pytest.raises(ValueError, match="labels"):
        Proposals([[0, 0, 1, 1]], [0.5], ["a", "b"])
    with pytest.raises(ValueError, match="shape"):
        Proposals([[0, 0, 1]], [0.5])
    with pytest.raises(ValueError, match="masks"):
        Proposals([[0, 0, 1, 1]], [0.5], masks=torch.zeros(2, 4, 4))
    assert len(Proposals([], [])) == 0 and Proposals.empty().boxes.shape == (0, 4)


def test_record_round_trip_matches_upstream_keys():
    proposals = Proposals([[1.234, 2.0, 30.5, 40.25]], [0.87654321], ["cat"])
    record = proposals.to_record("images/a.jpg")
    assert set(record) == {"image", "bbox_list", "score_list", "label_list"}
    assert record["image"] == "images/a.jpg"
    assert record["bbox_list"] == [[1.23, 2.0, 30.5, 40.25]]
    assert record["score_list"] == [0.87654]
    back = Proposals.from_record(record)
    assert torch.allclose(back.boxes, proposals.boxes, atol=0.01) and back.labels == ["cat"]
    # Upstream records have no labels; missing scores read as 1.0.
    plain = Proposals.from_record({"image": "x", "bbox_list": [[0, 0, 5, 5]]})
    assert plain.labels is None and plain.scores.tolist() == [1.0]
    assert "label_list" not in Proposals([[0, 0, 1, 1]], [1.0]).to_record("x")
    with pytest.raises(KeyError, match="bbox_list"):
        Proposals.from_record({"image": "x"})


def test_select_keeps_fields_aligned():
    masks = torch.zeros(3, 4, 4, dtype=torch.bool)
    masks[1, 0, 0] = True
    proposals = Proposals([[0, 0, 1, 1], [0, 0, 2, 2], [0, 0, 3, 3]], [0.1, 0.2, 0.3], ["a", "b", "c"], masks)
    chosen = proposals.select(torch.tensor([1, 0]))
    assert chosen.labels == ["b", "a"] and chosen.scores.tolist() == pytest.approx([0.2, 0.1])
    assert bool(chosen.masks[0, 0, 0]) and not bool(chosen.masks[1].any())
    assert proposals.select(torch.tensor([False, False, True])).labels == ["c"]


# ---------------------------------------------------------------- NMS


def test_box_iou_known_values():
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    b = torch.tensor([[5.0, 0.0, 15.0, 10.0], [20.0, 20.0, 30.0, 30.0], [0.0, 0.0, 10.0, 10.0], [3.0, 3.0, 3.0, 8.0]])
    assert box_iou(a, b)[0].tolist() == pytest.approx([50 / 150, 0.0, 1.0, 0.0])


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 0.8])
def test_own_nms_equals_brute_force(threshold):
    rng = np.random.default_rng(int(threshold * 10))
    for _ in range(3):
        boxes = random_boxes(rng, 200)
        # Rounded scores make ties, which must break towards the lower index.
        scores = np.round(rng.uniform(0, 1, 200), 1).astype(np.float32)
        kept = nms(torch.from_numpy(boxes), torch.from_numpy(scores), threshold, use_torchvision=False)
        assert kept.tolist() == brute_force_nms(boxes, scores, threshold)


def test_own_nms_early_stop_is_prefix_of_full_run():
    rng = np.random.default_rng(1)
    boxes, scores = torch.from_numpy(random_boxes(rng, 2000)), torch.rand(2000, generator=torch.Generator().manual_seed(0))
    full = nms(boxes, scores, 0.5, use_torchvision=False)
    assert len(full) > 100
    assert nms(boxes, scores, 0.5, max_keep=100, use_torchvision=False).tolist() == full[:100].tolist()


def test_own_nms_blocks_see_earlier_blocks():
    # 1200 copies of one box cross several 512-box blocks: only the first may survive.
    boxes = torch.tensor([[10.0, 10.0, 50.0, 50.0]]).repeat(1200, 1)
    assert _greedy_nms_sorted(boxes, 0.5, None).tolist() == [0]


def test_torchvision_nms_agrees_with_own_nms():
    pytest.importorskip("torchvision", reason="torchvision is not installed here; agreement is checked where it is")
    rng = np.random.default_rng(3)
    boxes = torch.from_numpy(random_boxes(rng, 1000))
    scores = torch.from_numpy(np.round(rng.uniform(0, 1, 1000), 2).astype(np.float32))
    for threshold in (0.3, 0.8):
        ours = nms(boxes, scores, threshold, use_torchvision=False)
        theirs = nms(boxes, scores, threshold, use_torchvision=True)
        assert ours.tolist() == theirs.tolist()


# ---------------------------------------------------------------- postprocess

SIZE = (100, 80)  # width, height


def test_no_boxes():
    out = postprocess(Proposals.empty(), SIZE)
    assert len(out) == 0 and out.boxes.shape == (0, 4)


def test_all_boxes_below_threshold():
    raw = Proposals([[0, 0, 10, 10], [20, 20, 40, 40]], [0.1, 0.29])
    assert len(postprocess(raw, SIZE, PostProcessConfig(score_threshold=0.3))) == 0
    # A score equal to the threshold is kept.
    assert len(postprocess(Proposals([[0, 0, 10, 10]], [0.3]), SIZE, PostProcessConfig(score_threshold=0.3))) == 1


def test_duplicate_boxes_are_suppressed_and_order_is_stable():
    raw = Proposals([[0, 0, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60], [50, 50, 60, 60]], [0.5, 0.5, 0.5, 0.9], ["a", "b", "c", "d"])
    out = postprocess(raw, SIZE)
    assert out.labels == ["d", "a"]  # one of each duplicate pair; the tie went to the first
    assert postprocess(raw, SIZE, PostProcessConfig(nms_iou=None)).labels == ["d", "a", "b", "c"]


def test_boxes_outside_the_image_are_clipped_or_dropped():
    raw = Proposals(
        [[-20, -10, 30, 40], [90, 70, 150, 120], [200, 200, 300, 300], [-50, 10, -5, 20]],
        [0.9, 0.8, 0.7, 0.6],
    )
    out = postprocess(raw, SIZE)
    assert out.boxes.tolist() == [[0, 0, 30, 40], [90, 70, 100, 80]]
    unclipped = postprocess(raw, SIZE, PostProcessConfig(clip=False))
    assert len(unclipped) == 4 and unclipped.boxes[0].tolist() == [-20, -10, 30, 40]


def test_zero_area_and_small_boxes_are_dropped():
    raw = Proposals([[10, 10, 10, 30], [5, 5, 40, 5], [0, 0, 3, 3], [0, 0, 20, 20], [30, 30, 20, 40]], [0.9] * 5)
    assert postprocess(raw, SIZE).boxes.tolist() == [[0, 0, 3, 3], [0, 0, 20, 20]]
    assert postprocess(raw, SIZE, PostProcessConfig(min_size=4)).boxes.tolist() == [[0, 0, 20, 20]]
    # Zero-area boxes go even when the minimum size is 0.
    assert len(postprocess(raw, SIZE, PostProcessConfig(min_size=0))) == 2


def test_nan_scores_and_boxes_are_dropped_with_a_warning(caplog):
    raw = Proposals([[0, 0, 10, 10], [0, 0, 20, 20], [np.nan, 0, 5, 5], [30, 30, 50, 50]], [np.nan, 0.5, 0.9, np.inf])
    with caplog.at_level(logging.WARNING, logger="vlmfo1.proposals.base"):
        out = postprocess(raw, SIZE)
    assert out.boxes.tolist() == [[0, 0, 20, 20]]
    assert "dropped 3 of 4" in caplog.text


def test_top_k_and_descending_order():
    rng = np.random.default_rng(0)
    boxes = random_boxes(rng, 500, extent=60.0)
    scores = rng.uniform(0, 1, 500).astype(np.float32)
    out = postprocess(Proposals(boxes, scores), SIZE, PostProcessConfig(nms_iou=None, top_k=100))
    assert len(out) == 100
    assert torch.all(out.scores[:-1] >= out.scores[1:])
    assert out.scores[0] == pytest.approx(scores.max())
    assert len(postprocess(Proposals(boxes, scores), SIZE, PostProcessConfig(top_k=0))) == 0


def test_more_than_10k_boxes_is_exact():
    # Its speed is measured by benchmarks/proposals.py (first line it prints).
    rng = np.random.default_rng(7)
    boxes = random_boxes(rng, 12000, extent=1000.0)
    scores = rng.uniform(0, 1, 12000).astype(np.float32)
    out = postprocess(Proposals(boxes, scores), (1100, 1100))
    assert len(out) == 100
    expected = brute_force_nms(boxes, scores, 0.8, max_keep=100)
    assert torch.equal(out.boxes, torch.from_numpy(boxes[expected]))


def test_config_validation():
    with pytest.raises(ValueError, match="nms_iou"):
        PostProcessConfig(nms_iou=1.5)
    with pytest.raises(ValueError, match="top_k"):
        PostProcessConfig(top_k=-1)
    with pytest.raises(ValueError, match="min_size"):
        PostProcessConfig(min_size=-1)


# ---------------------------------------------------------------- Proposer


class FixedProposer(Proposer):
    def __init__(self, raw: Proposals, **kwargs):
        super().__init__(**kwargs)
        self.raw = raw
        self.seen: list = []

    def _propose(self, image, *, image_id, prompts):
        self.seen.append((image.size, image.mode, image_id))
        return self.raw


def test_proposer_loads_images_and_post_processes(tmp_path):
    raw = Proposals([[-5, -5, 20, 20], [0, 0, 20, 20], [40, 10, 60, 30]], [0.2, 0.9, 0.5])
    proposer = FixedProposer(raw, postprocess=PostProcessConfig(top_k=2))
    path = tmp_path / "gray.png"
    Image.new("L", (64, 32)).save(path)
    out = proposer(path)
    assert proposer.seen[-1] == ((64, 32), "RGB", str(path))
    assert out.boxes.tolist() == [[0, 0, 20, 20], [40, 10, 60, 30]]
    proposer.propose(np.zeros((10, 12, 3), np.uint8), image_id="arr")
    assert proposer.seen[-1] == ((12, 10), "RGB", "arr")
    with pytest.raises(ValueError, match="not text-prompted"):
        proposer.propose(path, prompts=["cat"])
    with pytest.raises(FileNotFoundError):
        proposer.propose(tmp_path / "missing.png")


def test_load_image_rejects_bad_arrays():
    with pytest.raises(ValueError, match="uint8"):
        load_image(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="shape"):
        load_image(np.zeros((4, 4, 5), np.uint8))
