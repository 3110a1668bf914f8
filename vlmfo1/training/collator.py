"""Batches of `FO1TrainingDataset` samples: padded text, concatenated images, padded region lists."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from vlmfo1.processing.processing_fo1 import pad_boxes

IGNORE_INDEX = -100


@dataclass
class FO1Collator:
    """Pads `input_ids` with `pad_token_id` and `labels` with -100 (right padding by default: training
    needs no aligned prompt ends); images of the samples that have one are concatenated in sample
    order, which is the order the model assigns them; `region_boxes` is padded to the largest count
    in the batch (the model reads only as many rows as a sample has region placeholders)."""

    pad_token_id: int
    padding_side: str = "right"
    pad_to_multiple_of: int | None = None

    def __post_init__(self) -> None:
        if self.padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {self.padding_side!r}")

    def __call__(self, samples: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        if not samples:
            raise ValueError("an empty batch")
        length = max(s["input_ids"].shape[0] for s in samples)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = torch.full((len(samples), length), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(samples), length), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(samples), length), dtype=torch.long)
        for row, sample in enumerate(samples):
            n = sample["input_ids"].shape[0]
            span = slice(0, n) if self.padding_side == "right" else slice(length - n, length)
            input_ids[row, span] = sample["input_ids"]
            labels[row, span] = sample["labels"]
            attention_mask[row, span] = 1
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        with_image = [s for s in samples if "pixel_values" in s]
        if with_image:
            batch["pixel_values"] = torch.cat([s["pixel_values"] for s in with_image])
            batch["image_grid_thw"] = torch.cat([s["image_grid_thw"] for s in with_image])
            batch["aux_pixel_values"] = torch.cat([s["aux_pixel_values"] for s in with_image])
        batch["region_boxes"] = pad_boxes([s.get("region_boxes", torch.zeros(0, 4)) for s in samples])
        if any("region_text_ids" in s for s in samples):
            batch["region_text_ids"] = pad_region_text([s.get("region_text_ids", []) for s in samples])
        return batch


def pad_region_text(per_sample: Sequence[Sequence[torch.Tensor]]) -> torch.Tensor:
    """[B, R, W] token ids of each sample's region texts, -1 where there is no token (padding, and
    every row of a sample without region texts)."""
    regions = max((len(texts) for texts in per_sample), default=0)
    words = max((len(ids) for texts in per_sample for ids in texts), default=0)
    out = torch.full((len(per_sample), regions, words), -1, dtype=torch.long)
    for row, texts in enumerate(per_sample):
        for k, ids in enumerate(texts):
            out[row, k, : len(ids)] = ids
    return out
