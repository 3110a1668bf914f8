"""A stand-in for pre-trained vision encoders: region classification on the HFRE features.

FO1 builds on encoders that already see objects: the base VLM's ViT and a DaViT from Florence-2,
pre-trained on large labelled data. A model built from scratch (the bundled ShapeWorld demo) has
random encoders instead, and through a small, frozen language model the FO1 stages teach them
little: with random encoders an object's colour can be read linearly from its region features, its
shape cannot (docs/training.md). This step gives the encoders that prior knowledge directly, as
their own pre-training did for the real ones: the ViT, the DaViT and the region encoder (SimpleFP,
branch norms) learn to classify each annotated object's category and attributes from the fused
region features that the connector reads (`RegionEncoder.fuse`'s output, box embedding included).
The linear heads are thrown away afterwards; the connector and the LLM are not touched.

    model = pretrain_region_features(model, processor, "data/train.coco.json", "data", steps=300)
"""
from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from vlmfo1.training.stages import group_of_parameters

ENCODER_GROUPS = ("vision", "aux_encoder", "region_encoder")


def _objects(coco: dict, attributes: Sequence[str]) -> tuple[list[tuple[dict, list]], dict[str, list]]:
    """(image, its annotations) pairs with at least one object, and the class names per target."""
    by_image: dict[int, list] = {}
    for annotation in coco["annotations"]:
        by_image.setdefault(annotation["image_id"], []).append(annotation)
    images = [(image, by_image[image["id"]]) for image in coco["images"] if by_image.get(image["id"])]
    classes = {"category": sorted(c["id"] for c in coco["categories"])}
    for name in attributes:
        values = {a.get("attributes", {}).get(name) for _, found in images for a in found}
        if None in values:
            raise ValueError(f"attribute {name!r} is missing from some annotations")
        classes[name] = sorted(values)
    return images, classes


def pretrain_region_features(
    model,
    processor,
    coco_file: str | os.PathLike,
    image_root: str | os.PathLike,
    steps: int = 300,
    batch_size: int = 8,
    learning_rate: float = 1e-3,
    attributes: Sequence[str] = ("colour",),
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> dict[str, list[float]]:
    """Trains the encoder groups of `model` (in place) to classify the objects of a COCO file (its
    category, and each named key of the annotations' `attributes`) from their fused region features.
    Which parameters require grad, and train/eval mode, are as they were afterwards. Returns the
    loss and the training accuracy per target, every tenth step."""
    from vlmfo1.processing.image_processing import load_image

    coco = json.loads(Path(coco_file).read_text())
    images, classes = _objects(coco, attributes)
    if not images:
        raise ValueError(f"{coco_file}: no annotated objects to learn from")
    captured: list[torch.Tensor] = []

    def capture(module, inputs, output) -> None:
        captured.append(inputs[0])

    hook = model.region_encoder.connector.register_forward_hook(capture)
    width = model.region_encoder.connector[0].in_features
    heads = nn.ModuleDict({name: nn.Linear(width, len(values)) for name, values in classes.items()})
    groups = group_of_parameters(model)
    was_training = model.training
    trainable_before = {name: p.requires_grad for name, p in model.named_parameters()}
    model.requires_grad_(False)
    encoder = [p for name, p in model.named_parameters() if groups[name] in ENCODER_GROUPS]
    for parameter in encoder:
        parameter.requires_grad_(True)
    optimizer = torch.optim.AdamW([*encoder, *heads.parameters()], lr=learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / max(1, steps // 20)))
    rng = random.Random(seed)
    torch.manual_seed(seed)
    history: dict[str, list[float]] = {"loss": [], **{f"accuracy_{name}": [] for name in classes}}
    model.train()
    try:
        for step in range(steps):
            batch = [images[rng.randrange(len(images))] for _ in range(batch_size)]
            boxes = [[[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in found)] for _, found in batch]
            inputs = processor(images=[load_image(Path(image_root) / image["file_name"]) for image, _ in batch],
                               boxes=boxes, text=["?"] * len(batch))
            captured.clear()
            model.embed_inputs(inputs["input_ids"], inputs["pixel_values"], inputs["image_grid_thw"],
                               inputs["aux_pixel_values"], inputs["region_boxes"])
            features = captured[0].float()
            loss = features.new_zeros(())
            right = {}
            for name, head in heads.items():
                target = torch.tensor([classes[name].index(a["category_id"] if name == "category" else a["attributes"][name])
                                       for _, found in batch for a in found])
                logits = head(features)
                loss = loss + nn.functional.cross_entropy(logits, target)
                right[name] = (logits.argmax(-1) == target).float().mean().item()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            if step % 10 == 9 or step == steps - 1:
                history["loss"].append(round(loss.item(), 4))
                for name, value in right.items():
                    history[f"accuracy_{name}"].append(round(value, 3))
                log(f"region pre-training step {step + 1}/{steps}: loss {loss.item():.3f} "
                    + " ".join(f"{name} {value:.2f}" for name, value in right.items()))
    finally:
        hook.remove()
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(trainable_before[name])
        model.train(was_training)
    return history
