"""The HTTP API on a tiny random FO1: every endpoint, validation, limits, batching, queue and timeout."""
from __future__ import annotations

import base64
import contextlib
import io
import json
import threading
import time

import pytest
from PIL import Image, ImageDraw

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from vlmfo1.pipeline.results import RESULT_JSON_SCHEMA  # noqa: E402
from vlmfo1.serving.api import create_app  # noqa: E402
from vlmfo1.serving.engine import InferenceEngine  # noqa: E402
from vlmfo1.serving.limits import ServingLimits  # noqa: E402
from vlmfo1.serving.schemas import TASK_ENDPOINTS  # noqa: E402

BOXES = [[10.0, 12.0, 50.0, 52.0], [70.0, 40.0, 120.0, 90.0], [5.0, 70.0, 40.0, 110.0]]


@pytest.fixture(scope="module")
def pipeline(serving_model_dir):
    import torch

    from vlmfo1.pipeline import FO1Pipeline

    # One intra-op thread: the server's own threads (requests, proposals) share the cores, and a
    # tiny model gains nothing from more (on a busy 2-core machine, 2 threads were 10x slower).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield FO1Pipeline.from_pretrained(serving_model_dir, proposer=None, max_new_tokens=12)
    torch.set_num_threads(threads)


def make_engine(pipeline, **limits) -> InferenceEngine:
    from vlmfo1.proposals import build_proposer

    return InferenceEngine(
        pipeline, model_name="tiny", limits=ServingLimits(**limits),
        proposers={"contours": build_proposer("contours")}, default_proposer="contours",
    )


@pytest.fixture(scope="module")
def engine(pipeline):
    engine = make_engine(pipeline, max_image_bytes=60_000, max_image_pixels=200 * 200, max_regions=5, max_prompt_chars=200)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def client(engine):
    with TestClient(create_app(engine)) as client:
        yield client


def scene_png(width: int = 160, height: int = 120) -> bytes:
    image = Image.new("RGB", (width, height), (30, 40, 180))
    draw = ImageDraw.Draw(image)
    draw.ellipse([10, 12, 50, 52], fill=(230, 20, 20))
    draw.rectangle([70, 40, 120, 90], fill=(20, 200, 60))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


PNG = scene_png()
B64 = base64.b64encode(PNG).decode()


def check_result(result: dict, task: str) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(result, RESULT_JSON_SCHEMA)
    assert result["task"] == task
    assert result["image_size"] == [160, 120]


# -- every endpoint --------------------------------------------------------------------------
ENDPOINT_BODIES = {
    "/v1/detect": ({"categories": ["red circle", "green square"], "boxes": BOXES}, "detect",
                   ["Please detect red circle, green square in this image. Answer the question with object indexes."]),
    "/v1/refer": ({"expression": "the red circle", "boxes": BOXES}, "refer",
                  ["Please detect the red circle in this image. Answer the question with object indexes."]),
    "/v1/count": ({"category": "circle", "boxes": BOXES}, "count", None),
    "/v1/caption": ({"boxes": BOXES[:2], "detailed": True}, "caption",
                    ["Provide a detailed description for <region0>.", "Provide a detailed description for <region1>."]),
    "/v1/ocr": ({"boxes": BOXES[:1]}, "ocr", ["Please provide the ocr results of <region0> in the image."]),
    "/v1/ask": ({"question": "What colour is <region1>?", "boxes": BOXES}, "ask", ["What colour is <region1>?"]),
    "/v1/detect-like": ({"reference_box": BOXES[0], "boxes": BOXES[1:]}, "detect_like", None),
    "/v1/grounded-caption": ({"boxes": BOXES}, "grounded_caption", None),
    "/v1/reason": ({"question": "Which shape is largest?", "boxes": BOXES}, "reason", None),
    "/v1/detect-everything": ({"boxes": BOXES}, "detect_everything",
                              ["Please identify every object in the image and provide their labels along with their indexes."]),
}


def test_every_task_endpoint_is_tested():
    assert set(ENDPOINT_BODIES) == set(TASK_ENDPOINTS)


@pytest.mark.parametrize("path", sorted(ENDPOINT_BODIES))
def test_task_endpoint_answers_with_a_valid_result(client, path):
    body, pipeline_task, queries = ENDPOINT_BODIES[path]
    response = client.post(path, json={"image": B64, **body})
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["model"] == "tiny" and data["task"] == TASK_ENDPOINTS[path][0]
    result = data["result"]
    check_result(result, pipeline_task)
    if queries is not None:
        assert result["queries"] == queries
    expected_boxes = ([body["reference_box"]] if "reference_box" in body else []) + body["boxes"]
    assert result["proposals"]["boxes"] == expected_boxes
    assert result["proposals"]["source"] == "user"
    if path == "/v1/caption":
        assert [answer["index"] for answer in result["region_answers"]] == [0, 1]
    assert data["timing"]["total_ms"] > 0


def test_multipart_upload_gives_the_same_answer_as_base64(client):
    body = {"categories": "red circle", "boxes": BOXES}
    as_json = client.post("/v1/detect", json={"image": B64, **body}).json()["result"]
    upload = client.post(
        "/v1/detect", files={"image": ("scene.png", PNG, "image/png")}, data={"categories": "red circle", "boxes": json.dumps(BOXES)}
    )
    assert upload.status_code == 200, upload.text
    assert upload.json()["result"] == as_json


def test_without_boxes_the_proposer_gives_regions_and_min_score_filters_them(client):
    everything = client.post("/v1/detect", json={"image": B64, "categories": "red circle"}).json()["result"]
    assert everything["proposals"]["source"] == "contours" and len(everything["proposals"]["boxes"]) > 0
    scores = everything["proposals"]["scores"]
    threshold = sorted(scores)[len(scores) // 2]
    filtered = client.post("/v1/detect", json={"image": B64, "categories": "red circle", "min_score": threshold}).json()["result"]
    assert filtered["proposals"]["scores"] == [s for s in scores if s >= threshold]
    assert filtered["proposals"]["boxes"] == [b for b, s in zip(everything["proposals"]["boxes"], scores) if s >= threshold]


def test_unknown_proposer_is_refused(client):
    response = client.post("/v1/detect", json={"image": B64, "categories": "x", "proposer": "user:/etc/passwd"})
    assert response.status_code == 422
    assert "unknown proposer 'user:/etc/passwd'" in response.json()["error"]["message"]


def test_max_new_tokens_is_capped_by_the_server(client):
    response = client.post("/v1/ask", json={"image": B64, "question": "hi", "boxes": BOXES, "max_new_tokens": 13})
    assert response.status_code == 422 and "between 1 and this server's 12" in response.json()["error"]["message"]
    short = client.post("/v1/ask", json={"image": B64, "question": "hi", "boxes": BOXES, "max_new_tokens": 2})
    assert short.status_code == 200


# -- chat --------------------------------------------------------------------------------------
def chat_body(**extra):
    return {
        "model": "tiny",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": [
                {"type": "text", "text": "Look: "},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64," + B64}},
                {"type": "text", "text": "What is <region0>?"},
            ]},
        ],
        "boxes": BOXES[:2],
        **extra,
    }


def test_chat_completions_is_openai_shaped_with_the_regions_extension(client):
    response = client.post("/v1/chat/completions", json=chat_body(temperature=0.7))
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["object"] == "chat.completion" and data["model"] == "tiny" and data["id"].startswith("chatcmpl-")
    choice = data["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] in ("stop", "length")
    result = data["vlmfo1"]
    check_result(result, "chat")
    assert choice["message"]["content"] == "\n".join(result["raw_answers"])
    assert result["proposals"]["boxes"] == BOXES[:2]
    assert result["queries"] == ["Look: <image>What is <region0>?"]  # the image sits where its part was
    assert any("temperature ignored" in warning for warning in result["warnings"])


def test_chat_without_image_is_text_only(client):
    response = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Say hi."}]})
    assert response.status_code == 200, response.text
    assert response.json()["vlmfo1"]["proposals"]["boxes"] == []


@pytest.mark.parametrize(
    "change, message",
    [
        ({"model": "gpt-4"}, "not served here"),
        ({"stream": True}, "stream"),
        ({"n": 2}, "n"),
        ({"messages": []}, "messages"),
        ({"frequency_penalty": 1.0}, "frequency_penalty"),
        ({"boxes": [[1, 2, 3]]}, "boxes.0"),
        ({"max_tokens": 99}, "between 1 and this server's 12"),
    ],
)
def test_chat_validation_errors(client, change, message):
    response = client.post("/v1/chat/completions", json=chat_body(**change))
    expected = 404 if "model" in change else 422
    assert response.status_code == expected, response.text
    assert message in response.json()["error"]["message"]


def test_chat_refuses_two_images_and_remote_urls(client):
    body = chat_body()
    body["messages"][1]["content"].append({"type": "image_url", "image_url": {"url": "data:image/png;base64," + B64}})
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 422 and "one image per request" in response.json()["error"]["message"]
    body = chat_body()
    body["messages"][1]["content"][1]["image_url"]["url"] = "http://169.254.169.254/latest/meta-data"
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 422 and "URLs and server paths are not read" in response.json()["error"]["message"]


# -- validation and limits ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "body, fragment",
    [
        ({"categories": "x", "boxes": [[1, 2, 3]]}, "boxes.0: List should have at least 4 items"),
        ({"categories": "x", "boxes": [[10, 10, 5, 20]]}, "x1 <= x2"),
        ({"categories": []}, "categories"),
        ({"boxes": BOXES}, "categories: Field required"),
        ({"categories": "x", "colour": "red"}, "colour: Extra inputs are not permitted"),
        ({"categories": "x", "scores": [0.5]}, "scores were given without boxes"),
        ({"categories": "x", "boxes": BOXES, "scores": [0.1]}, "1 scores for 3 boxes"),
        ({"categories": "x", "boxes": BOXES, "proposer": "contours"}, "cannot be combined with boxes"),
    ],
)
def test_schema_validation_errors_are_422_with_a_message(client, body, fragment):
    response = client.post("/v1/detect", json={"image": B64, **body})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and fragment in error["message"]


def test_caption_without_boxes_is_refused(client):
    response = client.post("/v1/caption", json={"image": B64})
    assert response.status_code == 422 and "boxes: Field required" in response.json()["error"]["message"]


def test_invalid_json_body(client):
    response = client.post("/v1/detect", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 422 and "not valid JSON" in response.json()["error"]["message"]


def test_other_content_types_are_415(client):
    response = client.post("/v1/detect", content=b"categories=x", headers={"content-type": "text/plain"})
    assert response.status_code == 415


def test_malformed_base64_is_422(client):
    response = client.post("/v1/detect", json={"image": "this is *not* base64", "categories": "x"})
    assert response.status_code == 422 and "not valid base64" in response.json()["error"]["message"]


def test_a_server_path_as_image_is_refused(client):
    response = client.post("/v1/detect", json={"image": "/etc/hostname", "categories": "x"})
    assert response.status_code == 422 and "server paths are not read" in response.json()["error"]["message"]


def test_bytes_that_are_not_an_image_are_422(client):
    response = client.post("/v1/detect", json={"image": base64.b64encode(b"GIF89a garbage").decode(), "categories": "x"})
    assert response.status_code == 422 and "not a readable image" in response.json()["error"]["message"]


def test_oversize_image_is_413(client, engine):
    big = bytes(engine.limits.max_image_bytes + 1)
    response = client.post("/v1/detect", json={"image": base64.b64encode(big).decode(), "categories": "x"})
    assert response.status_code == 413 and response.json()["error"]["type"] == "payload_too_large"
    upload = client.post("/v1/detect", files={"image": ("big.png", big, "image/png")}, data={"categories": "x"})
    assert upload.status_code == 413


def test_too_many_pixels_is_413(client):
    response = client.post("/v1/detect", json={"image": base64.b64encode(scene_png(300, 200)).decode(), "categories": "x"})
    assert response.status_code == 413 and "300x200 = 60000 pixels" in response.json()["error"]["message"]


def test_oversize_body_is_413_before_it_is_read(client, engine):
    response = client.post("/v1/detect", content=b"x" * (engine.limits.max_body_bytes + 1), headers={"content-type": "application/json"})
    assert response.status_code == 413 and "the limit is" in response.json()["error"]["message"]


def test_oversize_chunked_body_is_413(client, engine):
    def chunks():
        for _ in range(engine.limits.max_body_bytes // 65536 + 2):
            yield b"x" * 65536

    response = client.post("/v1/detect", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413


def test_too_many_boxes_is_422(client, engine):
    boxes = [[1, 1, 20, 20]] * (engine.limits.max_regions + 1)
    response = client.post("/v1/detect", json={"image": B64, "categories": "x", "boxes": boxes})
    assert response.status_code == 422 and "6 boxes given; the limit is 5" in response.json()["error"]["message"]


def test_prompt_length_limit(client):
    response = client.post("/v1/ask", json={"image": B64, "question": "why? " * 50, "boxes": BOXES})
    assert response.status_code == 422 and "question has 250 characters; the limit is 200" in response.json()["error"]["message"]


# -- service ------------------------------------------------------------------------------------
def test_healthz_reports_model_limits_and_batching(client):
    data = client.get("/healthz").json()
    assert data["status"] == "ok" and data["model"] == "tiny" and data["proposers"] == ["contours"]
    assert data["limits"]["max_regions"] == 5 and data["max_new_tokens"] == 12
    assert data["batching"]["completed"] >= 1


def test_openapi_schema_documents_every_endpoint_and_body(client):
    schema = client.get("/openapi.json").json()
    for path in [*TASK_ENDPOINTS, "/v1/chat/completions"]:
        body = schema["paths"][path]["post"]["requestBody"]["content"]
        ref = body["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
        assert ref in schema["components"]["schemas"], ref
        assert "422" in schema["paths"][path]["post"]["responses"]
    detect = schema["components"]["schemas"]["DetectRequest"]
    assert {"image", "categories", "boxes"} <= set(detect["properties"]) and set(detect["required"]) == {"image", "categories"}
    assert "multipart/form-data" in schema["paths"]["/v1/detect"]["post"]["requestBody"]["content"]
    assert "/healthz" in schema["paths"]


# -- batching, queue, timeout --------------------------------------------------------------------
def test_concurrent_requests_are_micro_batched_with_the_same_answers(pipeline):
    engine = make_engine(pipeline, max_batch_size=4, batch_window_ms=500)
    try:
        with TestClient(create_app(engine)) as client:
            bodies = [{"image": B64, "categories": name, "boxes": BOXES} for name in ("red circle", "green square", "blue star", "circle")]
            alone = [client.post("/v1/detect", json=body).json()["result"] for body in bodies]
            assert engine.batcher.stats.batch_sizes[1] == 4
            together: list = [None] * len(bodies)

            def post(k):
                together[k] = client.post("/v1/detect", json=bodies[k]).json()["result"]

            threads = [threading.Thread(target=post, args=(k,)) for k in range(len(bodies))]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(60)
        assert max(engine.batcher.stats.batch_sizes) > 1  # some requests shared a model call
        for one, batched in zip(alone, together):
            assert batched["queries"] == one["queries"] and batched["proposals"] == one["proposals"]
            assert batched["raw_answers"] == one["raw_answers"]
    finally:
        engine.close()


@contextlib.contextmanager
def occupied_worker(engine: InferenceEngine):
    """Holds the engine's one worker on a request until the block ends.

    The worker blocks on an event rather than on a long computation: whether a later request waits
    must not depend on how fast the machine running the tests happens to be."""
    release = threading.Event()
    request, _ = engine.prepare("caption", Image.open(io.BytesIO(PNG)).convert("RGB"), {"boxes": BOXES})
    run = engine.pipeline.run

    def run_after_release(requests):
        if any(r is request for r in requests):
            assert release.wait(120), "the test never released the worker"
        return run(requests)

    engine.pipeline.run = run_after_release  # an instance attribute: `del` below restores the method
    future = None
    try:
        future = engine.submit(request)
        deadline = time.monotonic() + 30
        while not future.running() and not future.done() and time.monotonic() < deadline:
            time.sleep(0.005)
        assert future.running(), "the worker did not start the holding request"
        yield future, request
    finally:
        release.set()
        if future is not None:
            future.result(120)
        del engine.pipeline.run


def test_full_queue_gives_503_with_retry_after(pipeline):
    engine = make_engine(pipeline, max_batch_size=1, batch_window_ms=0, max_queue=1)
    try:
        with TestClient(create_app(engine)) as client:
            with occupied_worker(engine) as (_, request):
                waiting = engine.submit(request)  # fills the queue (one place)
                response = client.post("/v1/detect", json={"image": B64, "categories": "x", "boxes": BOXES})
                assert response.status_code == 503 and response.headers["retry-after"] == "1"
                assert "busy" in response.json()["error"]["message"]
                assert engine.batcher.stats.rejected == 1
            waiting.result(120)
    finally:
        engine.close()


def test_timeout_gives_504_and_the_abandoned_request_is_not_computed(pipeline):
    engine = make_engine(pipeline, max_batch_size=1, batch_window_ms=0, request_timeout_s=0.5)
    try:
        with TestClient(create_app(engine)) as client:
            with occupied_worker(engine):
                response = client.post("/v1/detect", json={"image": B64, "categories": "x", "boxes": BOXES})
                assert response.status_code == 504, response.text
                assert "no answer within the request timeout of 0.5 s" in response.json()["error"]["message"]
        engine.close()  # answers whatever is still queued, then stops
        stats = engine.batcher.stats
        assert stats.cancelled == 1 and stats.completed == 1  # only the holding request ran
    finally:
        engine.close()


# -- answers that mean something: a model scripted to answer "red circle: regions 1 and 3" ----------
@pytest.fixture(scope="module")
def scripted_client():
    from pipeline_support import make_processor, scripted_model

    from vlmfo1.pipeline import FO1Pipeline

    processor = make_processor()
    engine = InferenceEngine(FO1Pipeline(scripted_model(processor), processor, proposer=None, max_new_tokens=24),
                             model_name="scripted")
    with TestClient(create_app(engine)) as client:
        yield client
    engine.close()


def test_detections_come_back_as_the_named_regions_boxes(scripted_client):
    from pipeline_support import ANSWER

    boxes = BOXES + [[100.0, 5.0, 150.0, 35.0]]
    response = scripted_client.post("/v1/detect", json={"image": B64, "categories": "red circle", "boxes": boxes,
                                                        "scores": [0.9, 0.8, 0.7, 0.6]})
    assert response.status_code == 200, response.text
    result = response.json()["result"]
    assert result["raw_answers"] == [ANSWER]
    assert [(d["index"], d["label"], d["box"], d["score"]) for d in result["detections"]] == [
        (1, "red circle", boxes[1], 0.8), (3, "red circle", boxes[3], 0.6)
    ]
    chat = scripted_client.post("/v1/chat/completions", json={
        "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64," + B64}},
                                                   {"type": "text", "text": "Find the red circle."}]}],
        "boxes": boxes,
    }).json()
    assert chat["choices"][0]["message"]["content"] == ANSWER and chat["choices"][0]["finish_reason"] == "stop"
    assert [d["box"] for d in chat["vlmfo1"]["detections"]] == [boxes[1], boxes[3]]


def test_multipart_repeated_field_is_a_list(scripted_client):
    boxes = BOXES + [[100.0, 5.0, 150.0, 35.0]]
    response = scripted_client.post(
        "/v1/detect", files={"image": ("scene.png", PNG, "image/png")},
        data={"categories": ["red circle", "blue star"], "boxes": json.dumps(boxes), "per_category": "true"},
    )
    assert response.status_code == 200, response.text
    result = response.json()["result"]
    assert result["queries"] == ["Please detect red circle in this image. Answer the question with object indexes.",
                                 "Please detect blue star in this image. Answer the question with object indexes."]
    # per category: each prompt's regions are labelled with the category it asked for
    assert sorted((d["index"], d["label"]) for d in result["detections"]) == [(1, "blue star"), (1, "red circle"), (3, "blue star"), (3, "red circle")]
