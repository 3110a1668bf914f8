"""Text-region proposals from rapidocr (its ONNX detection/recognition models ship in the wheel).

For region OCR (SPEC §2.5: "Please provide the ocr results of <regionK> in the image."): each
detected text line becomes a box. With ``recognize=True`` the recognised text is the label and
the recognition confidence the score; otherwise the score is the detector's box score.
Extra: ``ocr``.
"""
from __future__ import annotations

import logging

import numpy as np
from PIL import Image

from vlmfo1.proposals.base import PostProcessConfig, Proposals, Proposer, require


def _quads_to_xyxy(quads: np.ndarray) -> np.ndarray:
    """Text quadrilaterals ``[N, 4, 2]`` (rotated lines) as their axis-aligned bounding boxes."""
    quads = np.asarray(quads, dtype=np.float32).reshape(-1, 4, 2)
    return np.concatenate([quads.min(axis=1), quads.max(axis=1)], axis=1)


class RapidOCRProposer(Proposer):
    """Text lines as boxes. ``recognize``: also read the text (slower; labels = text).

    ``box_threshold``: rapidocr's detector box threshold (its default 0.5).
    """

    def __init__(
        self,
        *,
        recognize: bool = False,
        box_threshold: float = 0.5,
        postprocess: PostProcessConfig | None = None,
    ) -> None:
        super().__init__(postprocess)
        rapidocr = require("rapidocr", extra="ocr", purpose="the rapidocr proposer")
        self.recognize = recognize
        self.box_threshold = box_threshold
        # rapidocr logs every model load at INFO and warns on images without text.
        self._engine = rapidocr.RapidOCR(params={"Global.log_level": "error"})
        logging.getLogger("RapidOCR").setLevel(logging.ERROR)

    def _propose(self, image: Image.Image, *, image_id: str | None, prompts: list[str] | None) -> Proposals:
        # Every flag is passed on every call: rapidocr keeps the last call's flags as new defaults.
        output = self._engine(
            np.asarray(image),
            use_det=True,
            use_cls=False,
            use_rec=self.recognize,
            box_thresh=self.box_threshold,
            # Keep every detected line: a low recognition score must not drop the box.
            text_score=0.0,
        )
        if output.boxes is None or len(output.boxes) == 0:
            return Proposals.empty()
        boxes = _quads_to_xyxy(output.boxes)
        if self.recognize:
            return Proposals(boxes, np.asarray(output.scores, dtype=np.float32), list(output.txts))
        return Proposals(boxes, np.asarray(output.scores, dtype=np.float32))


__all__ = ["RapidOCRProposer"]
