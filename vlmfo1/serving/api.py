"""HTTP API (FastAPI): one JSON endpoint per task, an OpenAI-style chat endpoint, health and schema.

    vlmfo1 serve --model shapeworld --port 8000
    curl -s localhost:8000/v1/detect -F image=@scene.png -F categories="red circle"
    curl -s localhost:8000/v1/detect -H 'content-type: application/json' \\
         -d '{"image": "'$(base64 -w0 scene.png)'", "categories": ["red circle"]}'

Endpoints (schemas at /openapi.json, browsable at /docs):
    POST /v1/{detect,refer,count,caption,ocr,ask,detect-like,grounded-caption,reason,detect-everything}
    POST /v1/chat/completions        OpenAI chat body; one image as a data: URI part; `boxes` extension
    GET  /v1/models, /healthz

Errors are `{"error": {"message", "type", "detail"?}}` with status 422 (invalid request), 413 (image
or body too large), 404 (unknown model), 415 (body neither JSON nor multipart), 503 (queue full,
with Retry-After), 504 (no answer within the request timeout) or 500.

The server never opens a path or URL named in a request: images arrive as bytes only.
"""
from __future__ import annotations

import asyncio
import json
import time
import typing
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from pydantic.json_schema import models_json_schema
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

import vlmfo1
from vlmfo1.prompts import IMAGE_TAG
from vlmfo1.serving import schemas
from vlmfo1.serving.engine import InferenceEngine, RegionOptions
from vlmfo1.serving.limits import (
    InvalidRequest,
    PayloadTooLarge,
    QueueFull,
    RequestTimeout,
    ServingError,
    check_prompt,
    decode_base64_image,
    open_image,
)

JSON_TYPES = ("application/json",)
MULTIPART_TYPES = ("multipart/form-data",)


class ModelNotFound(ServingError):
    status_code = 404
    error_type = "model_not_found"


class UnsupportedMediaType(ServingError):
    status_code = 415
    error_type = "unsupported_media_type"


# -- request size ------------------------------------------------------------------------------
class BodyLimitMiddleware:
    """Refuses bodies over `max_bytes`: at once from Content-Length, or as they stream in (chunked)."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await _error_response(PayloadTooLarge(self._message(int(declared))))(scope, receive, send)
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise PayloadTooLarge(self._message(received, streamed=True))
            return message

        await self.app(scope, limited_receive, send)

    def _message(self, size: int, streamed: bool = False) -> str:
        return f"request body {'exceeds' if streamed else 'is'} {size} bytes; the limit is {self.max_bytes}"


def _error_response(error: ServingError, detail: list | None = None) -> JSONResponse:
    body: dict[str, Any] = {"message": error.message, "type": error.error_type}
    if detail is not None:
        body["detail"] = detail
    headers = {"Retry-After": "1"} if isinstance(error, QueueFull) else None
    return JSONResponse({"error": body}, status_code=error.status_code, headers=headers)


def _validation_message(errors: list[dict[str, Any]]) -> str:
    parts = []
    for error in errors:
        where = ".".join(str(part) for part in error.get("loc", ()) if part not in ("body",))
        parts.append(f"{where}: {error.get('msg')}" if where else str(error.get("msg")))
    return "; ".join(parts) or "invalid request"


def _invalid(errors: list[dict[str, Any]]) -> JSONResponse:
    detail = jsonable_encoder(errors, custom_encoder={Exception: str})
    # pydantic's "ctx" may hold the exception object; the message already says it.
    for item in detail:
        item.pop("ctx", None)
        item.pop("url", None)
    return _error_response(InvalidRequest(_validation_message(errors)), detail)


# -- request parsing ---------------------------------------------------------------------------
def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def _json_body(request: Request) -> Any:
    raw = await request.body()
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InvalidRequest(f"the body is not valid JSON: {error}") from error


def _validate(model: type[BaseModel], data: Any):
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise RequestValidationError(error.errors()) from error


async def _parse_task_body(request: Request, params_model: type[schemas._Params], json_model: type[BaseModel]):
    """(params, image bytes) of a JSON or multipart task request."""
    media = _media_type(request)
    if media in JSON_TYPES:
        body = await _json_body(request)
        params = _validate(json_model, body)
        return params, decode_base64_image(params.image, request.app.state.engine.limits)
    if media in MULTIPART_TYPES:
        form = await request.form(max_files=1, max_fields=32)
        upload = form.get("image")
        if upload is None:
            raise RequestValidationError([{"loc": ("body", "image"), "msg": "Field required", "type": "missing"}])
        if isinstance(upload, UploadFile):
            data = await upload.read()
        else:  # the image as base64 text in a form field
            data = decode_base64_image(upload, request.app.state.engine.limits)
        given: dict[str, list[str]] = {}
        for key, value in form.multi_items():
            if key == "image":
                continue
            if isinstance(value, UploadFile):
                raise InvalidRequest(f"form field {key!r} is a file; only 'image' may be a file")
            given.setdefault(key, []).append(value)
        # A field given several times is a list (-F categories=cat -F categories=dog).
        fields = {key: _form_value(params_model, key, values[0]) if len(values) == 1 else values for key, values in given.items()}
        return _validate(params_model, fields), data
    raise UnsupportedMediaType(f"send application/json (image in base64) or multipart/form-data (image file); got {media or 'no content-type'!r}")


def _form_value(model: type[BaseModel], key: str, value: str) -> Any:
    """Form fields are text. A field that takes lists, numbers or booleans gets its value JSON-decoded;
    a field that also takes plain text (categories) keeps a value that is not a JSON list as text."""
    field = model.model_fields.get(key)
    if field is None or field.annotation is str:
        return value
    if _accepts_text(field.annotation) and not value.lstrip().startswith("["):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value  # the model validation says what is wrong with it


def _accepts_text(annotation: Any) -> bool:
    if annotation is str:
        return True
    return any(_accepts_text(arg) for arg in typing.get_args(annotation))


def _region_options(params) -> RegionOptions | None:
    proposer, min_score = getattr(params, "proposer", None), getattr(params, "min_score", None)
    return RegionOptions(proposer, min_score) if proposer is not None or min_score is not None else None


async def _answer(engine: InferenceEngine, started: float, task: str, image_bytes: bytes | None,
                  args: dict[str, Any], regions: RegionOptions | None, max_new_tokens: int | None):
    """Decode, find regions, queue, wait: all of it within the request timeout (from arrival)."""

    async def work():
        image = await run_in_threadpool(open_image, image_bytes, engine.limits) if image_bytes is not None else None
        request, source = await run_in_threadpool(engine.prepare, task, image, args, regions)
        # Cancelling the awaited wrapper (timeout) cancels the queued future: the batcher then skips it.
        return await asyncio.wrap_future(engine.submit(request, source, max_new_tokens))

    remaining = engine.limits.request_timeout_s - (time.monotonic() - started)
    try:
        return await asyncio.wait_for(work(), timeout=max(remaining, 0.0))
    except asyncio.TimeoutError:
        raise RequestTimeout(f"no answer within the request timeout of {engine.limits.request_timeout_s:g} s") from None


# -- the app -----------------------------------------------------------------------------------
def create_app(engine: InferenceEngine) -> FastAPI:
    app = FastAPI(
        title="vlmfo1",
        version=vlmfo1.__version__,
        description="VLM-FO1 perception over HTTP: detection, referring, counting, region captions and OCR, "
        "questions and chat about image regions. Images are sent as bytes (base64 or upload).",
    )
    app.state.engine = engine
    app.add_middleware(BodyLimitMiddleware, max_bytes=engine.limits.max_body_bytes)

    @app.exception_handler(ServingError)
    async def _serving_error(request: Request, error: ServingError):
        return _error_response(error)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, error: RequestValidationError):
        return _invalid(list(error.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException):
        body = {"error": {"message": str(error.detail), "type": "http_error"}}
        return JSONResponse(body, status_code=error.status_code, headers=getattr(error, "headers", None))

    @app.get("/healthz", response_model=schemas.Health, tags=["service"])
    async def healthz():
        limits = engine.limits
        return {
            "status": "ok",
            "model": engine.model_name,
            "proposers": sorted(engine.proposers),
            "default_proposer": engine.default_proposer,
            "max_new_tokens": engine.max_new_tokens,
            "limits": {name: getattr(limits, name) for name in limits.__dataclass_fields__},
            "batching": engine.stats(),
        }

    @app.get("/v1/models", tags=["service"])
    async def models():
        return {"object": "list", "data": [{"id": engine.model_name, "object": "model", "owned_by": "vlmfo1"}]}

    request_models: list[type[BaseModel]] = [schemas.ChatCompletionRequest]
    for path, (task, params_model) in schemas.TASK_ENDPOINTS.items():
        json_model = schemas.with_image(params_model)
        request_models += [json_model, _upload_model(params_model)]
        app.add_api_route(
            path,
            _task_endpoint(task, params_model, json_model),
            methods=["POST"],
            response_model=schemas.TaskResponse,
            responses=_ERROR_RESPONSES,
            tags=["tasks"],
            summary=f"{task.replace('_', ' ')}",
            openapi_extra=_request_body(json_model.__name__, _upload_model(params_model).__name__),
        )

    @app.post(
        "/v1/chat/completions",
        response_model=schemas.ChatCompletionResponse,
        responses=_ERROR_RESPONSES,
        tags=["chat"],
        openapi_extra=_request_body(schemas.ChatCompletionRequest.__name__),
    )
    async def chat_completions(request: Request):
        started = time.monotonic()
        if _media_type(request) not in JSON_TYPES:
            raise UnsupportedMediaType("send the chat request as application/json")
        body = _validate(schemas.ChatCompletionRequest, await _json_body(request))
        if body.model is not None and body.model != engine.model_name:
            raise ModelNotFound(f"model {body.model!r} is not served here; this server serves {engine.model_name!r}")
        messages, image_data = _chat_messages(body, engine)
        max_new_tokens = body.max_completion_tokens or body.max_tokens
        args = {"messages": messages, "boxes": body.boxes, "scores": body.scores}
        regions = _region_options(body)
        result = await _answer(engine, started, "chat", image_data, args, regions, max_new_tokens)
        data = result.to_dict()
        ignored = [name for name in ("temperature", "top_p", "seed") if getattr(body, name) is not None]
        if ignored:
            data["warnings"].append(f"{', '.join(ignored)} ignored: decoding is greedy")
        cut = any("cut off at max_new_tokens" in warning for warning in result.warnings)
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": engine.model_name,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": "\n".join(result.raw_answers)},
                "finish_reason": "length" if cut else "stop",
            }],
            "vlmfo1": data,
        }

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            _, definitions = models_json_schema(
                [(model, "validation") for model in request_models], ref_template="#/components/schemas/{model}"
            )
            schema.setdefault("components", {}).setdefault("schemas", {}).update(definitions.get("$defs", {}))
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
    return app


_ERROR_RESPONSES = {
    code: {"model": schemas.ErrorResponse, "description": text}
    for code, text in {
        413: "image or body too large",
        415: "body neither JSON nor multipart",
        422: "invalid request (the message says which field and why)",
        503: "queue full; retry after the Retry-After header's seconds",
        504: "no answer within the request timeout",
    }.items()
}


def _request_body(json_name: str, multipart_name: str | None = None) -> dict[str, Any]:
    content = {"application/json": {"schema": {"$ref": f"#/components/schemas/{json_name}"}}}
    if multipart_name:
        content["multipart/form-data"] = {"schema": {"$ref": f"#/components/schemas/{multipart_name}"}}
    return {"requestBody": {"required": True, "content": content}}


_UPLOAD_MODELS: dict[type, type[BaseModel]] = {}


def _upload_model(params_model: type[BaseModel]) -> type[BaseModel]:
    """Schema of the multipart form (documentation only): the params plus an `image` file."""
    if params_model not in _UPLOAD_MODELS:
        from pydantic import Field, create_model

        _UPLOAD_MODELS[params_model] = create_model(
            params_model.__name__.removesuffix("Params") + "Upload",
            __base__=params_model,
            image=(bytes, Field(..., description="the image file", json_schema_extra={"format": "binary"})),
        )
    return _UPLOAD_MODELS[params_model]


def _task_endpoint(task: str, params_model: type[schemas._Params], json_model: type[BaseModel]):
    async def endpoint(request: Request):
        started = time.monotonic()
        engine: InferenceEngine = request.app.state.engine
        params, image_bytes = await _parse_task_body(request, params_model, json_model)
        for name in schemas.TEXT_FIELDS:
            value = getattr(params, name, None)
            if value is not None:
                check_prompt(value if isinstance(value, str) else ", ".join(value), engine.limits, name)
        result = await _answer(
            engine, started, task, image_bytes, params.task_args(), _region_options(params), params.max_new_tokens
        )
        return {
            "model": engine.model_name,
            "task": task,
            "result": result.to_dict(),
            "timing": {"total_ms": (time.monotonic() - started) * 1000.0},
        }

    endpoint.__name__ = f"{task}_endpoint"
    return endpoint


def _chat_messages(body: schemas.ChatCompletionRequest, engine: InferenceEngine) -> tuple[list[dict[str, str]], bytes | None]:
    """OpenAI messages -> the pipeline's `[{"role", "content": str}]`, and the image's bytes.

    One image at most; it must be in the first user message, where `<image>` marks its place
    (the model sees the image, then the regions, at that point of the turn).
    """
    limits = engine.limits
    if len(body.messages) > limits.max_messages:
        raise InvalidRequest(f"{len(body.messages)} messages; the limit is {limits.max_messages}")
    messages: list[dict[str, str]] = []
    image_data: bytes | None = None
    first_user = next((k for k, m in enumerate(body.messages) if m.role == "user"), None)
    if first_user is None:
        raise InvalidRequest("messages need at least one user message")
    for number, message in enumerate(body.messages):
        parts = [schemas.TextPart(type="text", text=message.content)] if isinstance(message.content, str) else message.content
        pieces = []
        for part in parts:
            if isinstance(part, schemas.TextPart):
                if IMAGE_TAG in part.text:
                    raise InvalidRequest(f"messages[{number}]: write no {IMAGE_TAG} in text; send the image as an image_url part")
                pieces.append(part.text)
                continue
            if image_data is not None:
                raise InvalidRequest("one image per request: the model answers about a single image")
            if number != first_user:
                raise InvalidRequest(f"messages[{number}]: the image must be in the first user message")
            image_data = decode_base64_image(part.image_url.url, limits, field=f"messages[{number}].image_url.url")
            pieces.append(IMAGE_TAG)
        messages.append({"role": message.role, "content": "".join(pieces)})
    check_prompt("".join(m["content"] for m in messages), limits, "messages")
    if body.boxes is not None and image_data is None:
        raise InvalidRequest("boxes need an image")
    return messages, image_data
