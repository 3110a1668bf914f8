"""Micro-batching: requests that arrive close together are answered by one model call.

One worker thread owns the model. `submit` puts a request in a bounded queue and returns a
`concurrent.futures.Future`; a full queue refuses at once (`QueueFull`), so an overloaded server
answers 503 quickly instead of piling up work it cannot finish in time.

The worker takes the oldest request and waits at most `max_wait_s` after that request's arrival
for others, up to `max_batch_size`. Under load the queue already holds a backlog, so batches fill
without waiting; when idle, a lone request pays at most the window. Requests whose future was
cancelled before the batch started (their client timed out) are dropped, not computed.
A request is never answered twice and never lost: each future gets exactly one result or exception.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable, Generic, Hashable, Sequence, TypeVar

from vlmfo1.serving.limits import QueueFull

logger = logging.getLogger(__name__)

Item = TypeVar("Item")
Output = TypeVar("Output")

_STOP = object()


@dataclass
class _Waiting(Generic[Item]):
    item: Item
    future: Future
    arrived: float  # time.monotonic()


@dataclass
class BatcherStats:
    submitted: int = 0
    rejected: int = 0  # refused because the queue was full
    cancelled: int = 0  # dropped before their batch ran (client gave up)
    completed: int = 0
    failed: int = 0
    batches: int = 0
    batch_sizes: Counter = field(default_factory=Counter)  # size -> number of batches

    def as_dict(self) -> dict:
        answered = sum(size * n for size, n in self.batch_sizes.items())
        return {
            "submitted": self.submitted,
            "rejected": self.rejected,
            "cancelled": self.cancelled,
            "completed": self.completed,
            "failed": self.failed,
            "batches": self.batches,
            "mean_batch_size": answered / self.batches if self.batches else 0.0,
            "batch_sizes": {str(size): n for size, n in sorted(self.batch_sizes.items())},
        }


class MicroBatcher(Generic[Item, Output]):
    def __init__(
        self,
        run_batch: Callable[[list[Item]], Sequence[Output | BaseException]],
        max_batch_size: int = 8,
        max_wait_s: float = 0.01,
        max_queue: int = 64,
        group_key: Callable[[Item], Hashable] | None = None,
        name: str = "vlmfo1-batcher",
    ):
        """`run_batch` answers a list of items with one output (or exception) per item, in order.
        `group_key`: items with different keys never share a `run_batch` call (e.g. different
        generation lengths)."""
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        if max_queue < 1:
            raise ValueError(f"max_queue must be at least 1, got {max_queue}")
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must be >= 0, got {max_wait_s}")
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.group_key = group_key
        self.stats = BatcherStats()
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self._lock = threading.Lock()
        self._closed = False
        self._worker = threading.Thread(target=self._loop, name=name, daemon=True)
        self._worker.start()

    # -- client side -------------------------------------------------------------------------
    def submit(self, item: Item) -> Future:
        if self._closed:
            raise RuntimeError("the batcher is closed")
        future: Future = Future()
        try:
            self._queue.put_nowait(_Waiting(item, future, time.monotonic()))
        except queue.Full:
            with self._lock:
                self.stats.rejected += 1
            raise QueueFull(f"the server is busy: {self.max_queue} requests are already waiting; retry later") from None
        with self._lock:
            self.stats.submitted += 1
        return future

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    def close(self, timeout: float | None = 10.0) -> None:
        """Stops after the requests already queued are answered."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._worker.join(timeout)

    # -- worker ------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            batch, stop = self._collect(first)
            self._answer(batch)
            if stop:
                return

    def _collect(self, first: _Waiting) -> tuple[list[_Waiting], bool]:
        batch = [first]
        deadline = first.arrived + self.max_wait_s
        while len(batch) < self.max_batch_size:
            remaining = deadline - time.monotonic()
            try:
                waiting = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if waiting is _STOP:
                return batch, True
            batch.append(waiting)
        return batch, False

    def _answer(self, batch: list[_Waiting]) -> None:
        live = [w for w in batch if w.future.set_running_or_notify_cancel()]
        with self._lock:
            self.stats.cancelled += len(batch) - len(live)
        groups: dict[Hashable, list[_Waiting]] = {}
        for waiting in live:
            key = self.group_key(waiting.item) if self.group_key else None
            groups.setdefault(key, []).append(waiting)
        for members in groups.values():
            try:
                outputs = list(self.run_batch([w.item for w in members]))
                if len(outputs) != len(members):
                    raise RuntimeError(f"run_batch returned {len(outputs)} outputs for {len(members)} items")
            except BaseException as error:  # noqa: BLE001 - every waiting client must hear about it
                logger.exception("batch of %d failed", len(members))
                outputs = [error] * len(members)
            with self._lock:
                self.stats.batches += 1
                self.stats.batch_sizes[len(members)] += 1
            for waiting, output in zip(members, outputs):
                if isinstance(output, BaseException):
                    waiting.future.set_exception(output)
                    failed = 1
                else:
                    waiting.future.set_result(output)
                    failed = 0
                with self._lock:
                    self.stats.failed += failed
                    self.stats.completed += 1 - failed
