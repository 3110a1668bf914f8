"""FO1Processor: images + boxes + text (or chat messages) -> model inputs; generated ids -> answers.

The prompt follows the released model (SPEC §2.4): the image first, then one `<regionK>` index
token and one region placeholder per box, then the task text, in the Qwen chat layout.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from transformers import BatchFeature, PreTrainedTokenizerBase

from vlmfo1.parsing import ParsedAnswer, decode_and_parse
from vlmfo1.processing.image_processing import FO1ImageProcessor
from vlmfo1.processing.tokenization import REGION_PLACEHOLDER_TOKEN, add_fo1_tokens, load_fo1_tokenizer
from vlmfo1.prompts import IMAGE_TAG, MAX_REGIONS, SYSTEM_PROMPT, region_token

IMAGE_PAD, VISION_START, VISION_END = "<|image_pad|>", "<|vision_start|>", "<|vision_end|>"
PROCESSOR_CONFIG = "processor_config.json"


@dataclass
class ChatSegment:
    """A piece of the rendered chat; `trainable` marks assistant text that carries loss."""

    text: str
    trainable: bool = False


class FO1Processor:
    def __init__(
        self,
        image_processor: FO1ImageProcessor,
        tokenizer: PreTrainedTokenizerBase,
        max_regions: int = MAX_REGIONS,
        system_prompt: str = SYSTEM_PROMPT,
    ):
        add_fo1_tokens(tokenizer, max_regions)
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.max_regions = max_regions
        self.system_prompt = system_prompt
        self.region_token_id = tokenizer.convert_tokens_to_ids(REGION_PLACEHOLDER_TOKEN)
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_PAD)
        self.merge_unit = image_processor.merge_size**2

    # -- persistence -------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path, tokenizer_path=None, **kwargs) -> "FO1Processor":
        path = Path(path)
        settings = json.loads((path / PROCESSOR_CONFIG).read_text()) if (path / PROCESSOR_CONFIG).exists() else {}
        settings.update(kwargs)
        tokenizer = load_fo1_tokenizer(tokenizer_path or path, settings.get("max_regions", MAX_REGIONS))
        return cls(FO1ImageProcessor.from_pretrained(path, **_aux_size_from_model_config(path)), tokenizer, **settings)

    def save_pretrained(self, path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(str(path))
        self.image_processor.save_pretrained(path)
        settings = {"max_regions": self.max_regions, "system_prompt": self.system_prompt}
        (path / PROCESSOR_CONFIG).write_text(json.dumps(settings, indent=2) + "\n")

    # -- prompt ------------------------------------------------------------------------------
    def region_prefix(self, num_regions: int) -> str:
        return "".join(region_token(k) + REGION_PLACEHOLDER_TOKEN for k in range(num_regions))

    def render_chat(
        self,
        messages: Sequence[dict[str, str]],
        num_image_tokens: int | None,
        num_regions: int = 0,
        add_generation_prompt: bool = True,
    ) -> list[ChatSegment]:
        """Renders `[{"role": "user"|"assistant"|"system", "content": str}, ...]` in the Qwen chat layout.

        The image (and the regions after it) go at the start of the first user turn, or where that
        turn writes `<image>`; `num_image_tokens=None` renders a text-only chat.
        """
        if num_regions > self.max_regions:
            raise ValueError(f"{num_regions} regions given; the model holds at most {self.max_regions} (max_regions)")
        if num_regions and num_image_tokens is None:
            raise ValueError("regions need an image")
        segments: list[ChatSegment] = []
        if not messages or messages[0]["role"] != "system":
            segments.append(ChatSegment(f"<|im_start|>system\n{self.system_prompt}<|im_end|>\n"))
        image_placed = num_image_tokens is None
        for message in messages:
            role, content = message["role"], message["content"]
            if role not in ("system", "user", "assistant"):
                raise ValueError(f"unknown chat role {role!r}")
            if role == "user" and not image_placed:
                visual = VISION_START + IMAGE_PAD * num_image_tokens + VISION_END + "\n"
                if num_regions:
                    visual += self.region_prefix(num_regions) + "\n"
                content = content.replace(IMAGE_TAG + "\n", IMAGE_TAG)
                content = content.replace(IMAGE_TAG, visual, 1) if IMAGE_TAG in content else visual + content
                image_placed = True
            if role == "assistant":
                segments.append(ChatSegment("<|im_start|>assistant\n"))
                segments.append(ChatSegment(f"{content}<|im_end|>", trainable=True))
                segments.append(ChatSegment("\n"))
            else:
                segments.append(ChatSegment(f"<|im_start|>{role}\n{content}<|im_end|>\n"))
        if add_generation_prompt:
            segments.append(ChatSegment("<|im_start|>assistant\n"))
        return segments

    def build_prompt(self, text: str, num_image_tokens: int | None, num_regions: int = 0) -> str:
        """The single-turn prompt of a task text, as the released model was prompted."""
        segments = self.render_chat([{"role": "user", "content": text}], num_image_tokens, num_regions)
        return "".join(s.text for s in segments)

    # -- inputs ------------------------------------------------------------------------------
    def __call__(
        self,
        images=None,
        boxes=None,
        text: str | Sequence[str] | None = None,
        messages=None,
        return_tensors: str = "pt",
        add_generation_prompt: bool = True,
        padding_side: str = "left",
    ) -> BatchFeature:
        """Model inputs for one sample or a batch (lists of images, box lists and texts).

        `text` is a task text (wrapped in the chat prompt); `messages` a full chat per sample.
        Boxes are xyxy in original-image pixels; boxes partly outside the image are clipped.
        """
        if return_tensors != "pt":
            raise ValueError("FO1Processor returns PyTorch tensors only (return_tensors='pt')")
        batched = isinstance(text, (list, tuple)) or (messages is not None and messages and isinstance(messages[0], list))
        texts = list(text) if isinstance(text, (list, tuple)) else [text]
        chats = (messages if batched else [messages]) if messages is not None else [None] * len(texts)
        if messages is not None and text is not None:
            raise ValueError("pass either text or messages, not both")
        n = len(chats) if messages is not None else len(texts)
        image_list = _as_batch(images, n, "images", batched)
        box_list = _as_batch(boxes, n, "boxes", batched)

        features: dict[str, Any] = {}
        normalized_boxes: list[torch.Tensor] = [torch.zeros(0, 4) for _ in range(n)]
        tokens_per_image: list[int | None] = [None] * n
        with_image = [i for i, image in enumerate(image_list) if image is not None]
        for i, sample_boxes in enumerate(box_list):
            if sample_boxes is not None and len(sample_boxes) and image_list[i] is None:
                raise ValueError(f"sample {i} has boxes but no image")
            if sample_boxes is not None and len(sample_boxes) > self.max_regions:
                raise ValueError(
                    f"sample {i} has {len(sample_boxes)} boxes; the model holds at most {self.max_regions} regions "
                    "(split them into chunks, as FO1Pipeline does)"
                )
        if with_image:
            vision = self.image_processor(
                [image_list[i] for i in with_image], boxes=[[] if box_list[i] is None else box_list[i] for i in with_image]
            )
            features.update(
                pixel_values=vision["pixel_values"],
                image_grid_thw=vision["image_grid_thw"],
                aux_pixel_values=vision["aux_pixel_values"],
            )
            aux_size = vision["aux_pixel_values"].shape[-1]
            for k, i in enumerate(with_image):
                tokens_per_image[i] = int(vision["image_grid_thw"][k].prod()) // self.merge_unit
                normalized_boxes[i] = vision["aux_boxes"][k].float() / aux_size

        sequences = []
        for i in range(n):
            chat = chats[i] if messages is not None else [{"role": "user", "content": texts[i] or ""}]
            segments = self.render_chat(chat, tokens_per_image[i], normalized_boxes[i].shape[0], add_generation_prompt)
            sequences.append(self.tokenize_segments(segments))

        features.update(self.pad(sequences, padding_side))
        features["region_boxes"] = pad_boxes(normalized_boxes)
        return BatchFeature(features)

    def tokenize_segments(self, segments: Sequence[ChatSegment]) -> dict[str, list[int]]:
        """input_ids and labels (-100 except on trainable segments) of a rendered chat."""
        input_ids: list[int] = []
        labels: list[int] = []
        for segment in segments:
            ids = self.tokenizer(segment.text, add_special_tokens=False)["input_ids"]
            input_ids += ids
            labels += ids if segment.trainable else [-100] * len(ids)
        return {"input_ids": input_ids, "labels": labels}

    def pad(self, sequences: Sequence[dict[str, list[int]]], padding_side: str = "left") -> dict[str, torch.Tensor]:
        length = max(len(s["input_ids"]) for s in sequences)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        out = {"input_ids": [], "attention_mask": [], "labels": []}
        for s in sequences:
            gap = length - len(s["input_ids"])
            for key, value, fill in (("input_ids", s["input_ids"], pad_id), ("attention_mask", [1] * len(s["input_ids"]), 0), ("labels", s["labels"], -100)):
                out[key].append([fill] * gap + value if padding_side == "left" else value + [fill] * gap)
        tensors = {k: torch.tensor(v, dtype=torch.long) for k, v in out.items()}
        if all(label == -100 for row in out["labels"] for label in row):
            tensors.pop("labels")
        return tensors

    # -- outputs -----------------------------------------------------------------------------
    def parse(self, generated_ids, boxes=None, scores=None, prompt_length: int | None = None) -> ParsedAnswer | list[ParsedAnswer]:
        """Structured answers from generated ids (pass `prompt_length` to drop the prompt part)."""
        if prompt_length is not None:
            generated_ids = generated_ids[..., prompt_length:]
        return decode_and_parse(self.tokenizer, generated_ids, boxes=boxes, scores=scores, num_regions=self.max_regions)

    def decode(self, ids, **kwargs) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False, **kwargs)


def _aux_size_from_model_config(path: Path) -> dict[str, int]:
    """An upstream folder's preprocessor config has no aux size; its model config.json has it."""
    preprocessor, model = path / "preprocessor_config.json", path / "config.json"
    if not model.exists() or (preprocessor.exists() and "aux_image_size" in json.loads(preprocessor.read_text())):
        return {}
    size = json.loads(model.read_text()).get("aux_image_size")
    return {"aux_image_size": int(size)} if size else {}


def _as_batch(value, n: int, name: str, batched: bool) -> list:
    if value is None:
        return [None] * n
    if not batched:
        return [value]
    if not isinstance(value, (list, tuple)) or len(value) != n:
        raise ValueError(f"{name}: expected a list of {n} entries for a batch of {n} samples")
    return list(value)


def pad_boxes(boxes: Sequence[torch.Tensor]) -> torch.Tensor:
    """[B, R_max, 4]; rows past a sample's own count are zeros and never read by the model."""
    most = max((b.shape[0] for b in boxes), default=0)
    out = torch.zeros(len(boxes), most, 4)
    for i, b in enumerate(boxes):
        out[i, : b.shape[0]] = b
    return out
