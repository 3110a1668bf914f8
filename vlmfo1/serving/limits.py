"""What a served model accepts, and the errors a request gets when it asks for more.

Every front end (HTTP API, Gradio app) decodes images and checks requests through this module,
so the same request meets the same limits and the same messages wherever it arrives. Images are
only ever taken as bytes (an upload, base64 or a `data:` URI): nothing a request holds is opened
as a server path or fetched as a URL.
"""
from __future__ import annotations

import base64
import binascii
import io
import math
import re
from dataclasses import dataclass

from PIL import Image

from vlmfo1.prompts import MAX_REGIONS


@dataclass
class ServingLimits:
    max_image_bytes: int = 10 * 1024 * 1024  # encoded size of one image
    max_image_pixels: int = 25_000_000  # width x height, read from the header before decoding
    max_regions: int = MAX_REGIONS  # boxes given with one request
    max_prompt_chars: int = 2000  # categories, question, or all chat messages together
    max_messages: int = 32  # chat turns in one request
    request_timeout_s: float = 60.0  # from arrival to answer; 504 after
    max_queue: int = 64  # requests waiting for the model; 503 beyond
    max_batch_size: int = 8  # requests answered by one pipeline call
    batch_window_ms: float = 10.0  # how long the first request of a batch waits for company

    def __post_init__(self) -> None:
        for name in ("max_image_bytes", "max_image_pixels", "max_regions", "max_prompt_chars", "max_messages", "max_queue", "max_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not self.request_timeout_s > 0:
            raise ValueError(f"request_timeout_s must be positive, got {self.request_timeout_s}")
        if not self.batch_window_ms >= 0:
            raise ValueError(f"batch_window_ms must be >= 0, got {self.batch_window_ms}")

    @property
    def max_body_bytes(self) -> int:
        """Largest HTTP body: one image in base64 (4/3 of its bytes) plus room for the other fields."""
        return math.ceil(self.max_image_bytes * 4 / 3) + 256 * 1024


class ServingError(Exception):
    """A request the server refuses or cannot answer; `status_code` is its HTTP status."""

    status_code = 500
    error_type = "server_error"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InvalidRequest(ServingError):
    status_code = 422
    error_type = "invalid_request_error"


class PayloadTooLarge(ServingError):
    status_code = 413
    error_type = "payload_too_large"


class QueueFull(ServingError):
    status_code = 503
    error_type = "overloaded"


class RequestTimeout(ServingError):
    status_code = 504
    error_type = "timeout"


_DATA_URI = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[\w.+-]+)*)(?P<b64>;base64)?,", re.ASCII)


def decode_base64_image(text: str, limits: ServingLimits, field: str = "image") -> bytes:
    """Image bytes from plain base64 or a `data:image/...;base64,` URI; anything else is refused.

    A string that looks like a URL or a path is refused with a message saying so: the server
    never reads files or fetches URLs named by a request.
    """
    text = text.strip()
    if not text:
        raise InvalidRequest(f"{field} is empty")
    match = _DATA_URI.match(text)
    if match:
        if not match.group("b64"):
            raise InvalidRequest(f"{field}: a data: URI must be base64-encoded (data:image/png;base64,...)")
        text = text[match.end():]
    elif re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", text) or text.startswith(("/", "./", "../", "~")):
        raise InvalidRequest(
            f"{field} must hold the image itself (base64 or a data: URI); URLs and server paths are not read"
        )
    # Base64 grows 4/3: refuse an oversize payload before decoding it.
    if len(text) * 3 // 4 > limits.max_image_bytes + 3:
        raise PayloadTooLarge(f"{field} is larger than the limit of {limits.max_image_bytes} bytes")
    try:
        data = base64.b64decode(re.sub(r"\s+", "", text), validate=True)
    except (binascii.Error, ValueError) as error:
        raise InvalidRequest(f"{field} is not valid base64: {error}") from error
    return data


def open_image(data: bytes, limits: ServingLimits, field: str = "image") -> Image.Image:
    """Decoded RGB image of encoded bytes, after checking byte and pixel limits.

    The pixel count comes from the header, so a decompression bomb is refused before decoding.
    """
    from vlmfo1.processing.image_processing import load_image

    if not data:
        raise InvalidRequest(f"{field} is empty")
    if len(data) > limits.max_image_bytes:
        raise PayloadTooLarge(f"{field} has {len(data)} bytes; the limit is {limits.max_image_bytes}")
    try:
        with Image.open(io.BytesIO(data)) as header:
            width, height = header.size
    except Image.DecompressionBombError as error:
        raise PayloadTooLarge(f"{field}: {error}") from error
    except Exception as error:  # PIL signals unreadable data with many exception types
        raise InvalidRequest(f"{field} is not a readable image: {error}") from error
    if width * height > limits.max_image_pixels:
        raise PayloadTooLarge(
            f"{field} is {width}x{height} = {width * height} pixels; the limit is {limits.max_image_pixels}"
        )
    try:
        return load_image(data)
    except Image.DecompressionBombError as error:
        raise PayloadTooLarge(f"{field}: {error}") from error
    except ValueError as error:
        raise InvalidRequest(f"{field}: {error}") from error


def check_regions(boxes, limits: ServingLimits, field: str = "boxes") -> None:
    if boxes is not None and len(boxes) > limits.max_regions:
        raise InvalidRequest(f"{field}: {len(boxes)} boxes given; the limit is {limits.max_regions} per request")


def check_prompt(text: str, limits: ServingLimits, field: str) -> None:
    if len(text) > limits.max_prompt_chars:
        raise InvalidRequest(f"{field} has {len(text)} characters; the limit is {limits.max_prompt_chars}")
