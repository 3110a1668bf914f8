"""Image and box preprocessing for VLM-FO1, numerically identical to upstream.

One image goes through three branches (see ``SPEC.md`` 2.1-2.3 and the fixture README
in ``shared/fixtures/upstream-tiny``):

* **primary** (the Qwen2.5-VL ViT): ``smart_resize`` to multiples of
  ``patch_size * merge_size`` within [min_pixels, max_pixels], PIL resize, ``x / 255``
  (in float64, then float32), CLIP mean/std, and patchified into ``pixel_values``
  [grid_h * grid_w, C * temporal_patch_size * patch_size**2] with each 2x2 merge block
  contiguous, exactly like transformers' ``Qwen2VLImageProcessor``;
* **aux** (DaViT): squashed to ``aux_image_size`` x ``aux_image_size`` with PIL,
  ``x / 255``, ImageNet mean/std -> [3, S, S];
* **boxes**: xyxy in original-image pixels, clipped to the image, scaled to the aux frame
  in float64 then cast to float32 (upstream's ``adjust_bbox``); primary-frame boxes are
  derived *from the aux boxes* by a float32 multiply with (W_primary / S, H_primary / S).

Before the branches, an image goes through upstream's working-size steps: an image
with a side under ``min_image_side`` (28) is stretched to at least 28 on that side, and
one whose long side exceeds ``max_image_side`` (2048) is shrunk to it (sizes truncated
to int). Boxes are scaled by the same factors. Upstream does not scale boxes in the
first step (it leaves them in the unstretched frame); we do, so that a box keeps
covering the same content.

Decisions on input images (``load_image``):

* transparency is dropped, not composited: RGBA/LA/PA/P-with-transparency become RGB
  by PIL's ``convert("RGB")``, which keeps the colour values under transparent pixels.
  This is what upstream does (``Image.open(...).convert("RGB")``), so the model sees
  what it was trained on;
* 16-bit images (``I;16*`` modes, uint16 arrays, and mode ``I``, read as 16-bit) are
  scaled to 8 bit as round(v / 257); PIL's own conversion would clip everything above
  255 to white. Mode ``F`` and float arrays must hold values in [0, 1];
* the EXIF orientation is applied (``ImageOps.exif_transpose``), so boxes refer to the
  image as displayed. Upstream does not do this;
* undecodable, truncated, empty or zero-size images raise ``ValueError``.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

PREPROCESSOR_CONFIG_NAME = "preprocessor_config.json"

ImageInput = str | os.PathLike | bytes | bytearray | memoryview | Image.Image | np.ndarray
BoxesInput = Sequence[Sequence[float]] | np.ndarray | torch.Tensor | None

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


# ------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------
def load_image(image: ImageInput) -> Image.Image:
    """Any supported image input as an RGB ``PIL.Image`` (EXIF orientation applied).

    Accepts a file path, a ``data:image/...;base64,`` URI, encoded bytes, a PIL image, or
    a numpy array HxW, HxWx1, HxWx3 or HxWx4 of uint8, uint16, bool, float in [0, 1], or
    another integer type holding values in [0, 255].
    """
    if isinstance(image, Image.Image):
        pil = _fully_loaded(image, "the PIL image")
    elif isinstance(image, np.ndarray):
        pil = _array_to_pil(image)
    elif isinstance(image, (bytes, bytearray, memoryview)):
        pil = _decode(bytes(image), "the image bytes")
    elif isinstance(image, str) and image.startswith("data:image/"):
        _, _, payload = image.partition(",")
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as error:
            raise ValueError(f"invalid base64 payload in the data: URI: {error}") from error
        pil = _decode(data, "the data: URI")
    elif isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"image file not found: {path}")
        pil = _decode(path.read_bytes(), f"image file {path}")
    else:
        raise TypeError(f"unsupported image input of type {type(image).__name__}")

    if pil.width == 0 or pil.height == 0:
        raise ValueError(f"image has zero size ({pil.width}x{pil.height})")
    pil = _apply_exif_orientation(pil)
    return _to_rgb(pil)


def _decode(data: bytes, source: str) -> Image.Image:
    if not data:
        raise ValueError(f"{source} is empty")
    try:
        pil = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise
    except Exception as error:  # PIL signals bad data with many exception types
        raise ValueError(f"cannot decode {source} as an image: {error}") from error
    return _fully_loaded(pil, source)


def _fully_loaded(pil: Image.Image, source: str) -> Image.Image:
    """Forces decoding, so that truncated or corrupt data fails here and not later."""
    try:
        pil.load()
    except Image.DecompressionBombError:
        raise
    except Exception as error:  # truncated files raise OSError, others SyntaxError, ...
        raise ValueError(f"cannot decode {source}: {error}") from error
    return pil


def _apply_exif_orientation(pil: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(pil)
    except Exception as error:  # noqa: BLE001 - broken EXIF must not lose an otherwise valid image
        warnings.warn(f"ignoring unreadable EXIF orientation: {error}", stacklevel=3)
        return pil


def _to_rgb(pil: Image.Image) -> Image.Image:
    if pil.mode == "RGB":
        return pil
    if pil.mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(pil).astype(np.float64)
        return Image.fromarray(_sixteen_to_eight_bit(np.clip(values, 0, 65535))).convert("RGB")
    if pil.mode == "F":
        values = np.asarray(pil)
        return Image.fromarray(_unit_float_to_eight_bit(values, "mode F image")).convert("RGB")
    # L, 1, P, PA, LA, RGBA, CMYK, YCbCr, LAB, HSV, ...: PIL's conversion (alpha dropped).
    return pil.convert("RGB")


def _sixteen_to_eight_bit(values: np.ndarray) -> np.ndarray:
    return np.rint(values / 257.0).astype(np.uint8)


def _unit_float_to_eight_bit(values: np.ndarray, what: str) -> np.ndarray:
    values = values.astype(np.float64)
    if not np.isfinite(values).all():
        raise ValueError(f"{what} contains NaN or infinite values")
    low, high = float(values.min()), float(values.max())
    if low < 0.0 or high > 1.0:
        raise ValueError(f"{what} must hold values in [0, 1], got [{low}, {high}]")
    return np.rint(values * 255.0).astype(np.uint8)


def _array_to_pil(array: np.ndarray) -> Image.Image:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise ValueError(f"image arrays must be HxW, HxWx1, HxWx3 or HxWx4, got shape {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"image array has zero size (shape {array.shape})")
    if array.dtype == np.uint8:
        pixels = array
    elif array.dtype == np.uint16:
        pixels = _sixteen_to_eight_bit(array.astype(np.float64))
    elif array.dtype == np.bool_:
        pixels = array.astype(np.uint8) * 255
    elif np.issubdtype(array.dtype, np.floating):
        pixels = _unit_float_to_eight_bit(array, "float image array")
    elif np.issubdtype(array.dtype, np.integer):
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 255:
            raise ValueError(
                f"{array.dtype} image array must hold 8-bit values in [0, 255], got [{low}, {high}] "
                "(pass uint16 for 16-bit data)"
            )
        pixels = array.astype(np.uint8)
    else:
        raise ValueError(f"unsupported image array dtype {array.dtype}")
    pixels = np.ascontiguousarray(pixels)
    return Image.fromarray(pixels)


# ------------------------------------------------------------------------------------------
# Geometry
# ------------------------------------------------------------------------------------------
def smart_resize(
    height: int, width: int, factor: int = 28, min_pixels: int = 56 * 56, max_pixels: int = 28 * 28 * 1280
) -> tuple[int, int]:
    """Qwen2-VL's target size (height, width): multiples of ``factor``, area within bounds.

    Each side is rounded to the nearest multiple of ``factor`` (Python's round, ties to
    even); if the area then exceeds ``max_pixels`` both sides are scaled down by
    sqrt(area / max_pixels) and floored to multiples (at least ``factor``); if it is
    below ``min_pixels`` they are scaled up and ceiled.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if max(height, width) / min(height, width) > 200:
        raise ValueError(
            f"image aspect ratio must be at most 200, got {max(height, width) / min(height, width):.1f} "
            f"({width}x{height})"
        )
    resized_h = round(height / factor) * factor
    resized_w = round(width / factor) * factor
    if resized_h * resized_w > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        resized_h = max(factor, math.floor(height / beta / factor) * factor)
        resized_w = max(factor, math.floor(width / beta / factor) * factor)
    elif resized_h * resized_w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        resized_h = math.ceil(height * beta / factor) * factor
        resized_w = math.ceil(width * beta / factor) * factor
    return resized_h, resized_w


def validate_boxes(boxes: BoxesInput) -> np.ndarray:
    """Boxes as float64 [n, 4] xyxy; ``ValueError`` naming the box for NaN/inf or negative size."""
    if boxes is None:
        return np.zeros((0, 4), dtype=np.float64)
    if isinstance(boxes, torch.Tensor):
        boxes = boxes.detach().cpu().double().numpy()
    array = np.asarray(boxes, dtype=np.float64)
    if array.size == 0:
        return np.zeros((0, 4), dtype=np.float64)
    if array.ndim != 2 or array.shape[1] != 4:
        raise ValueError(f"boxes must be a list of [x1, y1, x2, y2], got an array of shape {array.shape}")
    not_finite = np.flatnonzero(~np.isfinite(array).all(axis=1))
    if len(not_finite):
        raise ValueError(f"box {int(not_finite[0])} has a NaN or infinite coordinate: {array[not_finite[0]].tolist()}")
    inverted = np.flatnonzero((array[:, 2] < array[:, 0]) | (array[:, 3] < array[:, 1]))
    if len(inverted):
        raise ValueError(
            f"box {int(inverted[0])} has negative size (x2 < x1 or y2 < y1; boxes are xyxy): "
            f"{array[inverted[0]].tolist()}"
        )
    return array


def clip_boxes(boxes: BoxesInput, width: float, height: float) -> np.ndarray:
    """Validated boxes clamped to [0, width] x [0, height], float64 [n, 4].

    A box partly outside the image is cut to its inside part. A box entirely outside
    collapses to a zero-area box on the border; it is kept (region indexes stay aligned
    with the caller's list) and a warning names it.
    """
    array = validate_boxes(boxes)
    clipped = array.copy()
    clipped[:, 0::2] = np.clip(array[:, 0::2], 0.0, width)
    clipped[:, 1::2] = np.clip(array[:, 1::2], 0.0, height)
    outside = np.flatnonzero((array[:, 0] >= width) | (array[:, 2] <= 0) | (array[:, 1] >= height) | (array[:, 3] <= 0))
    if len(outside):
        warnings.warn(
            f"boxes {outside.tolist()} lie entirely outside the {width}x{height} image; "
            "they are kept as zero-area boxes on the border",
            stacklevel=2,
        )
    return clipped


# ------------------------------------------------------------------------------------------
# Processor
# ------------------------------------------------------------------------------------------
class FO1ImageProcessor:
    """Primary + aux pixels and box frames for VLM-FO1.

    Configuration is a ``preprocessor_config.json`` in transformers' Qwen2-VL format plus
    ``aux_image_size`` (and the optional ``aux_image_mean``/``aux_image_std``,
    ``min_image_side``/``max_image_side``). The pixel bounds are ``min_pixels`` /
    ``max_pixels`` when those keys exist (transformers lets them override ``size``), else
    ``size["shortest_edge"]`` / ``size["longest_edge"]``.
    """

    def __init__(
        self,
        *,
        min_pixels: int = 56 * 56,
        max_pixels: int = 28 * 28 * 1280,
        patch_size: int = 14,
        temporal_patch_size: int = 2,
        merge_size: int = 2,
        image_mean: Sequence[float] = CLIP_MEAN,
        image_std: Sequence[float] = CLIP_STD,
        rescale_factor: float = 1 / 255,
        resample: int = Image.Resampling.BICUBIC,
        aux_image_size: int = 768,
        aux_image_mean: Sequence[float] = IMAGENET_MEAN,
        aux_image_std: Sequence[float] = IMAGENET_STD,
        min_image_side: int = 28,
        max_image_side: int | None = 2048,
    ):
        if min_pixels <= 0 or max_pixels < min_pixels:
            raise ValueError(f"need 0 < min_pixels <= max_pixels, got {min_pixels}, {max_pixels}")
        if aux_image_size <= 0:
            raise ValueError(f"aux_image_size must be positive, got {aux_image_size}")
        self.min_pixels = int(min_pixels)
        self.max_pixels = int(max_pixels)
        self.patch_size = int(patch_size)
        self.temporal_patch_size = int(temporal_patch_size)
        self.merge_size = int(merge_size)
        self.image_mean = tuple(float(v) for v in image_mean)
        self.image_std = tuple(float(v) for v in image_std)
        self.rescale_factor = float(rescale_factor)
        self.resample = Image.Resampling(int(resample))
        self.aux_image_size = int(aux_image_size)
        self.aux_image_mean = tuple(float(v) for v in aux_image_mean)
        self.aux_image_std = tuple(float(v) for v in aux_image_std)
        self.min_image_side = int(min_image_side)
        self.max_image_side = None if max_image_side is None else int(max_image_side)

    # --------------------------------------------------------------------- configuration
    # Switches of transformers' processor that this one cannot turn off.
    _ALWAYS_ON = ("do_resize", "do_rescale", "do_normalize", "do_convert_rgb")
    _KEYS = (
        "patch_size",
        "temporal_patch_size",
        "merge_size",
        "image_mean",
        "image_std",
        "rescale_factor",
        "resample",
        "aux_image_size",
        "aux_image_mean",
        "aux_image_std",
        "min_image_side",
        "max_image_side",
    )

    @classmethod
    def from_dict(cls, config: dict[str, Any], **overrides: Any) -> FO1ImageProcessor:
        config = {**config, **overrides}
        for key in cls._ALWAYS_ON:
            if config.get(key, True) is False:
                raise ValueError(f"{key}=false is not supported by FO1ImageProcessor")
        size = config.get("size") or {}
        kwargs = {key: config[key] for key in cls._KEYS if key in config}
        min_pixels = config.get("min_pixels", size.get("shortest_edge"))
        max_pixels = config.get("max_pixels", size.get("longest_edge"))
        if min_pixels is not None:
            kwargs["min_pixels"] = min_pixels
        if max_pixels is not None:
            kwargs["max_pixels"] = max_pixels
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        return {
            "image_processor_type": "Qwen2VLImageProcessor",
            "do_convert_rgb": True,
            "do_resize": True,
            "do_rescale": True,
            "do_normalize": True,
            "min_pixels": self.min_pixels,
            "max_pixels": self.max_pixels,
            "size": {"shortest_edge": self.min_pixels, "longest_edge": self.max_pixels},
            "patch_size": self.patch_size,
            "temporal_patch_size": self.temporal_patch_size,
            "merge_size": self.merge_size,
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
            "rescale_factor": self.rescale_factor,
            "resample": int(self.resample),
            "aux_image_size": self.aux_image_size,
            "aux_image_mean": list(self.aux_image_mean),
            "aux_image_std": list(self.aux_image_std),
            "min_image_side": self.min_image_side,
            "max_image_side": self.max_image_side,
        }

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, **overrides: Any) -> FO1ImageProcessor:
        path = Path(folder) / PREPROCESSOR_CONFIG_NAME
        if not path.is_file():
            raise FileNotFoundError(f"no {PREPROCESSOR_CONFIG_NAME} in {folder}")
        return cls.from_dict(json.loads(path.read_text()), **overrides)

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        path = Path(folder)
        path.mkdir(parents=True, exist_ok=True)
        target = path / PREPROCESSOR_CONFIG_NAME
        target.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return target

    # --------------------------------------------------------------------- image branches
    def working_image(self, image: Image.Image) -> tuple[Image.Image, float, float]:
        """Upstream's size guards; returns the image and the x, y factors applied to it."""
        width, height = image.size
        new_w, new_h = max(self.min_image_side, width), max(self.min_image_side, height)
        if self.max_image_side is not None and max(new_w, new_h) > self.max_image_side:
            shrink = self.max_image_side / max(new_w, new_h)
            new_w, new_h = max(self.min_image_side, int(new_w * shrink)), max(self.min_image_side, int(new_h * shrink))
        if (new_w, new_h) == (width, height):
            return image, 1.0, 1.0
        return image.resize((new_w, new_h), Image.Resampling.BICUBIC), new_w / width, new_h / height

    def primary_size(self, width: int, height: int) -> tuple[int, int]:
        """(height, width) of the primary branch for a working image of the given size."""
        return smart_resize(height, width, self.patch_size * self.merge_size, self.min_pixels, self.max_pixels)

    def preprocess_primary(self, image: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        """``pixel_values`` [grid_h * grid_w, C * T * p * p] and ``image_grid_thw`` [1, 3]."""
        resized_h, resized_w = self.primary_size(*image.size)
        pixels = self._normalized(image.resize((resized_w, resized_h), self.resample), self.image_mean, self.image_std)
        channels = pixels.shape[0]
        p, m, t = self.patch_size, self.merge_size, self.temporal_patch_size
        grid_h, grid_w = resized_h // p, resized_w // p
        blocks = pixels.reshape(channels, grid_h // m, m, p, grid_w // m, m, p)
        # -> (block row, block col, row in block, col in block, C, patch row, patch col)
        blocks = blocks.transpose(1, 4, 2, 5, 0, 3, 6)
        # A still image fills all temporal_patch_size frames of a temporal patch.
        frames = np.broadcast_to(blocks[:, :, :, :, :, None], (*blocks.shape[:5], t, p, p))
        patches = np.ascontiguousarray(frames).reshape(grid_h * grid_w, channels * t * p * p)
        return torch.from_numpy(patches), torch.tensor([[1, grid_h, grid_w]], dtype=torch.int64)

    def preprocess_aux(self, image: Image.Image) -> torch.Tensor:
        """[3, S, S] float32: the image squashed to S x S, ImageNet-normalised."""
        resized = image.resize((self.aux_image_size, self.aux_image_size), self.resample)
        return torch.from_numpy(self._normalized(resized, self.aux_image_mean, self.aux_image_std))

    def _normalized(self, image: Image.Image, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
        # transformers rescales in float64 and casts to float32, then normalises in float32.
        pixels = (np.asarray(image, dtype=np.uint8).astype(np.float64) * self.rescale_factor).astype(np.float32)
        pixels = (pixels - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
        return np.ascontiguousarray(pixels.transpose(2, 0, 1))

    # --------------------------------------------------------------------- boxes
    def aux_boxes(self, boxes: BoxesInput, width: int, height: int, scale_x: float = 1.0, scale_y: float = 1.0):
        """Boxes in original pixels -> float32 [n, 4] in the aux frame.

        ``scale_x``/``scale_y`` are ``working_image``'s factors; ``width``/``height`` the
        working image's size.
        """
        array = validate_boxes(boxes)
        array[:, 0::2] *= scale_x
        array[:, 1::2] *= scale_y
        clipped = clip_boxes(array, width, height)
        size = self.aux_image_size
        # Same float64 operation order as upstream: x * S / W.
        clipped[:, 0::2] = clipped[:, 0::2] * size / width
        clipped[:, 1::2] = clipped[:, 1::2] * size / height
        return torch.from_numpy(clipped.astype(np.float32))

    def primary_boxes(self, aux_boxes: torch.Tensor, image_grid_thw: torch.Tensor) -> torch.Tensor:
        """Aux-frame boxes -> float32 boxes in the primary frame (grid * patch_size pixels)."""
        grid_h, grid_w = int(image_grid_thw.reshape(-1)[1]), int(image_grid_thw.reshape(-1)[2])
        scale_x = grid_w * self.patch_size / self.aux_image_size
        scale_y = grid_h * self.patch_size / self.aux_image_size
        factors = torch.tensor([scale_x, scale_y, scale_x, scale_y], dtype=torch.float32)
        return aux_boxes.to(torch.float32) * factors

    # --------------------------------------------------------------------- batch call
    def __call__(
        self,
        images: ImageInput | Sequence[ImageInput],
        boxes: BoxesInput | Sequence[BoxesInput] = None,
    ) -> dict[str, Any]:
        """Preprocess one image or a list of images (with one box list per image).

        Returns ``pixel_values`` [sum of grid_h*grid_w, C*T*p*p], ``image_grid_thw`` [B, 3],
        ``aux_pixel_values`` [B, 3, S, S], ``aux_boxes`` / ``primary_boxes`` (lists of
        float32 [n_i, 4]) and ``image_sizes`` [B, 2] (original width, height).
        """
        batched = isinstance(images, (list, tuple))
        image_list = list(images) if batched else [images]
        if not image_list:
            raise ValueError("no images given")
        if boxes is None:
            box_lists = [None] * len(image_list)
        elif batched:
            box_lists = list(boxes)
            if len(box_lists) != len(image_list):
                raise ValueError(f"got {len(image_list)} images but {len(box_lists)} box lists")
        else:
            box_lists = [boxes]

        pixel_values, grids, aux_pixels, aux_boxes, primary_boxes, sizes = [], [], [], [], [], []
        for index, (image, image_boxes) in enumerate(zip(image_list, box_lists)):
            pil = load_image(image)
            sizes.append(pil.size)
            working, scale_x, scale_y = self.working_image(pil)
            pixels, grid = self.preprocess_primary(working)
            pixel_values.append(pixels)
            grids.append(grid)
            aux_pixels.append(self.preprocess_aux(working))
            try:
                aux = self.aux_boxes(image_boxes, working.width, working.height, scale_x, scale_y)
            except ValueError as error:
                raise ValueError(f"image {index}: {error}") from error
            aux_boxes.append(aux)
            primary_boxes.append(self.primary_boxes(aux, grid))
        return {
            "pixel_values": torch.cat(pixel_values),
            "image_grid_thw": torch.cat(grids),
            "aux_pixel_values": torch.stack(aux_pixels),
            "aux_boxes": aux_boxes,
            "primary_boxes": primary_boxes,
            "image_sizes": torch.tensor(sizes, dtype=torch.int64),
        }
