"""A stand-in for pre-trained vision encoders: region features that already know the objects.

FO1 builds on encoders that already see objects: the base VLM's ViT and a DaViT from Florence-2,
pre-trained on large labelled data. A model built from scratch (the bundled ShapeWorld demo) has
random encoders instead, and through a small, frozen language model the FO1 stages teach them
little: with random encoders an object's colour can be read linearly from its region features, its
shape cannot (docs/training.md). The two steps here give the encoders that prior knowledge
directly, as their own pre-training did for the real ones. Both learn from the annotated objects of
a COCO file, each object pooled from its ground-truth box as FO1 pools a proposal:

* `pretrain_region_features`: the ViT, the DaViT and the region encoder (SimpleFP, branch norms)
  learn to classify each object's category and attributes from the fused region features that the
  connector reads (`RegionEncoder.fuse`'s output, box embedding included), through linear heads
  that are thrown away afterwards; the connector and the LLM are not touched.
* `align_region_tokens`: the encoders and the connector learn to make each object's region token
  (the connector's output) the sum of the input embeddings of its label's words, the vector a
  word-filled region slot holds in the text look-ups (`FO1Record.region_text`). A language model
  that has learned the look-up over such slots then meets image regions in the form it already
  reads; the LLM is not touched.

    model = pretrain_region_features(model, processor, "data/train.coco.json", "data", steps=300)
    align_region_tokens(model, processor, "data/train.coco.json", "data", steps=2000)
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
ALIGNMENT_GROUPS = (*ENCODER_GROUPS, "connector")  # what `align_region_tokens` trains by default

# Objects (image, its annotations) -> (loss, named training measures)
ObjectLoss = Callable[[torch.Tensor, torch.Tensor, list[dict]], tuple[torch.Tensor, dict[str, float]]]


def _annotated_images(coco: dict) -> list[tuple[dict, list]]:
    by_image: dict[int, list] = {}
    for annotation in coco["annotations"]:
        by_image.setdefault(annotation["image_id"], []).append(annotation)
    return [(image, by_image[image["id"]]) for image in coco["images"] if by_image.get(image["id"])]


def _read_objects(coco_file: str | os.PathLike) -> tuple[dict, list[tuple[dict, list]]]:
    coco = json.loads(Path(coco_file).read_text())
    images = _annotated_images(coco)
    if not images:
        raise ValueError(f"{coco_file}: no annotated objects to learn from")
    return coco, images


def object_label(annotation: dict, category_names: dict[int, str]) -> str:
    """An annotation's words: its `attributes.label` (ShapeWorld: "red circle"), else its category name."""
    return (annotation.get("attributes") or {}).get("label") or category_names[annotation["category_id"]]


def _train_on_objects(model, processor, images: Sequence[tuple[dict, list]], image_root: str | os.PathLike,
                      groups: Sequence[str], extra: Sequence[nn.Parameter], object_loss: ObjectLoss, steps: int,
                      batch_size: int, learning_rate: float, seed: int, log: Callable[[str], None],
                      what: str) -> dict[str, list[float]]:
    """The shared loop: batches of annotated images, their ground-truth boxes through the region
    encoder, `object_loss(connector input, connector output, annotations)`; `groups` and `extra`
    train, everything else is frozen. requires_grad and train/eval mode are restored afterwards."""
    from vlmfo1.processing.image_processing import load_image

    captured: list[tuple[torch.Tensor, torch.Tensor]] = []
    hook = model.region_encoder.connector.register_forward_hook(lambda m, i, o: captured.append((i[0], o)))
    group_of = group_of_parameters(model)
    was_training = model.training
    trainable_before = {name: p.requires_grad for name, p in model.named_parameters()}
    model.requires_grad_(False)
    trained = [p for name, p in model.named_parameters() if group_of[name] in groups]
    for parameter in trained:
        parameter.requires_grad_(True)
    optimizer = torch.optim.AdamW([*trained, *extra], lr=learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / max(1, steps // 20)))
    rng = random.Random(seed)
    torch.manual_seed(seed)
    history: dict[str, list[float]] = {}
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
            features, tokens = captured[0]
            loss, measures = object_loss(features.float(), tokens.float(), [a for _, found in batch for a in found])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            if step % 10 == 9 or step == steps - 1:
                for name, value in {"step": step + 1, "loss": loss.item(), **measures}.items():
                    history.setdefault(name, []).append(round(value, 4))
                log(f"{what} step {step + 1}/{steps}: loss {loss.item():.3f} "
                    + " ".join(f"{name} {value:.2f}" for name, value in measures.items()))
    finally:
        hook.remove()
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(trainable_before[name])
        model.train(was_training)
    return history


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
    Returns the loss and the training accuracy per target (`accuracy_{name}`), every tenth step and at
    the last, with those steps (`step`)."""
    coco, images = _read_objects(coco_file)
    classes = {"category": sorted(c["id"] for c in coco["categories"])}
    for name in attributes:
        values = {a.get("attributes", {}).get(name) for _, found in images for a in found}
        if None in values:
            raise ValueError(f"attribute {name!r} is missing from some annotations")
        classes[name] = sorted(values)
    width = model.region_encoder.connector[0].in_features
    heads = nn.ModuleDict({name: nn.Linear(width, len(values)) for name, values in classes.items()})

    def classify(features: torch.Tensor, tokens: torch.Tensor, annotations: list[dict]):
        loss, right = features.new_zeros(()), {}
        for name, head in heads.items():
            target = torch.tensor([classes[name].index(a["category_id"] if name == "category" else a["attributes"][name])
                                   for a in annotations])
            logits = head(features)
            loss = loss + nn.functional.cross_entropy(logits, target)
            right[f"accuracy_{name}"] = (logits.argmax(-1) == target).float().mean().item()
        return loss, right

    return _train_on_objects(model, processor, images, image_root, ENCODER_GROUPS, list(heads.parameters()), classify,
                             steps, batch_size, learning_rate, seed, log, "region pre-training")


def label_embedding(model, tokenizer, label: str) -> torch.Tensor:
    """The sum of the input embeddings of `label`'s tokens, as a word-filled region slot holds it."""
    from vlmfo1.training.data import region_text_token_ids

    return model.get_input_embeddings().weight.detach()[region_text_token_ids(tokenizer, label)].sum(0)


def align_region_tokens(
    model,
    processor,
    coco_file: str | os.PathLike,
    image_root: str | os.PathLike,
    steps: int = 2000,
    batch_size: int = 8,
    learning_rate: float = 2e-3,
    seed: int = 0,
    log: Callable[[str], None] = print,
    groups: Sequence[str] = ALIGNMENT_GROUPS,
) -> dict[str, list[float]]:
    """Trains `groups` of `model` (in place; by default the encoder groups and the connector) so that
    each object's region token is its label's word-embedding sum (`label_embedding` of
    `object_label`). The loss is the squared distance over the labels' mean squared norm (so 1.0 for
    tokens at zero); `nearest_label` is the share of training objects whose token is closer to their
    own label's vector than to any other label of the file. Returns both every tenth step and at the
    last, with those steps (`step`)."""
    coco, images = _read_objects(coco_file)
    names = {c["id"]: c["name"] for c in coco["categories"]}
    labels = sorted({object_label(a, names) for _, found in images for a in found})
    targets = torch.stack([label_embedding(model, processor.tokenizer, label) for label in labels]).float()
    scale = targets.pow(2).sum(-1).mean()

    def to_words(features: torch.Tensor, tokens: torch.Tensor, annotations: list[dict]):
        index = torch.tensor([labels.index(object_label(a, names)) for a in annotations])
        loss = (tokens - targets[index]).pow(2).sum(-1).mean() / scale
        nearest = torch.cdist(tokens.detach(), targets).argmin(-1)
        return loss, {"nearest_label": (nearest == index).float().mean().item()}

    return _train_on_objects(model, processor, images, image_root, groups, [], to_words,
                             steps, batch_size, learning_rate, seed, log, "region token alignment")
