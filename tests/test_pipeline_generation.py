"""The generator under the pipeline: shared-prefix reuse, batching across images, token probabilities.

A random tiny model writes noise, which is what these tests want: any difference in what the model
computes shows up as different tokens.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from pipeline_support import make_processor, random_boxes, random_model
from vlmfo1 import prompts
from vlmfo1.pipeline.generation import FO1Generator, ModelCall
from vlmfo1.pipeline.prefix_cache import shared_prefix_length, suffix_batch

MAX_NEW = 6


@pytest.fixture(scope="module")
def processor():
    return make_processor()


@pytest.fixture(scope="module")
def model(processor):
    return random_model(processor)


def scene(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(5):
        x, y = rng.integers(0, width - 20), rng.integers(0, height - 20)
        draw.ellipse([x, y, x + 20, y + 18], fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
    return image


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


# Suffixes of different token lengths, so a batch of them needs padding between prefix and suffix.
QUESTIONS = [
    prompts.detection_prompt("red circle"),
    prompts.detection_prompt(["blue star", "green square", "yellow heart"]),
    prompts.counting_prompt("purple crosses"),
    prompts.brief_caption_prompt([2]),
    "What is in <region0>?",
]


@torch.no_grad()
def test_shared_prefix_gives_the_tokens_of_independent_calls(processor, model):
    image = scene(160, 120, 0)
    boxes = np.array(random_boxes(6, 160, 120, 0))
    calls = [ModelCall(image, boxes, user(q), share_key="scene") for q in QUESTIONS]
    reused = FO1Generator(model, processor, MAX_NEW, batch_size=2, reuse_prefix=True).generate(calls)
    independent = FO1Generator(model, processor, MAX_NEW, batch_size=1, reuse_prefix=False).generate(calls)
    for a, b in zip(reused, independent):
        assert len(a.token_ids) > 0
        assert a.token_ids == b.token_ids
        np.testing.assert_allclose(a.probabilities, b.probabilities, rtol=1e-4, atol=1e-6)
    # Different questions really were answered differently (the test would pass vacuously otherwise).
    assert len({tuple(g.token_ids) for g in reused}) > 1


@torch.no_grad()
def test_prefix_is_encoded_once(processor, model, monkeypatch):
    """The vision encoders run once for all the questions on one image."""
    image = scene(128, 128, 1)
    boxes = np.array(random_boxes(4, 128, 128, 1))
    runs = []
    original = model.encode_images
    monkeypatch.setattr(model, "encode_images", lambda *a, **k: runs.append(1) or original(*a, **k))
    calls = [ModelCall(image, boxes, user(q), share_key=0) for q in QUESTIONS]
    FO1Generator(model, processor, 3, batch_size=8).generate(calls)
    assert len(runs) == 1
    runs.clear()
    FO1Generator(model, processor, 3, batch_size=1, reuse_prefix=False).generate(calls)
    assert len(runs) == len(QUESTIONS)


@torch.no_grad()
def test_batch_across_images_with_different_region_counts(processor, model):
    samples = [
        ModelCall(scene(160, 120, 2), np.zeros((0, 4)), user("Describe this image.")),
        ModelCall(scene(120, 150, 3), np.array(random_boxes(3, 120, 150, 3)), user(QUESTIONS[0])),
        ModelCall(scene(100, 100, 4), np.array(random_boxes(100, 100, 100, 4)), user(QUESTIONS[3])),
    ]
    batched = FO1Generator(model, processor, MAX_NEW, batch_size=3).generate(samples)
    for call, together in zip(samples, batched):
        alone = FO1Generator(model, processor, MAX_NEW, batch_size=1).generate([call])[0]
        assert together.token_ids == alone.token_ids
        np.testing.assert_allclose(together.probabilities, alone.probabilities, rtol=1e-3, atol=1e-6)


@torch.no_grad()
def test_probabilities_are_the_models_softmax_at_each_step(processor, model):
    image = scene(140, 140, 5)
    boxes = random_boxes(5, 140, 140, 5)
    generated = FO1Generator(model, processor, MAX_NEW).generate([ModelCall(image, np.array(boxes), user(QUESTIONS[1]))])[0]
    inputs = processor(images=image, boxes=boxes, text=QUESTIONS[1])
    full_ids = torch.cat([inputs["input_ids"], torch.tensor([generated.token_ids])], dim=1)
    logits = model(**{**inputs, "input_ids": full_ids, "attention_mask": torch.ones_like(full_ids)}).logits[0]
    prompt_length = inputs["input_ids"].shape[1]
    expected = [
        logits[prompt_length - 1 + k].float().softmax(-1)[token].item() for k, token in enumerate(generated.token_ids)
    ]
    assert len(generated.probabilities) == len(generated.token_ids) == MAX_NEW
    np.testing.assert_allclose(generated.probabilities, expected, rtol=1e-4, atol=1e-6)
    assert not generated.finished  # a random model does not stop within 6 tokens


def test_shared_prefix_length_keeps_a_suffix_and_covers_the_visual_tokens():
    assert shared_prefix_length([[1, 2, 3, 4], [1, 2, 3, 5]], must_cover=2) == 3
    # Identical prompts still leave one token to run (its logits start the answer).
    assert shared_prefix_length([[1, 2, 3], [1, 2, 3]], must_cover=1) == 2
    # A prefix that stops before the last image/region token cannot be shared.
    assert shared_prefix_length([[1, 2, 3, 4], [1, 9, 3, 4]], must_cover=3) is None


def test_suffix_batch_pads_between_prefix_and_suffix():
    ids, mask = suffix_batch([7, 8], [[1], [2, 3, 4]], pad_token_id=0)
    assert ids.tolist() == [[7, 8, 0, 0, 1], [7, 8, 2, 3, 4]]
    assert mask.tolist() == [[1, 1, 0, 0, 1], [1, 1, 1, 1, 1]]


def test_generator_rejects_bad_settings(processor, model):
    with pytest.raises(ValueError, match="batch_size"):
        FO1Generator(model, processor, batch_size=0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        FO1Generator(model, processor, max_new_tokens=0)
