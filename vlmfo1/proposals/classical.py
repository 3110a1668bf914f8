"""Proposers without weights: OpenCV selective search, and edge/region contours.

Both work on any fresh machine. Both bound their time on big images by running on a copy
whose longer side is at most ``max_side`` pixels and mapping the boxes back to the original.

- ``selective-search`` (alias ``classical``): ``cv2.ximgproc`` selective search ("fast" mode,
  as in R-CNN). Needs opencv-contrib (extra ``proposals``).
- ``contours``: boxes of regions enclosed by Canny edges at several thresholds and of the
  outer edge contours. Uses only core OpenCV functions, so any ``cv2`` build works; about
  10x faster than selective search.

Both score a box by its colour contrast with the ring around it (`colour_contrast`, the
"colour contrast" objectness cue of Alexe et al.) times a mild size prior (`objectness`).
OpenCV ranks selective-search boxes with an internal random generator that
``cv2.setRNGSeed`` does not reach (the same image gives the same boxes in a different order
on every call), so its order is not used.
"""
from __future__ import annotations

from typing import Any, Literal

import numpy as np
from PIL import Image

from vlmfo1.proposals.base import MissingDependencyError, PostProcessConfig, Proposals, Proposer, require

OPENCV_CONFLICT_HINT = (
    "cv2 is importable but has no ximgproc module: a plain opencv-python(-headless) wheel (e.g. pulled in by "
    "rapidocr) shadows opencv-contrib. Fix: pip uninstall -y opencv-python opencv-python-headless "
    "opencv-contrib-python-headless && pip install 'opencv-contrib-python-headless>=4.8' (scripts/install.sh does this)"
)


def import_cv2(contrib: bool = False) -> Any:
    """``cv2``, checking that ``cv2.ximgproc`` exists when ``contrib`` is asked for."""
    cv2 = require("cv2", extra="proposals", package="opencv-contrib-python-headless", purpose="the classical proposers")
    if contrib and not hasattr(cv2, "ximgproc"):
        raise MissingDependencyError(OPENCV_CONFLICT_HINT)
    return cv2


def _downscaled_bgr(image: Image.Image, max_side: int | None, cv2: Any) -> tuple[np.ndarray, float]:
    """BGR uint8 copy with longer side <= max_side, and the factor original -> copy."""
    bgr = np.ascontiguousarray(np.asarray(image)[:, :, ::-1])
    longest = max(bgr.shape[:2])
    if max_side is None or longest <= max_side:
        return bgr, 1.0
    scale = max_side / longest
    size = (max(1, round(bgr.shape[1] * scale)), max(1, round(bgr.shape[0] * scale)))
    small = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)
    # Map with the realised per-axis factor; the mean of both differs from `scale` by < 1 pixel.
    return small, (small.shape[1] / bgr.shape[1] + small.shape[0] / bgr.shape[0]) / 2


def _xywh_to_xyxy(rects: np.ndarray) -> np.ndarray:
    boxes = rects.astype(np.float32).reshape(-1, 4).copy()
    boxes[:, 2] += boxes[:, 0]
    boxes[:, 3] += boxes[:, 1]
    return boxes


class SelectiveSearchProposer(Proposer):
    """OpenCV selective search on a copy downscaled to ``max_side``, boxes scored by `objectness`.

    ``mode``: ``"fast"`` (default; 2 colour spaces x 2 segmentation scales x 2 strategies),
    ``"quality"`` (more boxes, several times slower) or ``"single"`` (one strategy, fastest).
    """

    def __init__(
        self,
        *,
        mode: Literal["fast", "quality", "single"] = "fast",
        max_side: int | None = 384,
        ring: float = 0.15,
        size_prior: float = 0.2,
        postprocess: PostProcessConfig | None = None,
    ) -> None:
        super().__init__(postprocess)
        if mode not in ("fast", "quality", "single"):
            raise ValueError(f"mode must be 'fast', 'quality' or 'single', got {mode!r}")
        self.mode = mode
        self.max_side = max_side
        self.ring = ring
        self.size_prior = size_prior
        self._cv2 = import_cv2(contrib=True)

    def _propose(self, image: Image.Image, *, image_id: str | None, prompts: list[str] | None) -> Proposals:
        cv2 = self._cv2
        small, scale = _downscaled_bgr(image, self.max_side, cv2)
        search = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
        search.setBaseImage(small)
        switch = {
            "fast": search.switchToSelectiveSearchFast,
            "quality": search.switchToSelectiveSearchQuality,
            "single": search.switchToSingleStrategy,
        }
        switch[self.mode]()
        rects = search.process()
        if rects is None or len(rects) == 0:
            return Proposals.empty()
        # A canonical order (OpenCV's changes from call to call) so score ties break repeatably.
        rects = np.unique(np.asarray(rects).reshape(-1, 4), axis=0)
        boxes = _xywh_to_xyxy(rects)
        scores = objectness(cv2.cvtColor(small, cv2.COLOR_BGR2LAB), boxes, self.ring, self.size_prior, cv2)
        return Proposals(boxes / scale, scores)


def colour_contrast(lab: np.ndarray, boxes: np.ndarray, ring: float, cv2: Any) -> np.ndarray:
    """Per box, Lab distance between its mean colour and the ring ``ring`` x its size around it,
    divided by 100 and clipped to [0, 1]. Boxes whose ring lies mostly outside the image
    (background-sized boxes) get 0. O(1) per box with integral images."""
    height, width = lab.shape[:2]
    colour_integral = cv2.integral(lab.astype(np.float32)).astype(np.float64)
    area_integral = cv2.integral(np.ones((height, width), np.float32)).astype(np.float64)
    inner = np.round(boxes).astype(np.int64)
    box_w, box_h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    outer = np.stack(
        [
            np.clip(boxes[:, 0] - ring * box_w, 0, width),
            np.clip(boxes[:, 1] - ring * box_h, 0, height),
            np.clip(boxes[:, 2] + ring * box_w, 0, width),
            np.clip(boxes[:, 3] + ring * box_h, 0, height),
        ],
        axis=1,
    )
    outer = np.round(outer).astype(np.int64)
    inner_sum, inner_area = _box_sums(colour_integral, inner), _box_sums(area_integral, inner)
    ring_sum = _box_sums(colour_integral, outer) - inner_sum
    ring_area = _box_sums(area_integral, outer) - inner_area
    inner_mean = inner_sum / np.maximum(inner_area, 1)[:, None]
    ring_mean = ring_sum / np.maximum(ring_area, 1)[:, None]
    contrast = np.clip(np.linalg.norm(inner_mean - ring_mean, axis=1) / 100.0, 0.0, 1.0)
    # A box whose ring is mostly outside the image has no surroundings to contrast with.
    return np.where(ring_area >= 0.05 * np.maximum(inner_area, 1), contrast, 0.0).astype(np.float32)


def objectness(lab: np.ndarray, boxes: np.ndarray, ring: float, size_prior: float, cv2: Any) -> np.ndarray:
    """`colour_contrast` x (box area / image area) ** ``size_prior``.

    The mild size prior ranks a large object above small high-contrast texture (blobs,
    windows, leaves) of equal contrast; 0 turns it off."""
    height, width = lab.shape[:2]
    area_share = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / float(height * width)
    prior = np.clip(area_share, 1e-6, 1.0) ** size_prior
    return (colour_contrast(lab, boxes, ring, cv2) * prior).astype(np.float32)


def _box_sums(integral: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    x1, y1, x2, y2 = (boxes[:, i] for i in range(4))
    return integral[y2, x2] - integral[y1, x2] - integral[y2, x1] + integral[y1, x1]


class ContourProposer(Proposer):
    """Boxes of edge-bounded regions and outer edge contours, scored by `objectness`.

    Edges: Canny on the blurred Lab image at thresholds ``canny_factors`` x the median gradient
    (so it adapts to the image's contrast), dilated to close small gaps. Candidates: the
    bounding boxes of the connected regions between edges and of the outer edge contours.
    """

    def __init__(
        self,
        *,
        max_side: int | None = 512,
        canny_factors: tuple[float, ...] = (1.0, 2.0, 4.0),
        ring: float = 0.15,
        size_prior: float = 0.2,
        min_side_pixels: int = 4,
        postprocess: PostProcessConfig | None = None,
    ) -> None:
        super().__init__(postprocess)
        if not canny_factors:
            raise ValueError("canny_factors must not be empty")
        self.max_side = max_side
        self.canny_factors = tuple(canny_factors)
        self.ring = ring
        self.size_prior = size_prior
        self.min_side_pixels = min_side_pixels
        self._cv2 = import_cv2(contrib=False)

    def _candidates(self, lab_blurred: np.ndarray) -> np.ndarray:
        cv2 = self._cv2
        planes = lab_blurred.astype(np.float32)
        grad_x = cv2.Sobel(planes, cv2.CV_32F, 1, 0)
        grad_y = cv2.Sobel(planes, cv2.CV_32F, 0, 1)
        median_gradient = float(np.median(np.sqrt((grad_x**2 + grad_y**2).sum(axis=-1))))
        kernel = np.ones((3, 3), np.uint8)
        candidates = []
        for factor in self.canny_factors:
            # The floor keeps flat images (median gradient ~0) from turning noise into edges.
            high = max(2.0 * factor * median_gradient, 20.0)
            edges = cv2.dilate(cv2.Canny(lab_blurred, high / 2, high, L2gradient=True), kernel)
            _, _, stats, _ = cv2.connectedComponentsWithStats((edges == 0).astype(np.uint8), connectivity=4)
            candidates.append(_xywh_to_xyxy(stats[1:, :4]))
            contours, _ = cv2.findContours(edges, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            if contours:
                candidates.append(_xywh_to_xyxy(np.array([cv2.boundingRect(c) for c in contours])))
        boxes = np.concatenate(candidates)
        sides = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        return boxes[sides >= self.min_side_pixels]

    def _propose(self, image: Image.Image, *, image_id: str | None, prompts: list[str] | None) -> Proposals:
        cv2 = self._cv2
        small, scale = _downscaled_bgr(image, self.max_side, cv2)
        lab = cv2.cvtColor(small, cv2.COLOR_BGR2LAB)
        lab_blurred = cv2.GaussianBlur(lab, (5, 5), 0)
        boxes = self._candidates(lab_blurred)
        if len(boxes) == 0:
            return Proposals.empty()
        scores = objectness(lab, boxes, self.ring, self.size_prior, cv2)
        return Proposals(boxes / scale, scores)


__all__ = ["ContourProposer", "OPENCV_CONFLICT_HINT", "SelectiveSearchProposer", "import_cv2"]
