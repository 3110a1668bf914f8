"""Request and response bodies of the HTTP API (pydantic; they make the OpenAPI schema).

Each task endpoint takes its `...Params` fields plus the image: as a JSON body with `image` in
base64 (or a `data:` URI), or as `multipart/form-data` with the image file in the `image` field
and the other fields as form fields (lists and numbers JSON-encoded, e.g. `boxes=[[1,2,30,40]]`).
Field names are the pipeline's argument names. Unknown fields are refused (422), so a misspelt
option is not silently ignored.
"""
from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    create_model,
    model_validator,
)


def _check_box(box: list[float]) -> list[float]:
    if not all(math.isfinite(v) for v in box):
        raise ValueError(f"box {box} has a value that is not a finite number")
    x1, y1, x2, y2 = box
    if x2 < x1 or y2 < y1:
        raise ValueError(f"box {box} is not [x1, y1, x2, y2] with x1 <= x2 and y1 <= y2")
    return box


Box = Annotated[
    list[float],
    Field(min_length=4, max_length=4, description="[x1, y1, x2, y2] in original-image pixels"),
    AfterValidator(_check_box),
]


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int | None = Field(None, ge=1, description="answer length cap; at most the server's --max-new-tokens")

    def task_args(self) -> dict[str, Any]:
        """The pipeline's keyword arguments for this task."""
        return self.model_dump(exclude={"image", "max_new_tokens", "proposer", "min_score"})


class _RegionParams(_Params):
    """Regions: the given `boxes` (region K is boxes[K]), else the proposer's (filtered by min_score)."""

    boxes: list[Box] | None = Field(None, description="regions to use instead of a proposer's; `<regionK>` names boxes[K]")
    scores: list[float] | None = Field(None, description="one score per box (optional), used as detection scores")
    proposer: str | None = Field(None, description="which of the server's proposers to run when no boxes are given")
    min_score: float | None = Field(None, description="drop proposals scoring below this before asking the model")

    @model_validator(mode="after")
    def _scores_match_boxes(self):
        if self.scores is not None:
            if self.boxes is None:
                raise ValueError("scores were given without boxes")
            if len(self.scores) != len(self.boxes):
                raise ValueError(f"{len(self.scores)} scores for {len(self.boxes)} boxes")
            if not all(math.isfinite(s) for s in self.scores):
                raise ValueError("scores must be finite numbers")
        return self


NonEmptyText = Annotated[str, Field(min_length=1)]


class DetectParams(_RegionParams):
    categories: NonEmptyText | Annotated[list[NonEmptyText], Field(min_length=1)] = Field(
        ..., description='"red circle, blue star" or ["red circle", "blue star"]'
    )
    per_category: bool = Field(False, description="one prompt per category instead of one for all")


class ReferParams(_RegionParams):
    expression: NonEmptyText = Field(..., description="a referring expression, e.g. 'the largest red circle'")


class CountParams(_RegionParams):
    category: NonEmptyText


class _GivenRegionParams(_Params):
    boxes: list[Box] = Field(..., min_length=1, description="the regions to answer about, one answer each")
    scores: list[float] | None = None

    @model_validator(mode="after")
    def _scores_match_boxes(self):
        if self.scores is not None and len(self.scores) != len(self.boxes):
            raise ValueError(f"{len(self.scores)} scores for {len(self.boxes)} boxes")
        return self


class CaptionParams(_GivenRegionParams):
    detailed: bool = Field(False, description="a detailed instead of a brief description")


class OcrParams(_GivenRegionParams):
    pass


class AskParams(_RegionParams):
    question: NonEmptyText = Field(..., description="free text; may name regions as <regionK>")


class DetectLikeParams(_RegionParams):
    reference_box: Box = Field(..., description="an example object; others of its category are found")


class GroundedCaptionParams(_RegionParams):
    pass


class ReasonParams(_RegionParams):
    question: NonEmptyText


class DetectEverythingParams(_RegionParams):
    pass


# path -> (serving task, params model)
TASK_ENDPOINTS: dict[str, tuple[str, type[_Params]]] = {
    "/v1/detect": ("detect", DetectParams),
    "/v1/refer": ("refer", ReferParams),
    "/v1/count": ("count", CountParams),
    "/v1/caption": ("caption", CaptionParams),
    "/v1/ocr": ("ocr", OcrParams),
    "/v1/ask": ("ask", AskParams),
    "/v1/detect-like": ("detect_like", DetectLikeParams),
    "/v1/grounded-caption": ("grounded_caption", GroundedCaptionParams),
    "/v1/reason": ("reason", ReasonParams),
    "/v1/detect-everything": ("detect_everything", DetectEverythingParams),
}


def with_image(params: type[_Params]) -> type[BaseModel]:
    """The JSON body of a task endpoint: its params plus `image` (base64 or data: URI)."""
    return create_model(
        params.__name__.removesuffix("Params") + "Request",
        __base__=params,
        __doc__=params.__doc__,
        image=(str, Field(..., description="the image, base64-encoded or as a data:image/...;base64, URI")),
    )


TEXT_FIELDS = ("categories", "expression", "category", "question")


# -- responses ---------------------------------------------------------------------------------
class Timing(BaseModel):
    total_ms: float = Field(..., description="from arrival to answer")


class TaskResponse(BaseModel):
    model: str
    task: str
    result: dict[str, Any] = Field(..., description="FO1Result.to_dict(): see vlmfo1.pipeline.results.RESULT_JSON_SCHEMA")
    timing: Timing


class ErrorBody(BaseModel):
    message: str
    type: str
    detail: list[dict[str, Any]] | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class Health(BaseModel):
    status: Literal["ok"]
    model: str
    proposers: list[str]
    default_proposer: str | None
    max_new_tokens: int
    limits: dict[str, Any]
    batching: dict[str, Any]


# -- OpenAI-style chat -------------------------------------------------------------------------
class ImageURL(BaseModel):
    url: str = Field(..., description="a data:image/...;base64, URI (remote URLs are not fetched)")
    detail: str | None = None


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ImagePart(BaseModel):
    type: Literal["image_url"]
    image_url: ImageURL


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: str | list[ContentPart]


class ChatCompletionRequest(BaseModel):
    """OpenAI's chat-completions body, plus the regions extension (`boxes`, `scores`, `proposer`, `min_score`).

    Decoding is greedy: `temperature`, `top_p` and `seed` are accepted for client compatibility and
    have no effect (the response's `vlmfo1.warnings` says so when they are set).
    """

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = None
    n: Literal[1] = Field(1, description="one answer per request")
    stream: Literal[False] = Field(False, description="streaming is not supported")
    user: str | None = None
    boxes: list[Box] | None = Field(None, description="regions of the image; `<regionK>` in the messages names boxes[K]")
    scores: list[float] | None = None
    proposer: str | None = None
    min_score: float | None = None

    @model_validator(mode="after")
    def _scores_match_boxes(self):
        if self.scores is not None and (self.boxes is None or len(self.scores) != len(self.boxes)):
            raise ValueError("scores need boxes, one score per box")
        return self


class ChatChoice(BaseModel):
    index: int
    message: dict[str, str]
    finish_reason: Literal["stop", "length"]


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    vlmfo1: dict[str, Any] = Field(..., description="the full FO1Result: regions named in the answer, with boxes")
