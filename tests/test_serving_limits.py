"""Serving limits and the micro-batcher, without a model: decoding, sizes, queueing, cancellation."""
from __future__ import annotations

import base64
import io
import threading
import time

import pytest
from PIL import Image

from vlmfo1.serving.batcher import MicroBatcher
from vlmfo1.serving.limits import (
    InvalidRequest,
    PayloadTooLarge,
    QueueFull,
    ServingLimits,
    check_prompt,
    check_regions,
    decode_base64_image,
    open_image,
)


def png_bytes(width: int = 40, height: int = 30, colour=(200, 10, 10)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, "PNG")
    return buffer.getvalue()


# -- images ------------------------------------------------------------------------------------
def test_base64_and_data_uri_decode_to_the_same_image():
    limits = ServingLimits()
    data = png_bytes()
    plain = decode_base64_image(base64.b64encode(data).decode(), limits)
    uri = decode_base64_image("data:image/png;base64," + base64.b64encode(data).decode(), limits)
    assert plain == uri == data
    image = open_image(plain, limits)
    assert image.size == (40, 30) and image.mode == "RGB" and image.getpixel((5, 5)) == (200, 10, 10)


def test_base64_with_line_breaks_is_accepted():
    data = png_bytes()
    wrapped = base64.encodebytes(data).decode()  # MIME style: a newline every 76 characters
    assert "\n" in wrapped.strip()
    assert decode_base64_image(wrapped, ServingLimits()) == data


@pytest.mark.parametrize("text", ["not base64 at all!", "abc", "data:image/png;base64,@@@@"])
def test_malformed_base64_is_an_invalid_request(text):
    with pytest.raises(InvalidRequest, match="base64"):
        decode_base64_image(text, ServingLimits())


@pytest.mark.parametrize("text", ["/etc/passwd", "../secret.png", "file:///etc/passwd", "https://example.com/a.png", "~/x.png"])
def test_paths_and_urls_are_refused_not_read(text):
    with pytest.raises(InvalidRequest, match="URLs and server paths are not read"):
        decode_base64_image(text, ServingLimits())


def test_data_uri_without_base64_is_refused():
    with pytest.raises(InvalidRequest, match="base64-encoded"):
        decode_base64_image("data:image/png,rawbytes", ServingLimits())


def test_oversize_base64_is_refused_before_decoding():
    limits = ServingLimits(max_image_bytes=1000)
    with pytest.raises(PayloadTooLarge, match="1000 bytes"):
        decode_base64_image(base64.b64encode(b"\0" * 2000).decode(), limits)


def test_image_bytes_limit():
    data = png_bytes(200, 200)
    with pytest.raises(PayloadTooLarge, match=f"{len(data)} bytes"):
        open_image(data, ServingLimits(max_image_bytes=len(data) - 1))
    assert open_image(data, ServingLimits(max_image_bytes=len(data))).size == (200, 200)


def test_pixel_limit_is_checked_from_the_header():
    data = png_bytes(100, 50)
    with pytest.raises(PayloadTooLarge, match="100x50 = 5000 pixels"):
        open_image(data, ServingLimits(max_image_pixels=4999))
    assert open_image(data, ServingLimits(max_image_pixels=5000)).size == (100, 50)


def test_undecodable_bytes_are_an_invalid_request():
    with pytest.raises(InvalidRequest, match="not a readable image"):
        open_image(b"this is not an image", ServingLimits())
    truncated = png_bytes(64, 64)[:-30]
    with pytest.raises(InvalidRequest):
        open_image(truncated, ServingLimits())


def test_region_and_prompt_limits():
    limits = ServingLimits(max_regions=2, max_prompt_chars=5)
    check_regions([[0, 0, 1, 1]] * 2, limits)
    with pytest.raises(InvalidRequest, match="3 boxes given; the limit is 2"):
        check_regions([[0, 0, 1, 1]] * 3, limits)
    check_prompt("abcde", limits, "question")
    with pytest.raises(InvalidRequest, match="question has 6 characters"):
        check_prompt("abcdef", limits, "question")


def test_limits_refuse_nonsense_settings():
    with pytest.raises(ValueError, match="max_queue"):
        ServingLimits(max_queue=0)
    with pytest.raises(ValueError, match="request_timeout_s"):
        ServingLimits(request_timeout_s=0)


# -- micro-batcher -----------------------------------------------------------------------------
class RecordingRunner:
    """Squares numbers, records each batch; optionally blocks until released."""

    def __init__(self, block: bool = False):
        self.batches: list[list[int]] = []
        self.release = threading.Event()
        self.started = threading.Event()
        if not block:
            self.release.set()

    def __call__(self, items):
        self.started.set()
        self.release.wait(10)
        self.batches.append(list(items))
        return [ValueError(f"bad {x}") if x < 0 else x * x for x in items]


def test_requests_arriving_together_share_a_batch():
    runner = RecordingRunner()
    batcher = MicroBatcher(runner, max_batch_size=4, max_wait_s=0.3, max_queue=16)
    futures = [batcher.submit(x) for x in range(6)]
    assert [f.result(5) for f in futures] == [x * x for x in range(6)]
    batcher.close()
    assert runner.batches[0] == [0, 1, 2, 3]  # the window kept the first batch open until it was full
    assert sorted(x for batch in runner.batches for x in batch) == list(range(6))  # each answered once
    stats = batcher.stats.as_dict()
    assert stats["completed"] == 6 and stats["batches"] == len(runner.batches) and stats["batch_sizes"]["4"] == 1


def test_without_a_window_a_lone_request_is_not_delayed():
    runner = RecordingRunner()
    batcher = MicroBatcher(runner, max_batch_size=8, max_wait_s=0.0)
    started = time.monotonic()
    assert batcher.submit(3).result(5) == 9
    assert time.monotonic() - started < 1.0
    batcher.close()


def test_one_failing_item_fails_only_its_own_request():
    batcher = MicroBatcher(RecordingRunner(), max_batch_size=4, max_wait_s=0.2)
    good, bad = batcher.submit(2), batcher.submit(-1)
    assert good.result(5) == 4
    with pytest.raises(ValueError, match="bad -1"):
        bad.result(5)
    batcher.close()
    assert batcher.stats.failed == 1 and batcher.stats.completed == 1


def test_a_crashing_runner_fails_every_request_of_its_batch_and_the_worker_survives():
    calls = []

    def runner(items):
        calls.append(items)
        if len(calls) == 1:
            raise RuntimeError("model exploded")
        return items

    batcher = MicroBatcher(runner, max_batch_size=2, max_wait_s=0.2)
    first = [batcher.submit(1), batcher.submit(2)]
    for future in first:
        with pytest.raises(RuntimeError, match="model exploded"):
            future.result(5)
    assert batcher.submit(7).result(5) == 7
    batcher.close()


def test_full_queue_refuses_at_once():
    runner = RecordingRunner(block=True)
    batcher = MicroBatcher(runner, max_batch_size=1, max_wait_s=0.0, max_queue=2)
    running = batcher.submit(1)
    assert runner.started.wait(5)  # the worker holds item 1; the queue is empty again
    queued = [batcher.submit(2), batcher.submit(3)]
    with pytest.raises(QueueFull, match="2 requests are already waiting"):
        batcher.submit(4)
    assert batcher.stats.rejected == 1
    runner.release.set()
    assert running.result(5) == 1 and [f.result(5) for f in queued] == [4, 9]
    batcher.close()


def test_cancelled_requests_are_never_computed():
    runner = RecordingRunner(block=True)
    batcher = MicroBatcher(runner, max_batch_size=1, max_wait_s=0.0, max_queue=4)
    running = batcher.submit(1)
    assert runner.started.wait(5)
    abandoned = batcher.submit(2)
    kept = batcher.submit(3)
    assert abandoned.cancel()  # its client timed out while it waited
    runner.release.set()
    assert kept.result(5) == 9 and running.result(5) == 1
    batcher.close()
    assert [x for batch in runner.batches for x in batch] == [1, 3]
    assert batcher.stats.cancelled == 1


def test_group_key_keeps_different_kinds_apart():
    runner = RecordingRunner()
    batcher = MicroBatcher(runner, max_batch_size=8, max_wait_s=0.3, group_key=lambda x: x % 2)
    futures = [batcher.submit(x) for x in range(6)]
    assert [f.result(5) for f in futures] == [x * x for x in range(6)]
    batcher.close()
    assert all(len({x % 2 for x in batch}) == 1 for batch in runner.batches)


def test_closed_batcher_refuses_new_work():
    batcher = MicroBatcher(RecordingRunner())
    batcher.close()
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit(1)
