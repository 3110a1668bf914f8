"""The proposal type, the proposer interface and the post-processing every proposer shares.

Conventions (SPEC §4): boxes are ``xyxy`` float pixels in the *original* image, one score per box,
at most ``top_k`` (100) boxes, ordered by score descending. Ties keep the order the proposer
produced them in, so the same input always gives the same proposals.
"""
from __future__ import annotations

import logging
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, Sequence, Union

import numpy as np
import torch
from PIL import Image

from vlmfo1.prompts import MAX_REGIONS

logger = logging.getLogger(__name__)

ImageInput = Union[str, os.PathLike, Image.Image, np.ndarray]

# Digits kept in the JSONL records: 1/100 pixel and 1e-5 score are far below what matters.
BOX_DECIMALS = 2
SCORE_DECIMALS = 5


def _as_float_tensor(values: Any, shape_tail: tuple[int, ...], name: str) -> torch.Tensor:
    tensor = torch.as_tensor(np.asarray(values, dtype=np.float32) if not torch.is_tensor(values) else values)
    tensor = tensor.detach().to(device="cpu", dtype=torch.float32)
    if tensor.numel() == 0:
        return tensor.reshape(0, *shape_tail)
    if tensor.dim() != 1 + len(shape_tail) or tuple(tensor.shape[1:]) != shape_tail:
        raise ValueError(f"{name} must have shape [N{''.join(f', {d}' for d in shape_tail)}], got {tuple(tensor.shape)}")
    return tensor


@dataclass
class Proposals:
    """Boxes proposed for one image.

    boxes: float32 ``[N, 4]`` xyxy in original-image pixels. scores: float32 ``[N]``.
    labels: optional ``N`` strings (class names, OCR text). masks: optional bool ``[N, H, W]``.
    Lists and numpy arrays are accepted and converted to CPU tensors.
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: list[str] | None = None
    masks: torch.Tensor | None = None

    def __post_init__(self) -> None:
        self.boxes = _as_float_tensor(self.boxes, (4,), "boxes")
        self.scores = _as_float_tensor(self.scores, (), "scores").reshape(-1)
        n = len(self.boxes)
        if len(self.scores) != n:
            raise ValueError(f"{n} boxes but {len(self.scores)} scores")
        if self.labels is not None:
            self.labels = [str(label) for label in self.labels]
            if len(self.labels) != n:
                raise ValueError(f"{n} boxes but {len(self.labels)} labels")
        if self.masks is not None:
            masks = torch.as_tensor(self.masks).detach().cpu()
            if masks.dim() != 3 or len(masks) != n:
                raise ValueError(f"masks must have shape [N={n}, H, W], got {tuple(masks.shape)}")
            self.masks = masks.bool()

    def __len__(self) -> int:
        return len(self.boxes)

    @classmethod
    def empty(cls) -> "Proposals":
        return cls(torch.zeros(0, 4), torch.zeros(0))

    def select(self, index: torch.Tensor | Sequence[int]) -> "Proposals":
        """Subset (and reorder) every field by integer indexes or a boolean mask."""
        index = torch.as_tensor(index)
        if index.dtype == torch.bool:
            index = index.nonzero().flatten()
        index = index.long()
        labels = [self.labels[i] for i in index.tolist()] if self.labels is not None else None
        masks = self.masks[index] if self.masks is not None else None
        return Proposals(self.boxes[index], self.scores[index], labels, masks)

    def to_record(self, image: str) -> dict[str, Any]:
        """Upstream's proposal JSONL record: ``{"image", "bbox_list", "score_list"}``.

        Labels, when present, go in an extra ``label_list`` key. Masks are not written.
        """
        record: dict[str, Any] = {
            "image": image,
            "bbox_list": [[round(float(v), BOX_DECIMALS) for v in box] for box in self.boxes.tolist()],
            "score_list": [round(float(s), SCORE_DECIMALS) for s in self.scores.tolist()],
        }
        if self.labels is not None:
            record["label_list"] = list(self.labels)
        return record

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "Proposals":
        """Inverse of `to_record`; a record without ``score_list`` gets score 1.0 for every box."""
        if "bbox_list" not in record:
            raise KeyError(f"proposal record has no 'bbox_list' (keys: {sorted(record)})")
        boxes = record["bbox_list"]
        scores = record.get("score_list")
        if scores is None:
            scores = [1.0] * len(boxes)
        return cls(boxes, scores, record.get("label_list"))


@dataclass
class PostProcessConfig:
    """The one post-processing path of every proposer (applied in this order).

    1. drop boxes or scores that are NaN/inf (logged as a warning with the count);
    2. clip boxes to the image (``clip``);
    3. drop boxes narrower or lower than ``min_size`` pixels (zero-area and fully-outside boxes);
    4. drop scores below ``score_threshold`` (a score equal to it is kept);
    5. class-agnostic NMS at IoU ``nms_iou`` (``None`` turns it off; default 0.8 as upstream);
    6. order by score descending (ties keep input order) and keep the first ``top_k``.
    """

    score_threshold: float = 0.0
    nms_iou: float | None = 0.8
    min_size: float = 1.0
    clip: bool = True
    top_k: int | None = MAX_REGIONS

    def __post_init__(self) -> None:
        if self.nms_iou is not None and not 0.0 <= self.nms_iou <= 1.0:
            raise ValueError(f"nms_iou must be in [0, 1] or None, got {self.nms_iou}")
        if self.top_k is not None and self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 or None, got {self.top_k}")
        if self.min_size < 0:
            raise ValueError(f"min_size must be >= 0, got {self.min_size}")


def box_iou(boxes_a: torch.Tensor, boxes_b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU ``[len(a), len(b)]`` of xyxy boxes; boxes of zero area give IoU 0."""
    area_a = (boxes_a[:, 2] - boxes_a[:, 0]).clamp(min=0) * (boxes_a[:, 3] - boxes_a[:, 1]).clamp(min=0)
    area_b = (boxes_b[:, 2] - boxes_b[:, 0]).clamp(min=0) * (boxes_b[:, 3] - boxes_b[:, 1]).clamp(min=0)
    top_left = torch.maximum(boxes_a[:, None, :2], boxes_b[None, :, :2])
    bottom_right = torch.minimum(boxes_a[:, None, 2:], boxes_b[None, :, 2:])
    wh = (bottom_right - top_left).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


def _torchvision_nms():
    try:
        from torchvision.ops import nms
    except Exception:  # torchvision absent or built against another torch
        return None
    return nms


# Candidates compared at once by the pure-torch NMS; bounds its memory to BLOCK x BLOCK IoUs.
_NMS_BLOCK = 512


def _greedy_nms_sorted(boxes: torch.Tensor, iou_threshold: float, max_keep: int | None) -> torch.Tensor:
    """Exact greedy NMS over boxes already in priority order; stops once ``max_keep`` are kept.

    Works block by block: a block's candidates are first tested against everything kept so
    far, then against each other in order, so memory stays O(BLOCK^2 + kept).
    """
    kept: list[int] = []
    for start in range(0, len(boxes), _NMS_BLOCK):
        block = boxes[start : start + _NMS_BLOCK]
        alive = torch.ones(len(block), dtype=torch.bool)
        if kept:
            alive &= box_iou(block, boxes[kept]).amax(dim=1) <= iou_threshold
        overlaps = (box_iou(block, block) > iou_threshold).numpy()
        alive_np = alive.numpy()
        for i in range(len(block)):
            if not alive_np[i]:
                continue
            kept.append(start + i)
            if max_keep is not None and len(kept) >= max_keep:
                return torch.tensor(kept, dtype=torch.long)
            alive_np[i + 1 :] &= ~overlaps[i, i + 1 :]
    return torch.tensor(kept, dtype=torch.long)


def nms(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    iou_threshold: float,
    max_keep: int | None = None,
    use_torchvision: bool | None = None,
) -> torch.Tensor:
    """Greedy NMS: indexes of the kept boxes, by score descending (ties: lower index first).

    A box is suppressed when its IoU with a kept, higher-ranked box is *greater* than
    ``iou_threshold`` (torchvision's rule). Uses ``torchvision.ops.nms`` when it imports
    (``use_torchvision=None``), else our own exact implementation (same result).
    """
    boxes = torch.as_tensor(boxes, dtype=torch.float32)
    scores = torch.as_tensor(scores, dtype=torch.float32)
    if len(boxes) == 0:
        return torch.zeros(0, dtype=torch.long)
    order = torch.sort(scores, descending=True, stable=True).indices
    sorted_boxes = boxes[order]
    tv_nms = _torchvision_nms() if use_torchvision in (None, True) else None
    if use_torchvision and tv_nms is None:
        raise ImportError("use_torchvision=True but torchvision.ops.nms cannot be imported")
    if tv_nms is not None:
        # Rank-valued scores make torchvision's (unstable) internal sort follow our stable order.
        rank_scores = -torch.arange(len(order), dtype=torch.float32)
        kept_ranks = tv_nms(sorted_boxes, rank_scores, iou_threshold)
        kept_ranks = kept_ranks.sort().values
        if max_keep is not None:
            kept_ranks = kept_ranks[:max_keep]
    else:
        kept_ranks = _greedy_nms_sorted(sorted_boxes, iou_threshold, max_keep)
    return order[kept_ranks]


def postprocess(
    proposals: Proposals,
    image_size: tuple[int, int] | None,
    config: PostProcessConfig | None = None,
) -> Proposals:
    """Apply `PostProcessConfig` to raw proposals of an image of ``image_size = (width, height)``.

    ``image_size=None`` skips clipping (boxes whose image is unknown).
    """
    config = config or PostProcessConfig()
    boxes, scores = proposals.boxes, proposals.scores
    finite = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores)
    if not bool(finite.all()):
        logger.warning("dropped %d of %d proposals with NaN/inf box or score", int((~finite).sum()), len(finite))
    keep = finite
    if config.clip and image_size is not None:
        width, height = image_size
        boxes = torch.stack(
            [boxes[:, 0].clamp(0, width), boxes[:, 1].clamp(0, height), boxes[:, 2].clamp(0, width), boxes[:, 3].clamp(0, height)],
            dim=1,
        )
        proposals = replace(proposals, boxes=boxes)
    widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    # Zero-area boxes are dropped even with min_size=0: they cannot be a region.
    keep = keep & (widths >= config.min_size) & (heights >= config.min_size) & (widths > 0) & (heights > 0)
    keep = keep & (scores >= config.score_threshold)
    proposals = proposals.select(keep)
    if config.top_k == 0 or len(proposals) == 0:
        return proposals.select(torch.zeros(0, dtype=torch.long))
    if config.nms_iou is not None:
        order = nms(proposals.boxes, proposals.scores, config.nms_iou, max_keep=config.top_k)
    else:
        order = torch.sort(proposals.scores, descending=True, stable=True).indices[: config.top_k]
    return proposals.select(order)


def load_image(image: ImageInput) -> Image.Image:
    """A path, PIL image or HxWx3 uint8 RGB array as an RGB PIL image."""
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    if isinstance(image, np.ndarray):
        if image.ndim == 2:
            return Image.fromarray(image).convert("RGB")
        if image.ndim != 3 or image.shape[2] not in (3, 4):
            raise ValueError(f"image array must be HxW, HxWx3 or HxWx4, got shape {image.shape}")
        if image.dtype != np.uint8:
            raise ValueError(f"image array must be uint8 RGB, got {image.dtype}")
        return Image.fromarray(image).convert("RGB")
    path = Path(image)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    with Image.open(path) as opened:
        return opened.convert("RGB")


class Proposer(ABC):
    """Image in, `Proposals` out. Subclasses implement `_propose`; `propose` adds post-processing.

    ``accepts_prompts``: whether the proposer is text-prompted (OmDet, Grounding DINO, OWLv2,
    SAM3). Passing prompts to one that is not is an error, not a silent no-op.
    """

    accepts_prompts: ClassVar[bool] = False
    # Post-processing defaults of this proposer; `postprocess=` in __init__ overrides them.
    default_postprocess: ClassVar[PostProcessConfig] = PostProcessConfig()

    def __init__(self, postprocess: PostProcessConfig | None = None) -> None:
        self.postprocess_config = postprocess if postprocess is not None else replace(self.default_postprocess)

    @classmethod
    def from_spec(cls, arg: str | None, **options: Any) -> "Proposer":
        """Build from the ``ARG`` of a ``name:ARG`` spec; proposers without an argument refuse one."""
        if arg is not None:
            raise ValueError(f"proposer {cls.__name__} takes no ':ARG' in its spec, got {arg!r}")
        return cls(**options)

    @abstractmethod
    def _propose(self, image: Image.Image, *, image_id: str | None, prompts: list[str] | None) -> Proposals:
        """Raw proposals in original-image pixels; may be unsorted, unclipped, unfiltered."""

    def propose(
        self,
        image: ImageInput,
        *,
        image_id: str | None = None,
        prompts: Sequence[str] | None = None,
    ) -> Proposals:
        """Proposals for one image, post-processed. ``image_id`` names the image for proposers
        that look boxes up (user boxes); it defaults to the path when ``image`` is one."""
        if prompts is not None and not self.accepts_prompts:
            raise ValueError(f"{type(self).__name__} is not text-prompted; drop the prompts")
        if image_id is None and isinstance(image, (str, os.PathLike)):
            image_id = os.fspath(image)
        pil_image = load_image(image)
        raw = self._propose(pil_image, image_id=image_id, prompts=list(prompts) if prompts is not None else None)
        return postprocess(raw, pil_image.size, self.postprocess_config)

    __call__ = propose


class MissingDependencyError(ImportError):
    """An optional dependency of a proposer is missing; the message names the extra to install."""


def require(module: str, *, extra: str, package: str | None = None, purpose: str = "this proposer") -> Any:
    """Import ``module`` or raise `MissingDependencyError` saying which extra provides it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise MissingDependencyError(
            f"{purpose} needs `{package or module}`, which is not installed: pip install 'vlmfo1[{extra}]'"
        ) from error


__all__ = [
    "ImageInput",
    "MissingDependencyError",
    "PostProcessConfig",
    "Proposals",
    "Proposer",
    "box_iou",
    "load_image",
    "nms",
    "postprocess",
    "require",
]
