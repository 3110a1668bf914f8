"""Ultralytics YOLO (``yolo:PATH/TO/weights.pt``) used as a class-agnostic proposer.

Extra: ``yolo`` (ultralytics; it pulls torchvision, so it is not part of ``all``). The weights
file must exist locally: no download is attempted. Boxes come back in original-image pixels
from ultralytics; the label is the class name, the score the detection confidence.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vlmfo1.proposals.base import PostProcessConfig, Proposals, Proposer, require


class YoloProposer(Proposer):
    """``confidence``: YOLO's own pre-filter (low, so the shared post-processing decides);
    ``max_detections``: YOLO's cap before the shared top-k; ``device``: ultralytics device string."""

    def __init__(
        self,
        weights: str | Path,
        *,
        confidence: float = 0.01,
        max_detections: int = 300,
        device: str | None = None,
        postprocess: PostProcessConfig | None = None,
    ) -> None:
        super().__init__(postprocess)
        ultralytics = require("ultralytics", extra="yolo", purpose="the yolo proposer")
        weights = Path(weights)
        if not weights.is_file():
            raise FileNotFoundError(f"YOLO weights not found: {weights} (the yolo proposer does not download weights)")
        self.model = ultralytics.YOLO(str(weights))
        self.confidence = confidence
        self.max_detections = max_detections
        self.device = device

    @classmethod
    def from_spec(cls, arg: str | None, **options: Any) -> "YoloProposer":
        if arg is None:
            raise ValueError("the yolo proposer needs a weights file: --proposer yolo:/path/to/yolo.pt")
        return cls(arg, **options)

    def _propose(self, image: Image.Image, *, image_id: str | None, prompts: list[str] | None) -> Proposals:
        # Ultralytics reads numpy arrays as BGR (OpenCV order).
        bgr = np.ascontiguousarray(np.asarray(image)[:, :, ::-1])
        kwargs = {"conf": self.confidence, "max_det": self.max_detections, "verbose": False}
        if self.device is not None:
            kwargs["device"] = self.device
        result = self.model.predict(bgr, **kwargs)[0]
        if result.boxes is None or len(result.boxes) == 0:
            return Proposals.empty()
        boxes = result.boxes.xyxy.float().cpu()
        scores = result.boxes.conf.float().cpu()
        names = result.names or {}
        labels = [str(names.get(int(c), int(c))) for c in result.boxes.cls.tolist()]
        return Proposals(boxes, scores, labels)


__all__ = ["YoloProposer"]
