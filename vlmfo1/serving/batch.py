"""Batch inference over many images on Ray Data: resumable, one model per worker.

    vlmfo1 batch images/ results.jsonl --task detect --text "red circle, blue star"
    vlmfo1 batch list.txt results.parquet --task count --text circle --address ray://head:10001 --gpus-per-worker 1

Inputs: a folder (its images, recursively; id = path relative to the folder), a text file list
(one image path per line, relative to the list's folder unless absolute; id = the line), or a
parquet file with a column `image` (encoded bytes, or a path) and optionally `id` (default: the
row number) and `boxes` (a list of [x1, y1, x2, y2] per row; regions instead of the proposer's).

Outputs, one row per input image: `{"id", "task", "result", "error"}`; `result` is
`FO1Result.to_dict()` (a JSON string in parquet), `error` says why an image had no result
(unreadable, ...). A `.jsonl` output is one file appended to; any other output (`.parquet`) is a
folder of part files, each written whole and then renamed into place.

Resuming: run the same command again. Ids already in the output are skipped; a JSONL line torn
by an interruption is cut off and that image done again. Only the driver writes, and it skips an
id it has already written, so the output holds every input id exactly once (no duplicates, no
gaps). `--retry-errors` first removes the rows that hold an error, so those images are redone.

Ray: without `--address` a local Ray is started in-process (`ray.init()`); with it, the job runs
on that cluster, where image paths must be readable by every worker (or use a parquet of bytes).
Each worker is an actor holding the model: one per GPU (`--gpus-per-worker 1`) or per CPU worker.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from vlmfo1.serving.engine import TASK_TEXT_ARGS, TASKS_NEEDING_BOXES, build_task_request

TEXT_LIST_SUFFIXES = (".txt", ".lst", ".list")


# -- inputs ------------------------------------------------------------------------------------
@dataclass
class BatchInputs:
    """What to run on: ids, and per id a path or encoded bytes (and optional boxes)."""

    ids: list[str]
    paths: list[str | None]
    data: list[bytes | None] | None = None  # encoded images, for parquet inputs holding bytes
    boxes: list[list[list[float]] | None] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def rows(self, keep: set[str] | None = None) -> list[dict[str, Any]]:
        """Rows for Ray (`id`, `path`, `data`, `boxes` as JSON text), only those in `keep` when given."""
        rows = []
        for k, item_id in enumerate(self.ids):
            if keep is not None and item_id not in keep:
                continue
            boxes = self.boxes[k] if self.boxes is not None else None
            rows.append({
                "id": item_id,
                "path": self.paths[k] or "",
                "data": (self.data[k] if self.data is not None else None) or b"",
                "boxes": "" if boxes is None else json.dumps(boxes),
            })
        return rows


def read_inputs(source: str | os.PathLike) -> BatchInputs:
    """A folder, a text list of paths, or a parquet of images (see the module docstring)."""
    from vlmfo1.proposals.io import list_images

    source = Path(source)
    if source.is_dir():
        images = list_images(source, recursive=True)
        if not images:
            raise ValueError(f"no images in {source} (looked for {', '.join(_image_suffixes())})")
        return BatchInputs([p.relative_to(source).as_posix() for p in images], [str(p) for p in images])
    if not source.is_file():
        raise FileNotFoundError(f"no such folder or file: {source}")
    if source.suffix.lower() == ".parquet":
        return _read_parquet_inputs(source)
    if source.suffix.lower() in TEXT_LIST_SUFFIXES:
        lines = [line.strip() for line in source.read_text(encoding="utf-8").splitlines()]
        lines = [line for line in lines if line and not line.startswith("#")]
        if not lines:
            raise ValueError(f"{source} lists no images")
        paths = [line if os.path.isabs(line) else str(source.parent / line) for line in lines]
        return BatchInputs(_unique(lines, source), paths)
    raise ValueError(f"{source}: give a folder, a list of paths ({', '.join(TEXT_LIST_SUFFIXES)}) or a .parquet file")


def _image_suffixes() -> Sequence[str]:
    from vlmfo1.proposals.io import IMAGE_EXTENSIONS

    return IMAGE_EXTENSIONS


def _read_parquet_inputs(path: Path) -> BatchInputs:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    if "image" not in table.column_names:
        raise ValueError(f"{path} has no 'image' column (columns: {table.column_names})")
    images = table.column("image").to_pylist()
    ids = [str(v) for v in table.column("id").to_pylist()] if "id" in table.column_names else [str(k) for k in range(len(images))]
    paths: list[str | None] = []
    data: list[bytes | None] = []
    for value in images:
        if isinstance(value, (bytes, bytearray)):
            paths.append(None)
            data.append(bytes(value))
        elif isinstance(value, str):
            paths.append(value if os.path.isabs(value) else str(path.parent / value))
            data.append(None)
        else:
            raise ValueError(f"{path}: column 'image' must hold bytes or paths, got {type(value).__name__}")
    boxes = table.column("boxes").to_pylist() if "boxes" in table.column_names else None
    return BatchInputs(_unique(ids, path), paths, data if any(d is not None for d in data) else None, boxes)


def _unique(ids: list[str], source: Path) -> list[str]:
    seen: set[str] = set()
    for item_id in ids:
        if item_id in seen:
            raise ValueError(f"{source}: id {item_id!r} appears more than once")
        seen.add(item_id)
    return ids


# -- outputs -----------------------------------------------------------------------------------
class JsonlResults:
    """One JSON object per line, appended and flushed as results arrive."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def done_ids(self) -> set[str]:
        """Ids already written; a last line torn by an interruption is cut off first."""
        if not self.path.exists():
            return set()
        self._cut_torn_tail()
        return {row["id"] for row in self.rows()}

    def rows(self) -> Iterator[dict[str, Any]]:
        if not self.path.exists():
            return
        with self.path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as error:
                        raise ValueError(f"{self.path}:{number} is not valid JSON ({error.msg}); not a vlmfo1 batch output?") from error

    def append(self, rows: Sequence[dict[str, Any]]) -> None:
        if not rows:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
            handle.flush()
            os.fsync(handle.fileno())

    def drop_errors(self) -> int:
        if not self.path.exists():
            return 0
        self._cut_torn_tail()
        kept = [row for row in self.rows() if row.get("error") is None]
        dropped = sum(1 for _ in self.rows()) - len(kept)
        if dropped:
            temporary = self.path.with_name(self.path.name + ".tmp")
            temporary.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in kept), encoding="utf-8")
            os.replace(temporary, self.path)
        return dropped

    def _cut_torn_tail(self) -> None:
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            # The interrupted write of the last line: drop it, that image is done again.
            with self.path.open("r+b") as handle:
                handle.truncate(data.rfind(b"\n") + 1)


class ParquetResults:
    """A folder of `part-NNNNNN.parquet` files; each is written to a temporary name, then renamed."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def _parts(self) -> list[Path]:
        return sorted(self.path.glob("part-*.parquet")) if self.path.is_dir() else []

    def done_ids(self) -> set[str]:
        import pyarrow.parquet as pq

        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"{self.path} exists and is not a folder of parquet parts")
        return {item_id for part in self._parts() for item_id in pq.read_table(part, columns=["id"]).column("id").to_pylist()}

    def rows(self) -> Iterator[dict[str, Any]]:
        import pyarrow.parquet as pq

        for part in self._parts():
            for row in pq.read_table(part).to_pylist():
                row["result"] = None if row["result"] is None else json.loads(row["result"])
                yield row

    def append(self, rows: Sequence[dict[str, Any]]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not rows:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        parts = self._parts()
        number = int(parts[-1].stem.split("-")[1]) + 1 if parts else 0
        table = pa.table({
            "id": [row["id"] for row in rows],
            "task": [row["task"] for row in rows],
            "result": [None if row["result"] is None else json.dumps(row["result"], ensure_ascii=False) for row in rows],
            "error": [row["error"] for row in rows],
        })
        temporary = self.path / f".part-{number:06d}.parquet.tmp"
        pq.write_table(table, temporary)
        os.replace(temporary, self.path / f"part-{number:06d}.parquet")

    def drop_errors(self) -> int:
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        dropped = 0
        for part in self._parts():
            table = pq.read_table(part)
            errors = table.column("error").is_valid()
            count = pc.sum(errors).as_py() or 0
            if count:
                dropped += count
                temporary = part.with_name("." + part.name + ".tmp")
                pq.write_table(table.filter(pc.invert(errors)), temporary)
                os.replace(temporary, part)
        return dropped


def open_results(path: str | os.PathLike) -> JsonlResults | ParquetResults:
    path = Path(path)
    if path.suffix.lower() == ".jsonl":
        return JsonlResults(path)
    if path.suffix.lower() == ".parquet":
        return ParquetResults(path)
    raise ValueError(f"{path}: the output must end in .jsonl or .parquet")


# -- the model on a worker ---------------------------------------------------------------------
@dataclass
class BatchJobConfig:
    """What each worker runs: the model, the task and its fixed arguments."""

    task: str
    text: str | None = None  # the task's text argument (categories, expression, category, question)
    model: str = "shapeworld"
    proposer: str | None = "selective-search"
    min_score: float | None = None
    detailed: bool = False  # caption: detailed instead of brief
    device: str = "cpu"
    dtype: str | None = None
    max_new_tokens: int = 256
    images_per_call: int = 8  # images one pipeline call answers together
    task_args: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from vlmfo1.pipeline.pipeline import TASKS

        if self.task not in TASKS or self.task == "chat":
            raise ValueError(f"unknown batch task {self.task!r}; choose from {', '.join(t for t in TASKS if t != 'chat')}")
        text_arg = TASK_TEXT_ARGS.get(self.task)
        if text_arg is not None and not (self.text or "").strip():
            raise ValueError(f"task {self.task!r} needs --text ({text_arg})")
        if text_arg is None and self.text:
            raise ValueError(f"task {self.task!r} takes no --text")
        if text_arg is not None:
            self.task_args = {**self.task_args, text_arg: self.text.strip()}
        if self.task == "caption" and self.detailed:
            self.task_args = {**self.task_args, "detailed": True}


class BatchPredictor:
    """A Ray Data actor: loads the model once, answers batches of rows (`id`, `path`, `data`, `boxes`)."""

    def __init__(self, config: BatchJobConfig):
        from vlmfo1.pipeline import FO1Pipeline
        from vlmfo1.proposals import build_proposer

        self.config = config
        self.proposer = build_proposer(config.proposer) if config.proposer else None
        self.pipeline = FO1Pipeline.from_pretrained(
            config.model, proposer=None, device=config.device, dtype=config.dtype,
            max_new_tokens=config.max_new_tokens, batch_size=config.images_per_call,
        )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
        outputs: list[tuple[Any, str | None]] = [(None, None)] * len(rows)
        prepared: list[tuple[int, Any, str | None]] = []  # (row, request, proposer that gave its regions)
        for k, row in enumerate(rows):
            try:
                prepared.append((k, *self._request(row)))
            except Exception as error:  # noqa: BLE001 - one bad image must not stop the others
                outputs[k] = (None, _describe(error))
        for start in range(0, len(prepared), self.config.images_per_call):
            chunk = prepared[start : start + self.config.images_per_call]
            for (k, _, source), result in zip(chunk, self._run([request for _, request, _ in chunk])):
                if isinstance(result, Exception):
                    outputs[k] = (None, _describe(result))
                    continue
                if source is not None:
                    result.proposals.source = source
                outputs[k] = (result.to_dict(), None)
        return {
            "id": [str(row["id"]) for row in rows],
            "task": [self.config.task] * len(rows),
            "result": [json.dumps(result) if result is not None else "" for result, _ in outputs],
            "error": [error or "" for _, error in outputs],
        }

    def _request(self, row: dict[str, Any]):
        from vlmfo1.processing.image_processing import load_image

        data, path = row.get("data"), row.get("path")
        image = load_image(bytes(data)) if data is not None and len(data) else load_image(str(path))
        args = dict(self.config.task_args)
        source = None
        if row.get("boxes"):
            args["boxes"] = json.loads(row["boxes"])
        elif self.config.task in TASKS_NEEDING_BOXES:
            raise ValueError(f"{self.config.task} needs boxes: give a parquet input with a 'boxes' column")
        elif self.proposer is None:
            raise ValueError("no boxes for this image and no proposer (--proposer)")
        else:
            proposals = self.proposer(image)
            boxes = np.asarray(proposals.boxes, dtype=np.float64).reshape(-1, 4)
            scores = np.asarray(proposals.scores, dtype=np.float64).reshape(-1)
            if self.config.min_score is not None:
                keep = scores >= self.config.min_score
                boxes, scores = boxes[keep], scores[keep]
            args["boxes"], args["scores"], source = boxes.tolist(), scores.tolist(), self.config.proposer
        return build_task_request(self.config.task, image, **args), source

    def _run(self, requests: list) -> list:
        """One result (or the exception) per request; a failing batch is retried one by one."""
        try:
            return self.pipeline.run(requests)
        except Exception as error:  # noqa: BLE001
            if len(requests) == 1:
                return [error]
        results: list = []
        for request in requests:
            try:
                results.append(self.pipeline.run([request])[0])
            except Exception as error:  # noqa: BLE001
                results.append(error)
        return results


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


# -- the driver --------------------------------------------------------------------------------
@dataclass
class BatchSummary:
    total: int  # input images
    already_done: int  # found in the output before this run
    written: int  # rows this run wrote
    errors: int  # of those, rows holding an error
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_batch_job(
    inputs: BatchInputs,
    output: str | os.PathLike,
    config: BatchJobConfig,
    *,
    address: str | None = None,
    num_workers: int = 1,
    cpus_per_worker: float = 1.0,
    gpus_per_worker: float = 0.0,
    rows_per_block: int | None = None,
    limit: int | None = None,
    retry_errors: bool = False,
    progress: bool = True,
) -> BatchSummary:
    """Runs `config` on the inputs not yet in `output`, appending their rows as they finish.

    `limit`: stop after that many new rows (a job can be done in slices). Ray is started locally
    unless already initialised or `address` names a cluster. `rows_per_block`: images per Ray block
    (default 4 model calls' worth); rows are written a block at a time, so an interruption loses
    at most the blocks in flight.
    """
    import ray
    from tqdm.auto import tqdm

    started = time.monotonic()
    if num_workers < 1:
        raise ValueError(f"num_workers must be at least 1, got {num_workers}")
    results = open_results(output)
    if retry_errors:
        results.drop_errors()
    done = results.done_ids()
    todo = [item_id for item_id in inputs.ids if item_id not in done]
    if limit is not None:
        todo = todo[: max(limit, 0)]
    summary = BatchSummary(len(inputs), len(done & set(inputs.ids)), 0, 0, 0.0)
    if todo:
        _init_ray(ray, address, num_workers, cpus_per_worker)
        rows_per_block = rows_per_block or 4 * config.images_per_call
        dataset = ray.data.from_items(inputs.rows(set(todo)), override_num_blocks=max(1, -(-len(todo) // rows_per_block)))
        dataset = dataset.map_batches(
            BatchPredictor,
            fn_constructor_kwargs={"config": config},
            batch_size=config.images_per_call,
            compute=ray.data.ActorPoolStrategy(size=num_workers),
            num_cpus=cpus_per_worker,
            num_gpus=gpus_per_worker,
        )
        written: set[str] = set()
        bar = tqdm(total=len(inputs), initial=summary.already_done, unit="image", disable=not progress, desc=config.task)
        try:
            for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
                rows = _output_rows(batch, written)
                results.append(rows)
                summary.written += len(rows)
                summary.errors += sum(1 for row in rows if row["error"] is not None)
                bar.update(len(rows))
        finally:
            bar.close()
    summary.seconds = time.monotonic() - started
    return summary


def _output_rows(batch: dict[str, np.ndarray], written: set[str]) -> list[dict[str, Any]]:
    rows = []
    for item_id, task, result, error in zip(batch["id"], batch["task"], batch["result"], batch["error"]):
        item_id = str(item_id)
        if item_id in written:  # a re-executed block (a worker restarted): the id is already written
            continue
        written.add(item_id)
        rows.append({"id": item_id, "task": str(task), "result": json.loads(result) if result else None, "error": str(error) or None})
    return rows


def _init_ray(ray, address: str | None, num_workers: int, cpus_per_worker: float) -> None:
    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        # A local, in-process Ray with just enough CPUs for the workers (and none of its web UI).
        ray.init(num_cpus=max(1, int(np.ceil(num_workers * cpus_per_worker))), include_dashboard=False, log_to_driver=False)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the job's own bar counts written images
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # per-dataset INFO lines would bury that bar

