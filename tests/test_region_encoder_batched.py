"""Batched region encoding equals the per-image computation it replaces.

`roi_align_mean` is checked against pooling the materialised map with `roi_align` (itself checked
against a scalar transcription of torchvision's kernel in test_roi_align.py), the batched
`RegionEncoder` against one image at a time, and the SimpleFP layers against their textbook form.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vlmfo1.modeling.factory import small_fo1_config
from vlmfo1.modeling.region_encoder import ChannelLayerNorm, ConvNorm, RegionEncoder
from vlmfo1.modeling.roi_align import roi_align, roi_align_mean


def random_rois(generator, num, image_h, image_w, num_images, dtype=torch.float64):
    """(batch, x1, y1, x2, y2): inside, partly and fully outside, tiny, large and inverted boxes."""
    corner = torch.rand(num, 2, generator=generator, dtype=dtype) * 1.6 - 0.4
    span = torch.rand(num, 2, generator=generator, dtype=dtype) * 0.8
    span[: num // 5] *= 0.01  # under one cell
    span[num // 5 : 2 * num // 5] *= -0.1  # inverted
    size = torch.tensor([image_w, image_h], dtype=dtype)
    batch = torch.randint(0, num_images, (num, 1), generator=generator).to(dtype)
    return torch.cat([batch, corner * size, (corner + span) * size], dim=1)


def fused_map(maps):
    size = maps[0].shape[-2:]
    return torch.cat([F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in maps], dim=1)


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 2])
@pytest.mark.parametrize("spatial_scale, height, width", [(1.0, 9, 11), (0.25, 10, 13), (1 / 14, 6, 7)])
def test_mean_equals_mean_of_roi_align_bins(aligned, sampling_ratio, spatial_scale, height, width):
    generator = torch.Generator().manual_seed(height * width)
    features = torch.randn(3, 5, height, width, generator=generator, dtype=torch.float64, requires_grad=True)
    rois = random_rois(generator, 40, height / spatial_scale, width / spatial_scale, 3)
    expected = roi_align(features, rois, (7, 5), spatial_scale, sampling_ratio, aligned).mean(dim=(2, 3))
    actual = roi_align_mean(features, rois, (7, 5), spatial_scale, sampling_ratio, aligned)
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-12)
    weights = torch.randn(expected.shape, generator=generator, dtype=torch.float64)
    (expected_grad,) = torch.autograd.grad((expected * weights).sum(), features)
    (actual_grad,) = torch.autograd.grad((actual * weights).sum(), features)
    torch.testing.assert_close(actual_grad, expected_grad, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-12), (torch.float32, 2e-6)])
def test_maps_of_other_sizes_pool_as_their_resized_concatenation(dtype, atol):
    generator = torch.Generator().manual_seed(1)
    # DaViT-like stages (halving) plus one larger map (resized down) and one of the same size.
    shapes = [(4, 24, 20), (6, 12, 10), (8, 6, 5), (3, 3, 3), (2, 30, 27), (2, 24, 20)]
    maps = [torch.randn(2, *shape, generator=generator, dtype=torch.float64).to(dtype).requires_grad_() for shape in shapes]
    rois = random_rois(generator, 30, 96, 80, 2).to(dtype)
    expected = roi_align(fused_map(maps), rois, 7, 0.25).mean(dim=(2, 3))
    actual = roi_align_mean(maps, rois, 7, 0.25)
    torch.testing.assert_close(actual, expected, rtol=0, atol=atol)
    weights = torch.randn(expected.shape, generator=generator, dtype=torch.float64).to(dtype)
    expected_grads = torch.autograd.grad((expected * weights).sum(), maps)
    actual_grads = torch.autograd.grad((actual * weights).sum(), maps)
    for got, want in zip(actual_grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=0, atol=atol)


def test_channels_last_and_low_precision_inputs():
    generator = torch.Generator().manual_seed(2)
    features = torch.randn(2, 6, 12, 12, generator=generator)
    rois = random_rois(generator, 12, 48, 48, 2).float()
    reference = roi_align_mean(features, rois, 7, 0.25)
    channels_last = roi_align_mean(features.contiguous(memory_format=torch.channels_last), rois, 7, 0.25)
    torch.testing.assert_close(channels_last, reference, rtol=0, atol=0)
    low = features.bfloat16()
    pooled = roi_align_mean(low, rois, 7, 0.25)
    assert pooled.dtype == torch.bfloat16  # pooled in fp32, returned in the input's dtype
    torch.testing.assert_close(pooled, roi_align_mean(low.float(), rois, 7, 0.25).bfloat16(), rtol=0, atol=0)


def test_autocast_does_not_lower_the_pooling_precision():
    generator = torch.Generator().manual_seed(6)
    maps = [torch.randn(2, 4, 24, 24, generator=generator), torch.randn(2, 8, 12, 12, generator=generator)]
    rois = random_rois(generator, 10, 96, 96, 2).float()
    expected = roi_align_mean(maps, rois, 7, 0.25)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pooled = roi_align_mean(maps, rois, 7, 0.25)
    torch.testing.assert_close(pooled, expected, rtol=0, atol=0)


def test_no_boxes_and_boxes_outside_every_map():
    features = torch.randn(2, 3, 8, 8, requires_grad=True)
    empty = roi_align_mean([features, features[:, :2, ::2, ::2]], torch.zeros(0, 5), 7, 1.0)
    assert empty.shape == (0, 5)
    empty.sum().backward()
    assert torch.equal(features.grad, torch.zeros_like(features))
    far = torch.tensor([[1.0, 50.0, 50.0, 60.0, 60.0], [0.0, -30.0, -30.0, -20.0, -20.0]])
    assert torch.equal(roi_align_mean(features, far, 7, 1.0), torch.zeros(2, 3))


def test_invalid_arguments_raise_clear_errors():
    features = torch.randn(2, 3, 8, 8)
    rois = torch.tensor([[0.0, 1.0, 1.0, 4.0, 4.0]])
    with pytest.raises(ValueError, match="same N"):
        roi_align_mean([features, torch.randn(1, 3, 4, 4)], rois, 7)
    with pytest.raises(ValueError, match="batch indexes"):
        roi_align_mean(features, torch.tensor([[2.0, 1.0, 1.0, 4.0, 4.0]]), 7)
    with pytest.raises(ValueError, match="at least one"):
        roi_align_mean([], rois, 7)


# --------------------------------------------------------------------------------------------
# The region encoder: one pass over a batch == one image at a time.
# --------------------------------------------------------------------------------------------
def encoder_inputs(config, generator):
    """Three images: two with a 6x8 ViT grid, one with 8x6; DaViT stage maps for a 64 px input."""
    vit = config.vlm_config.vision_config.hidden_size
    grids = [(6, 8), (8, 6), (6, 8)]
    levels = [
        [torch.randn(vit, h, w, generator=generator) for _ in config.full_attention_layers] for h, w in grids
    ]
    dims = config.aux_encoder_config.embed_dim
    stages = [
        torch.randn(3, dim, 16 >> s, 16 >> s, generator=generator).contiguous(memory_format=torch.channels_last)
        for s, dim in enumerate(dims)
    ]
    counts = [4, 3, 5]
    corners = torch.rand(sum(counts), 2, generator=generator) * 0.7
    boxes = torch.cat([corners, corners + 0.05 + torch.rand(sum(counts), 2, generator=generator) * 0.3], 1)
    image_index = torch.repeat_interleave(torch.arange(3), torch.tensor(counts))
    return levels, stages, boxes, image_index


@pytest.mark.parametrize("overrides", [{}, {"use_simple_fp": False}, {"use_aux_features": False}])
def test_batched_region_encoder_equals_per_image(overrides):
    config = small_fo1_config("tiny", aux_image_size=64, **overrides)
    torch.manual_seed(0)
    encoder = RegionEncoder(config)
    generator = torch.Generator().manual_seed(3)
    levels, stages, boxes, image_index = encoder_inputs(config, generator)
    for stage in stages:
        stage.requires_grad_(True)
    batched = encoder(boxes, levels, stages, 64, image_index=image_index)
    assert batched.shape == (boxes.shape[0], config.vlm_config.text_config.hidden_size)
    weights = torch.randn(batched.shape, generator=generator)
    parameters = [p for p in encoder.parameters()]
    batched_grads = torch.autograd.grad((batched * weights).sum(), parameters + stages, allow_unused=True)

    per_image = []
    for image, image_levels in enumerate(levels):
        rows = image_index == image
        per_image.append(encoder(boxes[rows], image_levels, [s[image] for s in stages], 64))
    one_by_one = torch.cat(per_image)
    torch.testing.assert_close(batched, one_by_one, rtol=1e-5, atol=1e-6)
    one_by_one_grads = torch.autograd.grad((one_by_one * weights).sum(), parameters + stages, allow_unused=True)
    for got, want in zip(batched_grads, one_by_one_grads):
        if want is None:
            assert got is None
        else:
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_channel_layer_norm_and_1x1_conv_match_their_textbook_form():
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(2, 6, 5, 7, generator=generator)
    norm = ChannelLayerNorm(6)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(6, generator=generator))
        norm.bias.copy_(torch.randn(6, generator=generator))
    mean = x.mean(1, keepdim=True)
    variance = (x - mean).pow(2).mean(1, keepdim=True)
    textbook = norm.weight[:, None, None] * (x - mean) / torch.sqrt(variance + norm.eps) + norm.bias[:, None, None]
    torch.testing.assert_close(norm(x), textbook, rtol=1e-5, atol=1e-5)

    conv = ConvNorm(6, 4, 1)
    torch.testing.assert_close(conv(x), conv.norm(F.conv2d(x, conv.weight)), rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------
# The model: which images reach the DaViT, and what builds autograd graphs in stage 1.
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_fo1():
    from PIL import Image

    from vlmfo1 import FO1ForConditionalGeneration, FO1Processor
    from vlmfo1.processing.image_processing import FO1ImageProcessor
    from vlmfo1.processing.tokenization import find_qwen_tokenizer_dir, load_fo1_tokenizer

    processor = FO1Processor(
        FO1ImageProcessor(min_pixels=56 * 56, max_pixels=112 * 112, aux_image_size=64),
        load_fo1_tokenizer(find_qwen_tokenizer_dir()),
    )
    config = small_fo1_config(
        "tiny", vocab_size=len(processor.tokenizer), region_token_id=processor.region_token_id, aux_image_size=64
    )
    torch.manual_seed(0)
    model = FO1ForConditionalGeneration(config).eval()
    generator = torch.Generator().manual_seed(5)
    images = [Image.fromarray((torch.rand(90, 120, 3, generator=generator) * 255).byte().numpy()) for _ in range(2)]
    return processor, model, images


BOXES = [[10, 10, 60, 50], [30, 20, 100, 80]]


def test_auxiliary_encoder_sees_only_images_with_regions(tiny_fo1):
    from vlmfo1.prompts import detection_prompt

    processor, model, images = tiny_fo1
    region_token_id = model.config.region_token_id
    with_regions = processor(images=images[0], boxes=BOXES, text=detection_prompt("x"))
    plain = processor(images=images[1], text="Describe this image.")
    # The image with regions second, so that picking its DaViT input by index matters.
    batch = processor(
        images=[images[1], images[0]], boxes=[[], BOXES], text=["Describe this image.", detection_prompt("x")]
    )
    seen = []
    hook = model.aux_encoder.register_forward_hook(lambda module, args, output: seen.append(args[0].shape[0]))
    try:
        with torch.no_grad():
            batched = model.embed_inputs(
                batch["input_ids"], batch["pixel_values"], batch["image_grid_thw"], batch["aux_pixel_values"],
                batch["region_boxes"],
            )[batch["input_ids"] == region_token_id]
            alone = model.embed_inputs(
                with_regions["input_ids"], with_regions["pixel_values"], with_regions["image_grid_thw"],
                with_regions["aux_pixel_values"], with_regions["region_boxes"],
            )[with_regions["input_ids"] == region_token_id]
            model.embed_inputs(plain["input_ids"], plain["pixel_values"], plain["image_grid_thw"])
    finally:
        hook.remove()
    assert seen == [1, 1]  # the batch's image without regions never reached the DaViT
    torch.testing.assert_close(batched, alone, rtol=1e-5, atol=1e-6)


def test_stage1_frozen_encoders_build_no_autograd_graph(tiny_fo1):
    """Stage 1 freezes the ViT and the DaViT: their outputs must carry no graph (nothing to save for
    backward), while the region tokens do (the region encoder and connector train)."""
    from vlmfo1.prompts import detection_prompt
    from vlmfo1.training.stages import apply_stage
    from vlmfo1.training.tiny import first_fo1_token_id

    processor, model, images = tiny_fo1
    inputs = processor(images=images[0], boxes=BOXES, text=detection_prompt("x"))
    state = {name: p.requires_grad for name, p in model.named_parameters()}
    applied = apply_stage(model, 1, first_new_token_id=first_fo1_token_id(processor.tokenizer), fresh=False)
    try:
        model.train()
        image_embeds, levels = model.encode_images(inputs["pixel_values"], inputs["image_grid_thw"])
        stages = model.aux_stage_maps(inputs["aux_pixel_values"])
        assert all(t.grad_fn is None for t in [*image_embeds, *levels[0], *stages])
        tokens = model.encode_regions([inputs["region_boxes"][0]], levels, stages)
        assert tokens[0].requires_grad
    finally:
        applied.remove()
        model.eval()
        for name, p in model.named_parameters():
            p.requires_grad_(state[name])
