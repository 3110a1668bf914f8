"""FO1 model behaviour on a tiny random model: plug-and-play, batching, generation, errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from transformers import Qwen2_5_VLForConditionalGeneration

from vlmfo1 import FO1ForConditionalGeneration, FO1Processor
from vlmfo1.modeling.factory import small_fo1_config
from vlmfo1.processing.image_processing import FO1ImageProcessor
from vlmfo1.processing.tokenization import find_qwen_tokenizer_dir, load_fo1_tokenizer


@pytest.fixture(scope="module")
def processor() -> FO1Processor:
    image_processor = FO1ImageProcessor(min_pixels=56 * 56, max_pixels=224 * 224, aux_image_size=256)
    return FO1Processor(image_processor, load_fo1_tokenizer(find_qwen_tokenizer_dir()))


def make_model(processor: FO1Processor, **overrides) -> FO1ForConditionalGeneration:
    torch.manual_seed(0)
    config = small_fo1_config(
        "tiny", vocab_size=len(processor.tokenizer), region_token_id=processor.region_token_id, **overrides
    )
    # Larger init than the default 0.02 so that a random tiny model's outputs depend on its inputs.
    config.vlm_config.text_config.initializer_range = 0.3
    return FO1ForConditionalGeneration(config).eval()


@pytest.fixture(scope="module")
def model(processor) -> FO1ForConditionalGeneration:
    return make_model(processor)


def scene(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x, y = rng.integers(0, width - 20), rng.integers(0, height - 20)
        draw.ellipse([x, y, x + 20, y + 18], fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
    return image


def random_boxes(n: int, width: int, height: int, seed: int) -> list[list[float]]:
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, [width - 8, height - 8], size=(n, 2))
    wh = rng.uniform(4, [width / 2, height / 2], size=(n, 2))
    return np.concatenate([xy, np.minimum(xy + wh, [width, height])], axis=1).round(2).tolist()


@torch.no_grad()
def test_zero_regions_is_exactly_the_base_vlm(processor, model):
    base = Qwen2_5_VLForConditionalGeneration(model.config.vlm_config).eval()
    base.load_state_dict(model.vlm.state_dict())
    inputs = processor(images=scene(200, 150, 0), text="Describe this image.")
    ours = model(**inputs).logits
    theirs = base(
        input_ids=inputs["input_ids"],
        attention_mask=inputs["attention_mask"],
        pixel_values=inputs["pixel_values"],
        image_grid_thw=inputs["image_grid_thw"],
        mm_token_type_ids=(inputs["input_ids"] == model.config.vlm_config.image_token_id).int(),
    ).logits
    assert torch.equal(ours, theirs)


@torch.no_grad()
def test_regions_change_the_answer(processor, model):
    """The region tokens reach the LM: moving one box changes the logits."""
    image = scene(200, 150, 1)
    boxes = random_boxes(4, 200, 150, 1)
    moved = [list(b) for b in boxes]
    moved[2] = [moved[2][0] + 10, moved[2][1], moved[2][2] + 10, moved[2][3]]
    a = model(**processor(images=image, boxes=boxes, text="Please detect circle in this image.")).logits[0, -1]
    b = model(**processor(images=image, boxes=moved, text="Please detect circle in this image.")).logits[0, -1]
    assert not torch.allclose(a, b, atol=1e-6)


@torch.no_grad()
def test_batch_with_0_5_100_regions_equals_each_alone(processor, model):
    samples = [
        (scene(200, 150, 2), [], "Describe this image."),
        (scene(120, 180, 3), random_boxes(5, 120, 180, 3), "Please detect red circle in this image."),
        (scene(224, 224, 4), random_boxes(100, 224, 224, 4), "Provide a brief description for <region7>."),
    ]
    batch = processor(images=[s[0] for s in samples], boxes=[s[1] for s in samples], text=[s[2] for s in samples])
    assert batch["attention_mask"][0, 0] == 0, "the shorter samples are left-padded"
    batch_logits = model(**batch).logits[:, -1]
    batch_ids = model.generate(**batch, max_new_tokens=6, do_sample=False)[:, batch["input_ids"].shape[1]:]
    for i, (image, boxes, text) in enumerate(samples):
        alone = processor(images=image, boxes=boxes, text=text)
        torch.testing.assert_close(model(**alone).logits[0, -1], batch_logits[i], atol=2e-5, rtol=1e-5)
        ids = model.generate(**alone, max_new_tokens=6, do_sample=False)[0, alone["input_ids"].shape[1]:]
        assert ids.tolist() == batch_ids[i].tolist()


@torch.no_grad()
def test_kv_cache_generation_equals_full_recompute(processor, model):
    inputs = processor(images=scene(160, 160, 5), boxes=random_boxes(7, 160, 160, 5), text="Count the circles.")
    cached = model.generate(**inputs, max_new_tokens=8, do_sample=False, use_cache=True)
    uncached = model.generate(**inputs, max_new_tokens=8, do_sample=False, use_cache=False)
    assert cached.tolist() == uncached.tolist()
    # And step by step: the logits of the next token after the cached prefix equal a full forward.
    out = model(**inputs, use_cache=True)
    next_id = out.logits[:, -1].argmax(-1, keepdim=True)
    step = model(
        input_ids=next_id,
        attention_mask=torch.cat([inputs["attention_mask"], torch.ones_like(next_id)], 1),
        past_key_values=out.past_key_values,
    ).logits[:, -1]
    full = model(
        **{**inputs, "input_ids": torch.cat([inputs["input_ids"], next_id], 1),
           "attention_mask": torch.cat([inputs["attention_mask"], torch.ones_like(next_id)], 1)}
    ).logits[:, -1]
    torch.testing.assert_close(step, full, atol=2e-5, rtol=1e-5)


@torch.no_grad()
def test_bfloat16_runs_close_to_float32(processor, model):
    inputs = processor(images=scene(160, 120, 6), boxes=random_boxes(3, 160, 120, 6), text="Please detect circle.")
    reference = model(**inputs).logits[0, -1]
    half = make_model(processor).to(torch.bfloat16)
    logits = half(**inputs).logits[0, -1].float()
    assert torch.isfinite(logits).all()
    assert torch.corrcoef(torch.stack([logits, reference]))[0, 1] > 0.98


@pytest.mark.parametrize(
    "overrides",
    [dict(use_simple_fp=False), dict(use_aux_features=False), dict(use_primary_features=False)],
    ids=["no-simplefp", "primary-only", "aux-only"],
)
@torch.no_grad()
def test_ablation_layouts_run(processor, overrides):
    model = make_model(processor, **overrides)
    inputs = processor(images=scene(120, 120, 7), boxes=random_boxes(3, 120, 120, 7), text="Please detect circle.")
    assert torch.isfinite(model(**inputs).logits).all()
    assert model.config.region_hidden_size == model.region_encoder.connector[0].in_features


def test_more_regions_than_the_model_holds_is_a_clear_error(processor, model):
    image = scene(100, 100, 8)
    with pytest.raises(ValueError, match="at most 100"):
        processor(images=image, boxes=random_boxes(101, 100, 100, 8), text="Please detect circle.")
    # Bypassing the processor, the model itself refuses too.
    inputs = processor(images=image, boxes=random_boxes(3, 100, 100, 8), text="x")
    with pytest.raises(ValueError, match="only 2 boxes"):
        model(**{**inputs, "region_boxes": inputs["region_boxes"][:, :2]})


@pytest.mark.parametrize(
    "bad_box", [[float("nan"), 0, 10, 10], [0, 0, float("inf"), 10], [20, 20, 10, 30]], ids=["nan", "inf", "negative"]
)
def test_invalid_boxes_are_rejected(processor, bad_box):
    with pytest.raises(ValueError):
        processor(images=scene(100, 100, 9), boxes=[[0, 0, 10, 10], bad_box], text="x")


def test_boxes_partly_outside_are_clipped(processor):
    inputs = processor(images=scene(100, 80, 10), boxes=[[-10, -5, 50, 40], [60, 20, 130, 95]], text="x")
    boxes = inputs["region_boxes"][0]
    assert boxes.min() >= 0 and boxes.max() <= 1
    torch.testing.assert_close(boxes[0], torch.tensor([0.0, 0.0, 0.5, 0.5]))
    torch.testing.assert_close(boxes[1], torch.tensor([0.6, 0.25, 1.0, 1.0]))


def test_save_and_load_round_trip_is_bit_exact(processor, model, tmp_path):
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    reloaded = FO1ForConditionalGeneration.from_pretrained(tmp_path)
    for key, value in model.state_dict().items():
        assert torch.equal(value, reloaded.state_dict()[key]), key
    again = FO1Processor.from_pretrained(tmp_path)
    assert again.region_token_id == processor.region_token_id
    image = scene(90, 90, 11)
    a = processor(images=image, boxes=[[1, 2, 30, 40]], text="hi")
    b = again(images=image, boxes=[[1, 2, 30, 40]], text="hi")
    assert all(torch.equal(a[k], b[k]) for k in a)
