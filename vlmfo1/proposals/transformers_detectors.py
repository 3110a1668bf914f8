"""Detectors from transformers, loaded with ``from_pretrained`` (a local folder, or a hub id when
the hub is reachable), used as class-agnostic proposers.

| spec | model | prompted | score of a box |
|---|---|---|---|
| ``omdet:PATH`` | OmDet-Turbo | yes | best prompt's sigmoid score |
| ``grounding-dino:PATH`` | Grounding DINO (and MM Grounding DINO) | yes | best text token's sigmoid score |
| ``owlv2:PATH`` | OWLv2 | yes | objectness (default) or best prompt's sigmoid score |
| ``detr:PATH`` | any ``AutoModelForObjectDetection`` (DETR, Deformable/Conditional DETR, RT-DETR, ...) | no | the model family's own post-processing score |

Text-prompted detectors get ``prompts`` (constructor or per call); without any they look for
``DEFAULT_PROMPTS`` ("object"), the usual class-agnostic query. Labels are the prompt (or
class name) that gave the score. Boxes are mapped back to original-image pixels here; the
shared post-processing then clips, filters, suppresses (NMS 0.8) and keeps the top 100.

None of these needs torchvision: pre-processing uses transformers' PIL image processors when
torchvision is absent, and OmDet-Turbo's outputs are decoded here because its processor class
requires torchvision. The released OmDet-Turbo checkpoint builds a timm backbone (``pip install timm``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image

from vlmfo1.proposals.base import PostProcessConfig, Proposals, Proposer

DEFAULT_PROMPTS: tuple[str, ...] = ("object",)


def _cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


class TransformersDetectorProposer(Proposer):
    """Loading, device placement and prompt handling shared by the transformers detectors."""

    def __init__(
        self,
        model_path: str | Path,
        *,
        prompts: Sequence[str] | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
        postprocess: PostProcessConfig | None = None,
    ) -> None:
        super().__init__(postprocess)
        import transformers

        self.transformers = transformers
        self.model_path = str(model_path)
        self.device = torch.device(device or default_device())
        self.dtype = getattr(torch, dtype) if isinstance(dtype, str) else (dtype or torch.float32)
        self.prompts = list(prompts) if prompts is not None else None
        if self.prompts is not None and not self.accepts_prompts:
            raise ValueError(f"{type(self).__name__} is not text-prompted; drop the prompts")
        if self.prompts is not None and not self.prompts:
            raise ValueError("prompts must not be empty (leave them out for the default class-agnostic prompt)")
        self.model = self._load_model(self.model_path).to(self.device, self.dtype).eval()
        self._load_processing(self.model_path)

    @classmethod
    def from_spec(cls, arg: str | None, **options: Any) -> "TransformersDetectorProposer":
        if arg is None:
            raise ValueError(f"{cls.__name__} needs weights: NAME:PATH (a local folder or a hub model id)")
        return cls(arg, **options)

    def _load_model(self, path: str) -> Any:
        raise NotImplementedError

    def _load_processing(self, path: str) -> None:
        raise NotImplementedError

    def _prompts_for_call(self, prompts: list[str] | None) -> list[str]:
        chosen = prompts if prompts is not None else (self.prompts or list(DEFAULT_PROMPTS))
        chosen = [p.strip() for p in chosen if p and p.strip()]
        if not chosen:
            raise ValueError("all prompts are empty")
        return chosen

    def _to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        moved = {}
        for key, value in batch.items():
            if torch.is_tensor(value):
                value = value.to(self.device)
                if value.is_floating_point():
                    value = value.to(self.dtype)
            moved[key] = value
        return moved


class OmDetTurboProposer(TransformersDetectorProposer):
    """OmDet-Turbo: one box per decoder query, scored by its best prompt."""

    accepts_prompts = True
    # OmDet-Turbo's own tokenizer settings (its processor's defaults).
    TEXT_LENGTH = 77

    def _load_model(self, path: str) -> Any:
        return self.transformers.OmDetTurboForObjectDetection.from_pretrained(path)

    def _load_processing(self, path: str) -> None:
        self.image_processor = self.transformers.AutoImageProcessor.from_pretrained(path)
        self.tokenizer = self.transformers.AutoTokenizer.from_pretrained(path)

    def _encode_text(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return self.tokenizer(
            texts,
            padding="max_length",
            truncation=True,
            max_length=self.TEXT_LENGTH,
            return_token_type_ids=False,
            return_tensors="pt",
        )

    @torch.inference_mode()
    def _propose(self, image: Image.Image, *, image_id: str | None, prompts: list[str] | None) -> Proposals:
        classes = self._prompts_for_call(prompts)
        tasks = self._encode_text([f"Detect {', '.join(classes)}."])
        class_encoding = self._encode_text(classes)
        inputs = {
            "pixel_values": self.image_processor(images=[image], return_tensors="pt")["pixel_values"],
            "tasks_input_ids": tasks["input_ids"],
            "tasks_attention_mask": tasks["attention_mask"],
            "classes_input_ids": class_encoding["input_ids"],
            "classes_attention_mask": class_encoding["attention_mask"],
            "classes_structure": torch.tensor([len(classes)], dtype=torch.long),
        }
        outputs = self.model(**self._to_device(inputs))
        # decoder_coord_logits are already normalised cxcywh in [0, 1] of the (resized) image.
        boxes = _cxcywh_to_xyxy(outputs.decoder_coord_logits[0].float().cpu())
        class_scores = outputs.decoder_class_logits[0, :, : len(classes)].float().sigmoid().cpu()
        scores, best = class_scores.max(dim=-1)
        width, height = image.size
        boxes = boxes * torch.tensor([width, height, width, height], dtype=torch.float32)
        return Proposals(boxes, scores, [classes[i] for i in best.tolist()])


class GroundingDinoProposer(TransformersDetectorProposer):
    """Grounding DINO: prompts are joined into its ``"a. b. c."`` caption."""

    accepts_prompts = True

    def _load_model(self, path: str) -> Any:
        return self.transformers.AutoModelForZeroShotObjectDetection.from_pretrained(path)

    def _load_processing(self, path: str) -> None:
        self.processor = self.transformers.AutoProcessor.from_pretrained(path)

    @staticmethod
    def caption(prompts: list[str]) -> str:
        return " ".join(p.lower().rstrip(".").strip() + "." for p in prompts)

    def token_prompt_index(self, input_ids: torch.Tensor, num_prompts: int) -> torch.Tensor:
        """Per caption token, the index of the prompt it belongs to; -1 for special tokens and dots."""
        tokenizer = self.processor.tokenizer
        dot_id = tokenizer.convert_tokens_to_ids(".")
        special = torch.tensor([i in set(tokenizer.all_special_ids) for i in input_ids.tolist()])
        is_dot = input_ids == dot_id
        index = torch.cumsum(is_dot.long(), dim=0) - is_dot.long()
        index[special | is_dot | (index >= num_prompts)] = -1
        return index

    @torch.inference_mode()
    def _propose(self, image: Image.Image, *, image_id: str | None, prompts: list[str] | None) -> Proposals:
        queries = self._prompts_for_call(prompts)
        inputs = self.processor(images=image, text=self.caption(queries), return_tensors="pt")
        outputs = self.model(**self._to_device(dict(inputs)))
        input_ids = inputs["input_ids"][0]
        prompt_of_token = self.token_prompt_index(input_ids, len(queries))
        token_probs = outputs.logits[0, :, : len(input_ids)].float().sigmoid().cpu()
        # A box's score is its best prompt token (Grounding DINO's rule); that token names the label.
        token_probs[:, prompt_of_token < 0] = -1.0
        scores, best_token = token_probs.max(dim=-1)
        labels = [queries[int(prompt_of_token[t])] for t in best_token.tolist()]
        # pred_boxes are normalised cxcywh of the unpadded image.
        width, height = image.size
        boxes = _cxcywh_to_xyxy(outputs.pred_boxes[0].float().cpu()) * torch.tensor([width, height, width, height])
        return Proposals(boxes, scores.clamp(min=0.0), labels)


class Owlv2Proposer(TransformersDetectorProposer):
    """OWLv2. ``score="objectness"`` (default) ranks boxes by OWLv2's class-agnostic objectness
    head; ``score="prompt"`` by the best prompt's score. Either way the label is the best prompt.

    OWLv2 pads the image to a square (bottom/right) before resizing, so its normalised boxes
    are fractions of ``max(width, height)`` on both axes.
    """

    accepts_prompts = True

    def __init__(self, model_path: str | Path, *, score: str = "objectness", **kwargs: Any) -> None:
        if score not in ("objectness", "prompt"):
            raise ValueError(f"score must be 'objectness' or 'prompt', got {score!r}")
        self.score = score
        super().__init__(model_path, **kwargs)

    def _load_model(self, path: str) -> Any:
        return self.transformers.Owlv2ForObjectDetection.from_pretrained(path)

    def _load_processing(self, path: str) -> None:
        self.processor = self.transformers.AutoProcessor.from_pretrained(path)

    @torch.inference_mode()
    def _propose(self, image: Image.Image, *, image_id: str | None, prompts: list[str] | None) -> Proposals:
        queries = self._prompts_for_call(prompts)
        inputs = self.processor(text=[queries], images=image, return_tensors="pt")
        outputs = self.model(**self._to_device(dict(inputs)))
        prompt_scores = outputs.logits[0].float().sigmoid().cpu()
        best_prompt_score, best = prompt_scores.max(dim=-1)
        if self.score == "objectness":
            scores = outputs.objectness_logits[0].float().sigmoid().cpu()
        else:
            scores = best_prompt_score
        side = float(max(image.size))
        boxes = _cxcywh_to_xyxy(outputs.pred_boxes[0].float().cpu()) * side
        return Proposals(boxes, scores, [queries[i] for i in best.tolist()])


class DetrFamilyProposer(TransformersDetectorProposer):
    """Any closed-vocabulary ``AutoModelForObjectDetection`` used class-agnostically: every
    query's box with the family's own score (its image processor's post-processing); the
    label is the class name. The shared class-agnostic NMS merges duplicates across classes."""

    def _load_model(self, path: str) -> Any:
        return self.transformers.AutoModelForObjectDetection.from_pretrained(path)

    def _load_processing(self, path: str) -> None:
        self.image_processor = self.transformers.AutoImageProcessor.from_pretrained(path)

    @torch.inference_mode()
    def _propose(self, image: Image.Image, *, image_id: str | None, prompts: list[str] | None) -> Proposals:
        inputs = self.image_processor(images=image, return_tensors="pt")
        outputs = self.model(**self._to_device(dict(inputs)))
        width, height = image.size
        result = self.image_processor.post_process_object_detection(
            outputs, threshold=0.0, target_sizes=[(height, width)]
        )[0]
        id2label = getattr(self.model.config, "id2label", None) or {}
        labels = [str(id2label.get(int(i), int(i))) for i in result["labels"].tolist()]
        return Proposals(result["boxes"].float().cpu(), result["scores"].float().cpu(), labels)


__all__ = [
    "DEFAULT_PROMPTS",
    "DetrFamilyProposer",
    "GroundingDinoProposer",
    "OmDetTurboProposer",
    "Owlv2Proposer",
    "TransformersDetectorProposer",
]
