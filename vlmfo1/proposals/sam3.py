"""SAM3 through transformers' ``Sam3Model``: text prompt -> boxes + masks (``sam3:PATH``).

Upstream's FO1 + SAM3 demo keeps, per prompt, the boxes scoring above 0.3 when the best box
scores above 0.75, and above 0.05 otherwise (a weak best match still yields candidates for FO1
to judge), then the top 100. That rule is `adaptive_threshold`; the shared post-processing
follows without NMS (SAM3's set prediction does not emit duplicates; upstream applies none).

Score of a box: sigmoid(query logit) x sigmoid(presence logit), as transformers' SAM3
post-processing. Masks: the mask logits resized to the image, sigmoid > 0.5.
Pre-processing uses the checkpoint's SAM3 image processor when it loads (it needs
torchvision); otherwise the same steps from its ``preprocessor_config.json`` with PIL:
resize to ``size`` (squash, bilinear), rescale, normalise.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from vlmfo1.proposals.base import PostProcessConfig, Proposals
from vlmfo1.proposals.transformers_detectors import TransformersDetectorProposer

logger = logging.getLogger(__name__)

# Upstream's rule: (best score above which the strict threshold applies, strict, lenient)
CONFIDENT_SCORE, STRICT_THRESHOLD, LENIENT_THRESHOLD = 0.75, 0.3, 0.05
MAX_PER_PROMPT = 100
TEXT_LENGTH = 32  # Sam3Processor pads prompts to 32 tokens
DEFAULT_IMAGE_SIZE = 1008
DEFAULT_MEAN_STD = ([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])


def adaptive_threshold(scores: torch.Tensor) -> torch.Tensor:
    """Boolean mask of the scores upstream keeps: > 0.3 if max > 0.75, else > 0.05."""
    if scores.numel() == 0:
        return torch.zeros(0, dtype=torch.bool)
    threshold = STRICT_THRESHOLD if float(scores.max()) > CONFIDENT_SCORE else LENIENT_THRESHOLD
    return scores > threshold


class _PilSam3ImageProcessor:
    """SAM3's image pre-processing (squash-resize, rescale, normalise) without torchvision."""

    def __init__(self, config: dict[str, Any]) -> None:
        size = config.get("size") or {}
        self.height = int(size.get("height", DEFAULT_IMAGE_SIZE))
        self.width = int(size.get("width", DEFAULT_IMAGE_SIZE))
        self.rescale_factor = float(config.get("rescale_factor", 1 / 255))
        self.mean = np.asarray(config.get("image_mean", DEFAULT_MEAN_STD[0]), dtype=np.float32)
        self.std = np.asarray(config.get("image_std", DEFAULT_MEAN_STD[1]), dtype=np.float32)

    def __call__(self, images: Image.Image, return_tensors: str = "pt") -> dict[str, torch.Tensor]:
        resized = images.convert("RGB").resize((self.width, self.height), Image.Resampling.BILINEAR)
        array = (np.asarray(resized, dtype=np.float32) * self.rescale_factor - self.mean) / self.std
        return {"pixel_values": torch.from_numpy(array.transpose(2, 0, 1).copy())[None]}


class Sam3Proposer(TransformersDetectorProposer):
    """SAM3 text-prompted boxes and masks. ``return_masks=False`` skips the (large) masks."""

    accepts_prompts = True
    default_postprocess = PostProcessConfig(nms_iou=None)

    def __init__(self, model_path: str | Path, *, return_masks: bool = True, **kwargs: Any) -> None:
        self.return_masks = return_masks
        super().__init__(model_path, **kwargs)

    def _load_model(self, path: str) -> Any:
        return self.transformers.Sam3Model.from_pretrained(path)

    def _load_processing(self, path: str) -> None:
        self.tokenizer = self.transformers.AutoTokenizer.from_pretrained(path)
        try:
            self.image_processor = self.transformers.AutoImageProcessor.from_pretrained(path)
        except (ImportError, AttributeError, ValueError, TypeError) as error:
            config_file = Path(path) / "preprocessor_config.json"
            if not config_file.is_file():
                raise
            logger.info("SAM3 image processor unavailable (%s); using the PIL pre-processing", error)
            self.image_processor = _PilSam3ImageProcessor(json.loads(config_file.read_text()))

    @torch.inference_mode()
    def _propose(self, image: Image.Image, *, image_id: str | None, prompts: list[str] | None) -> Proposals:
        queries = self._prompts_for_call(prompts)
        pixel_values = self.image_processor(images=image, return_tensors="pt")["pixel_values"]
        vision = self.model.get_vision_features(pixel_values=pixel_values.to(self.device, self.dtype))
        width, height = image.size
        scale = torch.tensor([width, height, width, height], dtype=torch.float32)
        parts: list[Proposals] = []
        for query in queries:
            text = self.tokenizer([query], padding="max_length", max_length=TEXT_LENGTH, truncation=True, return_tensors="pt")
            outputs = self.model(
                vision_embeds=vision,
                input_ids=text["input_ids"].to(self.device),
                attention_mask=text["attention_mask"].to(self.device),
            )
            scores = outputs.pred_logits[0].float().sigmoid()
            if outputs.presence_logits is not None:
                scores = scores * outputs.presence_logits[0].float().sigmoid()
            scores = scores.cpu()
            keep = adaptive_threshold(scores).nonzero().flatten()
            keep = keep[torch.sort(scores[keep], descending=True, stable=True).indices][:MAX_PER_PROMPT]
            boxes = outputs.pred_boxes[0].float().cpu()[keep] * scale  # normalised xyxy of the squashed image
            masks = None
            if self.return_masks:
                masks = torch.zeros(0, height, width, dtype=torch.bool)
                if len(keep):
                    logits = outputs.pred_masks[0][keep.to(self.device)].float()[None]
                    resized = torch.nn.functional.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
                    masks = (resized[0].sigmoid() > 0.5).cpu()
            parts.append(Proposals(boxes, scores[keep], [query] * len(keep), masks))
        return _concatenate(parts)


def _concatenate(parts: list[Proposals]) -> Proposals:
    if len(parts) == 1:
        return parts[0]
    masks = None
    if all(p.masks is not None for p in parts):
        masks = torch.cat([p.masks for p in parts])
    labels = [label for p in parts for label in (p.labels or [])]
    return Proposals(torch.cat([p.boxes for p in parts]), torch.cat([p.scores for p in parts]), labels, masks)


__all__ = ["Sam3Proposer", "adaptive_threshold"]
