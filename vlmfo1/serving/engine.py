"""The served model: one `FO1Pipeline`, its proposers, and the micro-batcher in front of it.

The HTTP API and the Gradio app both answer through an `InferenceEngine`, so requests from either
are batched together and meet the same limits. A request is a pipeline `TaskRequest` on a decoded
image; the engine fills in the regions (the request's boxes, or a proposer's, filtered by a
minimum score) in the caller's thread, then queues the request for the one worker thread that
runs the model.

Tasks are the pipeline's (`vlmfo1.pipeline.pipeline.TASKS`), with the pipeline's argument names.
"""
from __future__ import annotations

import logging
import os
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from PIL import Image

from vlmfo1.serving.batcher import MicroBatcher
from vlmfo1.serving.limits import (
    InvalidRequest,
    RequestTimeout,
    ServingError,
    ServingLimits,
    check_regions,
)

logger = logging.getLogger(__name__)

# The task argument a task's one free-text input fills (UI text box, `vlmfo1 batch --text`).
TASK_TEXT_ARGS: dict[str, str] = {
    "detect": "categories",
    "refer": "expression",
    "count": "category",
    "ask": "question",
    "reason": "question",
}
# Tasks about given regions: a proposer's boxes would ask one question per proposal (up to 100 model
# calls for one request), so the server wants the boxes.
TASKS_NEEDING_BOXES = ("caption", "ocr")


@dataclass
class RegionOptions:
    """Where a request's regions come from when it gives no boxes."""

    proposer: str | None = None  # one of the engine's proposers; None: the engine's default
    min_score: float | None = None  # proposals scoring below are dropped before the model sees them


@dataclass
class _Job:
    request: Any  # vlmfo1.pipeline.TaskRequest
    max_new_tokens: int
    source: str | None  # proposer that gave the regions; None for the request's own boxes


def build_task_request(task: str, image: Image.Image | None, **args: Any):
    """A pipeline `TaskRequest`; an unknown task is an invalid request (the pipeline checks the arguments)."""
    from vlmfo1.pipeline.pipeline import TASKS, TaskRequest

    if task not in TASKS:
        raise InvalidRequest(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
    return TaskRequest(task, image, args)


class InferenceEngine:
    def __init__(
        self,
        pipeline,
        *,
        model_name: str,
        limits: ServingLimits | None = None,
        proposers: Mapping[str, Callable[[Image.Image], Any]] | None = None,
        default_proposer: str | None = None,
    ):
        """`pipeline`: an `FO1Pipeline` (built without a proposer: the engine supplies regions).
        `proposers`: name -> callable image -> proposals (`.boxes`, `.scores`), the only ones a
        request may name; `default_proposer` is used when a request names none."""
        self.pipeline = pipeline
        self.model_name = model_name
        self.limits = limits or ServingLimits()
        self.proposers = dict(proposers or {})
        if default_proposer is not None and default_proposer not in self.proposers:
            raise ValueError(f"default proposer {default_proposer!r} is not among {sorted(self.proposers)}")
        self.default_proposer = default_proposer
        self.max_new_tokens = pipeline.generator.max_new_tokens
        self.batcher: MicroBatcher[_Job, Any] = MicroBatcher(
            self._run_batch,
            max_batch_size=self.limits.max_batch_size,
            max_wait_s=self.limits.batch_window_ms / 1000.0,
            max_queue=self.limits.max_queue,
            group_key=lambda job: job.max_new_tokens,
        )

    @classmethod
    def from_pretrained(
        cls,
        model: str | os.PathLike = "shapeworld",
        *,
        proposers: Sequence[str] = ("selective-search",),
        device: str = "cpu",
        dtype: str | None = None,
        max_new_tokens: int = 256,
        limits: ServingLimits | None = None,
    ) -> InferenceEngine:
        """Loads a model folder or a bundled model by name ("shapeworld"); the first proposer is the default."""
        from vlmfo1.pipeline import FO1Pipeline
        from vlmfo1.proposals import build_proposer

        limits = limits or ServingLimits()
        built = {name: build_proposer(name) for name in proposers}
        pipeline = FO1Pipeline.from_pretrained(
            model, proposer=None, device=device, dtype=dtype, max_new_tokens=max_new_tokens, batch_size=limits.max_batch_size
        )
        return cls(
            pipeline,
            model_name=os.path.basename(os.path.normpath(str(model))),
            limits=limits,
            proposers=built,
            default_proposer=next(iter(built), None),
        )

    # -- regions -----------------------------------------------------------------------------
    def propose(self, image: Image.Image, options: RegionOptions) -> tuple[list[list[float]], list[float], str]:
        """A proposer's boxes and scores for the image, those below `min_score` dropped."""
        name = options.proposer or self.default_proposer
        if name is None:
            raise InvalidRequest("this server has no proposer: pass boxes=[[x1, y1, x2, y2], ...]")
        if name not in self.proposers:
            raise InvalidRequest(f"unknown proposer {name!r}; this server offers {sorted(self.proposers)}")
        output = self.proposers[name](image)
        boxes = np.asarray(output.boxes, dtype=np.float64).reshape(-1, 4)
        raw_scores = getattr(output, "scores", None)
        scores = np.ones(len(boxes)) if raw_scores is None else np.asarray(raw_scores, dtype=np.float64).reshape(-1)
        if options.min_score is not None:
            keep = scores >= options.min_score
            boxes, scores = boxes[keep], scores[keep]
        return boxes.tolist(), scores.tolist(), name

    def prepare(self, task: str, image: Image.Image | None, args: dict[str, Any], regions: RegionOptions | None = None):
        """The pipeline request of a serving task, with its regions filled in; and their source.

        Runs the proposer when the request has no boxes, so call it from a worker thread.
        """
        args = dict(args)
        boxes = args.get("boxes")
        check_regions(boxes, self.limits)
        if args.get("scores") is not None and boxes is None:
            raise InvalidRequest("scores were given without boxes")
        source = None
        if boxes is not None:
            if regions is not None and (regions.proposer is not None or regions.min_score is not None):
                raise InvalidRequest("proposer and min_score choose proposals; they cannot be combined with boxes")
        elif task in TASKS_NEEDING_BOXES:
            raise InvalidRequest(f"{task} needs boxes: the regions to describe")
        elif image is not None:
            args["boxes"], args["scores"], source = self.propose(image, regions or RegionOptions())
        return build_task_request(task, image, **args), source

    # -- answering ---------------------------------------------------------------------------
    def submit(self, request, source: str | None = None, max_new_tokens: int | None = None) -> Future:
        """Queues a prepared request; the future gives its `FO1Result` (or raises a ServingError)."""
        if max_new_tokens is None:
            max_new_tokens = self.max_new_tokens
        if not 1 <= max_new_tokens <= self.max_new_tokens:
            raise InvalidRequest(f"max_new_tokens must be between 1 and this server's {self.max_new_tokens}, got {max_new_tokens}")
        return self.batcher.submit(_Job(request, max_new_tokens, source))

    def answer(self, task: str, image: Image.Image | None, args: dict[str, Any], regions: RegionOptions | None = None,
               max_new_tokens: int | None = None, timeout: float | None = None):
        """Blocking: prepare, queue and wait (at most `timeout`, default the limits' request timeout)."""
        started = time.monotonic()
        timeout = self.limits.request_timeout_s if timeout is None else timeout
        request, source = self.prepare(task, image, args, regions)
        future = self.submit(request, source, max_new_tokens)
        try:
            return future.result(timeout=max(0.0, timeout - (time.monotonic() - started)))
        except FutureTimeout:
            future.cancel()
            raise RequestTimeout(f"no answer within {timeout:g} s") from None

    def stats(self) -> dict[str, Any]:
        return {"queue_depth": self.batcher.queue_depth, **self.batcher.stats.as_dict()}

    def close(self) -> None:
        self.batcher.close()

    # -- worker thread -----------------------------------------------------------------------
    def _run_batch(self, jobs: list[_Job]) -> list[Any]:
        # The batcher groups jobs by max_new_tokens, and only this thread runs the model.
        self.pipeline.generator.max_new_tokens = jobs[0].max_new_tokens
        try:
            results: list[Any] = self.pipeline.run([job.request for job in jobs])
        except Exception as error:  # noqa: BLE001 - find which request failed, answer the others
            if len(jobs) == 1:
                results = [_as_serving_error(error)]
            else:
                results = [self._run_one(job) for job in jobs]
        for job, result in zip(jobs, results):
            if job.source is not None and not isinstance(result, BaseException):
                result.proposals.source = job.source
        return results

    def _run_one(self, job: _Job) -> Any:
        try:
            return self.pipeline.run([job.request])[0]
        except Exception as error:  # noqa: BLE001
            return _as_serving_error(error)


def _as_serving_error(error: Exception) -> Exception:
    """Pipeline ValueErrors are about the request (too many regions for a free-text task, ...)."""
    if isinstance(error, ServingError):
        return error
    if isinstance(error, ValueError):
        return InvalidRequest(str(error))
    logger.error("request failed", exc_info=error)
    return error
