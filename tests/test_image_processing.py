"""Image and box preprocessing: upstream parity, transformers parity, image modes, bad inputs."""

from __future__ import annotations

import base64
import io
import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from vlmfo1.processing.image_processing import (
    CLIP_MEAN,
    CLIP_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    FO1ImageProcessor,
    clip_boxes,
    load_image,
    smart_resize,
    validate_boxes,
)


def png_bytes(image: Image.Image, **save_args) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **save_args)
    return buffer.getvalue()


def random_rgb(width, height, seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), mode="RGB")


# ------------------------------------------------------------------------------------------
# Upstream fixture parity
# ------------------------------------------------------------------------------------------
def test_matches_upstream_preprocessed_fixture(upstream_fixture_dir):
    from safetensors.torch import load_file

    expected = load_file(str(upstream_fixture_dir / "inputs" / "preprocessed.safetensors"))
    boxes = json.loads((upstream_fixture_dir / "inputs" / "boxes.json").read_text())["boxes_xyxy"]
    # Upstream's aux size was patched to 256 for the fixtures (README, patch 5).
    processor = FO1ImageProcessor.from_pretrained(upstream_fixture_dir / "simplefp" / "model", aux_image_size=256)
    out = processor(upstream_fixture_dir / "inputs" / "test_image.png", boxes)

    assert out["pixel_values"].shape == (396, 1176)
    assert out["image_grid_thw"].tolist() == expected["primary_image_grid_thw"].tolist() == [[1, 18, 22]]
    torch.testing.assert_close(out["pixel_values"], expected["primary_pixel_values"], rtol=0, atol=1e-5)
    torch.testing.assert_close(out["aux_pixel_values"][0], expected["aux_pixel_values"], rtol=0, atol=1e-5)
    torch.testing.assert_close(out["aux_boxes"][0], expected["bbox_aux_pixels"], rtol=0, atol=1e-5)
    torch.testing.assert_close(out["primary_boxes"][0], expected["bbox_vt_pixels"], rtol=0, atol=1e-5)
    assert out["image_sizes"].tolist() == [[320, 240]]


# ------------------------------------------------------------------------------------------
# Primary branch against transformers' own Qwen2-VL processor
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("width,height", [(320, 240), (57, 91), (613, 211), (30, 1400), (900, 700)])
def test_primary_matches_transformers_qwen2vl_processor(width, height):
    try:  # transformers' default backend needs torchvision; the PIL backend does not
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    except Exception as error:  # noqa: BLE001
        pytest.skip(f"transformers' PIL Qwen2-VL image processor is not importable: {error}")
    bounds = {"min_pixels": 3136, "max_pixels": 200704}
    reference = Qwen2VLImageProcessorPil(**bounds)
    ours = FO1ImageProcessor(**bounds)
    image = random_rgb(width, height, seed=width)
    expected = reference(image)
    pixels, grid = ours.preprocess_primary(image)
    assert grid.tolist() == np.asarray(expected["image_grid_thw"]).tolist()
    np.testing.assert_allclose(pixels.numpy(), np.asarray(expected["pixel_values"]), rtol=0, atol=1e-6)


def test_smart_resize_rules():
    assert smart_resize(240, 320, 28, 3136, 200704) == (252, 308)  # round to multiples
    assert smart_resize(28, 28, 28, 3136, 200704) == (56, 56)  # too small: scaled up and ceiled
    assert smart_resize(4000, 3000, 28, 3136, 200704) == (504, 364)  # too large: scaled down and floored
    assert smart_resize(70, 98, 28, 1, 10**9) == (56, 112)  # 2.5 and 3.5 round to even
    with pytest.raises(ValueError, match="aspect ratio"):
        smart_resize(28, 28 * 201, 28, 3136, 200704)
    try:
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as reference
    except Exception:  # noqa: BLE001
        return
    rng = np.random.default_rng(1)
    for height, width in rng.integers(28, 5000, (200, 2)):
        if max(height, width) / min(height, width) <= 200:
            args = (int(height), int(width), 28, 3136, 1003520)
            assert smart_resize(*args) == reference(*args)


def test_patch_layout_keeps_each_merge_block_contiguous():
    processor = FO1ImageProcessor(min_pixels=3136, max_pixels=200704)
    image = random_rgb(112, 84, seed=3)  # already a multiple of 28: no resampling
    pixels, grid = processor.preprocess_primary(image)
    assert grid.tolist() == [[1, 6, 8]]
    normalised = (np.asarray(image, dtype=np.float64) / 255 - CLIP_MEAN) / CLIP_STD
    normalised = normalised.transpose(2, 0, 1)
    for row in range(pixels.shape[0]):
        block, within = divmod(row, 4)
        block_row, block_col = divmod(block, 8 // 2)
        sub_row, sub_col = divmod(within, 2)
        y, x = (2 * block_row + sub_row) * 14, (2 * block_col + sub_col) * 14
        patch = pixels[row].numpy().reshape(3, 2, 14, 14)
        for frame in range(2):  # the still image fills both temporal frames
            np.testing.assert_allclose(patch[:, frame], normalised[:, y : y + 14, x : x + 14], atol=1e-5)


def test_aux_branch_squashes_and_uses_imagenet_statistics():
    processor = FO1ImageProcessor(aux_image_size=32)
    image = Image.new("RGB", (80, 20), (255, 0, 128))
    aux = processor.preprocess_aux(image)
    assert aux.shape == (3, 32, 32) and aux.dtype == torch.float32
    expected = (np.array([255, 0, 128]) / 255 - IMAGENET_MEAN) / IMAGENET_STD
    np.testing.assert_allclose(aux.mean(dim=(1, 2)).numpy(), expected, atol=1e-5)


# ------------------------------------------------------------------------------------------
# Image loading: sources and modes
# ------------------------------------------------------------------------------------------
def test_sources_path_bytes_pil_data_uri_agree(tmp_path):
    image = random_rgb(33, 21)
    path = tmp_path / "image.png"
    image.save(path)
    data = path.read_bytes()
    uri = "data:image/png;base64," + base64.b64encode(data).decode()
    reference = np.asarray(image)
    for source in (path, str(path), data, bytearray(data), image, uri, reference):
        loaded = load_image(source)
        assert loaded.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(loaded), reference)


def test_alpha_is_dropped_keeping_colour_under_transparent_pixels():
    rgba = np.zeros((4, 5, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2] = 10, 200, 30
    rgba[..., 3] = np.arange(20, dtype=np.uint8).reshape(4, 5) * 13  # includes fully transparent 0
    for source in (Image.fromarray(rgba, mode="RGBA"), rgba, png_bytes(Image.fromarray(rgba, mode="RGBA"))):
        np.testing.assert_array_equal(np.asarray(load_image(source)), rgba[..., :3])
    la = Image.fromarray(np.stack([np.full((3, 3), 77, np.uint8), np.zeros((3, 3), np.uint8)], -1), mode="LA")
    assert np.asarray(load_image(la)).tolist() == [[[77, 77, 77]] * 3] * 3


def test_grey_palette_and_cmyk_modes():
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    for source in (Image.fromarray(grey, mode="L"), grey, grey[..., None]):
        np.testing.assert_array_equal(np.asarray(load_image(source)), np.repeat(grey[..., None], 3, axis=2))
    palette = Image.new("P", (2, 1))
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    palette.putpixel((1, 0), 1)
    palette.info["transparency"] = 0
    assert np.asarray(load_image(png_bytes(palette))).tolist() == [[[255, 0, 0], [0, 0, 255]]]
    cmyk = Image.new("CMYK", (2, 1), (0, 0, 0, 0))
    cmyk.putpixel((1, 0), (255, 0, 0, 0))  # full cyan
    assert np.asarray(load_image(cmyk)).tolist() == [[[255, 255, 255], [0, 255, 255]]]
    binary = Image.fromarray(np.array([[True, False]]))
    assert np.asarray(load_image(binary)).tolist() == [[[255] * 3, [0] * 3]]


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path):
    values = np.array([[0, 128, 129, 257 * 100, 40000, 65535]], dtype=np.uint16)
    expected = np.array([0, 0, 1, 100, 156, 255], dtype=np.uint8)  # round(v / 257)
    path = tmp_path / "sixteen.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")
    for source in (path, values, Image.fromarray(values.astype(np.int32), mode="I")):
        loaded = np.asarray(load_image(source))
        np.testing.assert_array_equal(loaded[..., 0][0], expected)
        np.testing.assert_array_equal(loaded[..., 0], loaded[..., 2])


def test_float_images_must_be_in_unit_range():
    values = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)
    for source in (values, Image.fromarray(values, mode="F"), np.stack([values] * 3, -1).astype(np.float64)):
        assert np.asarray(load_image(source))[0, :, 0].tolist() == [0, 128, 255]
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        load_image(values * 255)
    with pytest.raises(ValueError, match="NaN"):
        load_image(np.array([[np.nan, 0.5]]))


def test_integer_and_malformed_arrays():
    assert np.asarray(load_image(np.array([[0, 255]], dtype=np.int64)))[0, :, 1].tolist() == [0, 255]
    with pytest.raises(ValueError, match="8-bit"):
        load_image(np.array([[0, 256]], dtype=np.int64))
    with pytest.raises(ValueError, match="HxW"):
        load_image(np.zeros((3, 8, 5), dtype=np.uint8))  # channels first is not accepted
    with pytest.raises(ValueError, match="zero size"):
        load_image(np.zeros((0, 5, 3), dtype=np.uint8))
    with pytest.raises(TypeError):
        load_image(12345)


def test_exif_orientation_is_applied():
    pixels = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 10
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    loaded = load_image(png_bytes(Image.fromarray(pixels), exif=exif))
    assert loaded.size == (2, 3)
    np.testing.assert_array_equal(np.asarray(loaded), np.rot90(pixels, k=-1))


def test_corrupt_and_empty_images_raise_value_error(tmp_path):
    data = png_bytes(random_rgb(64, 64))
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated.png"):
        load_image(truncated)
    noise = np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes()
    with pytest.raises(ValueError, match="cannot decode"):
        load_image(noise)
    with pytest.raises(ValueError, match="empty"):
        load_image(b"")
    with pytest.raises(ValueError, match="zero size"):
        load_image(Image.new("RGB", (0, 4)))
    with pytest.raises(ValueError, match="base64"):
        load_image("data:image/png;base64,@@@")
    with pytest.raises(FileNotFoundError):
        load_image(tmp_path / "missing.png")


# ------------------------------------------------------------------------------------------
# Boxes
# ------------------------------------------------------------------------------------------
def test_box_validation_names_the_bad_box():
    with pytest.raises(ValueError, match="box 2 .*NaN"):
        validate_boxes([[0, 0, 1, 1], [1, 1, 2, 2], [0, float("nan"), 3, 3]])
    with pytest.raises(ValueError, match="box 0 .*infinite"):
        validate_boxes(torch.tensor([[0, 0, float("inf"), 1.0]]))
    with pytest.raises(ValueError, match="box 1 has negative size"):
        validate_boxes([[0, 0, 5, 5], [10, 10, 4, 20]])
    with pytest.raises(ValueError, match="box 0 has negative size"):
        validate_boxes(np.array([[0, 9, 5, 5]]))
    with pytest.raises(ValueError, match="shape"):
        validate_boxes([[0, 0, 1]])
    assert validate_boxes(None).shape == validate_boxes([]).shape == (0, 4)


def test_clip_boxes_cuts_partial_boxes_and_keeps_outside_ones_as_degenerate():
    boxes = [[-10, -5, 50, 400], [10, 20, 30, 40], [400, 10, 500, 30], [-30, -30, -1, -1]]
    with pytest.warns(UserWarning, match=r"boxes \[2, 3\] lie entirely outside"):
        clipped = clip_boxes(boxes, 320, 240)
    assert clipped.tolist() == [[0, 0, 50, 240], [10, 20, 30, 40], [320, 10, 320, 30], [0, 0, 0, 0]]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        clip_boxes([[0, 0, 320, 240]], 320, 240)  # touching the border is inside


def test_box_frames_follow_upstream_arithmetic():
    processor = FO1ImageProcessor(min_pixels=3136, max_pixels=200704, aux_image_size=768)
    boxes = [[13.7, 9.1, 200.3, 155.55], [0, 0, 333, 250], [332.9, -1, 400, 2]]  # the last one is clipped
    aux = processor.aux_boxes(boxes, 333, 250)
    # Upstream: clamp, then x * S / W in Python floats, then float32.
    expected = [
        [min(max(v, 0), 333 if i % 2 == 0 else 250) * 768 / (333 if i % 2 == 0 else 250) for i, v in enumerate(box)]
        for box in boxes
    ]
    assert aux.dtype == torch.float32
    assert torch.equal(aux, torch.tensor(expected, dtype=torch.float32))
    grid = torch.tensor([[1, 18, 24]])
    primary = processor.primary_boxes(aux, grid)
    factors = torch.tensor([24 * 14 / 768, 18 * 14 / 768] * 2, dtype=torch.float32)
    assert torch.equal(primary, aux * factors)


def test_large_and_tiny_images_use_upstream_working_size():
    processor = FO1ImageProcessor(min_pixels=3136, max_pixels=200704, aux_image_size=64)
    large = Image.new("RGB", (4100, 1000), (10, 20, 30))
    out = processor(large, [[2050, 500, 4100, 1000]])
    # Long side shrunk to 2048, sizes truncated: 4100x1000 -> 2048x499.
    working = large.resize((2048, 499), Image.Resampling.BICUBIC)
    pixels, grid = processor.preprocess_primary(working)
    assert torch.equal(out["image_grid_thw"], grid)
    assert torch.equal(out["pixel_values"], pixels)
    scaled = [2050 * (2048 / 4100), 500 * (499 / 1000), 2048.0, 499.0]
    expected_aux = [scaled[0] * 64 / 2048, scaled[1] * 64 / 499, 64.0, 64.0]
    assert torch.equal(out["aux_boxes"][0], torch.tensor([expected_aux], dtype=torch.float32))
    assert out["image_sizes"].tolist() == [[4100, 1000]]

    tiny = Image.new("RGB", (10, 40), (200, 0, 0))
    out = processor(tiny, [[0, 0, 10, 40]])
    # Stretched to 28 wide; the full-image box stays the full image in every frame.
    assert out["aux_boxes"][0].tolist() == [[0.0, 0.0, 64.0, 64.0]]
    grid_h, grid_w = out["image_grid_thw"][0, 1:].tolist()
    assert out["primary_boxes"][0].tolist() == [[0.0, 0.0, grid_w * 14.0, grid_h * 14.0]]


# ------------------------------------------------------------------------------------------
# Batching and configuration
# ------------------------------------------------------------------------------------------
def test_batch_equals_single_calls():
    processor = FO1ImageProcessor(min_pixels=3136, max_pixels=50176, aux_image_size=48)
    images = [random_rgb(90, 60, seed=1), random_rgb(50, 120, seed=2)]
    boxes = [[[1, 2, 30, 40], [5, 5, 6, 6]], []]
    batch = processor(images, boxes)
    singles = [processor(image, image_boxes) for image, image_boxes in zip(images, boxes)]
    assert torch.equal(batch["pixel_values"], torch.cat([s["pixel_values"] for s in singles]))
    assert torch.equal(batch["image_grid_thw"], torch.cat([s["image_grid_thw"] for s in singles]))
    assert batch["pixel_values"].shape[0] == int(batch["image_grid_thw"].prod(dim=1).sum())
    assert batch["aux_pixel_values"].shape == (2, 3, 48, 48)
    assert [b.shape for b in batch["aux_boxes"]] == [(2, 4), (0, 4)]
    assert [b.shape for b in batch["primary_boxes"]] == [(2, 4), (0, 4)]
    assert batch["image_sizes"].tolist() == [[90, 60], [50, 120]]
    with pytest.raises(ValueError, match="2 images but 1 box lists"):
        processor(images, [[]])
    with pytest.raises(ValueError, match="image 1: box 0 has negative size"):
        processor(images, [[], [[5, 5, 1, 1]]])


def test_config_round_trip_and_precedence(tmp_path):
    # A transformers Qwen2-VL preprocessor_config.json (the fixtures' values).
    config = {
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": list(CLIP_MEAN),
        "image_std": list(CLIP_STD),
        "image_processor_type": "Qwen2VLImageProcessor",
        "max_pixels": 200704,
        "merge_size": 2,
        "min_pixels": 3136,
        "patch_size": 14,
        "resample": 3,
        "rescale_factor": 0.00392156862745098,
        "size": {"longest_edge": 200704, "shortest_edge": 3136},
        "temporal_patch_size": 2,
    }
    processor = FO1ImageProcessor.from_dict(config, aux_image_size=256)
    assert (processor.min_pixels, processor.max_pixels) == (3136, 200704)
    assert processor.image_mean == CLIP_MEAN and processor.image_std == CLIP_STD
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["aux_image_size"] == 256
    assert FO1ImageProcessor.from_pretrained(tmp_path).to_dict() == processor.to_dict()
    # min_pixels/max_pixels override the size dict, as in transformers.
    both = FO1ImageProcessor.from_dict({"size": {"shortest_edge": 1000, "longest_edge": 5000}, "max_pixels": 9000})
    assert (both.min_pixels, both.max_pixels) == (1000, 9000)
    with pytest.raises(ValueError, match="do_normalize=false"):
        FO1ImageProcessor.from_dict({**config, "do_normalize": False})
    with pytest.raises(FileNotFoundError):
        FO1ImageProcessor.from_pretrained(tmp_path / "nowhere")
