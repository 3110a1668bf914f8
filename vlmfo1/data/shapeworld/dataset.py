"""One scene with its records (`generate_example`), and whole datasets on disk (`write_dataset`).

Layout of a dataset folder (all paths in records and COCO are relative to it)::

    images/{split}/{index:06d}.jpg     the scenes
    {split}.coco.json                  COCO detection annotations (+ attributes)
    {split}.fo1.jsonl                  FO1 task records (region indexes)
    {split}.coords.jsonl               their coordinate twins (JSON pixel boxes)
    {split}.config.json                everything needed to make the same files again
    previews/{split}/{index:06d}.png   optional: scenes with their boxes drawn
"""
from __future__ import annotations

import io
import json
import multiprocessing
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from vlmfo1.data.records import FO1Record
from vlmfo1.data.shapeworld.coco import coco_annotations, coco_dataset, coco_image
from vlmfo1.data.shapeworld.config import IMAGE_FORMATS, ShapeWorldConfig
from vlmfo1.data.shapeworld.formats import to_coordinate_record, to_fo1_record
from vlmfo1.data.shapeworld.proposals import Proposals, build_proposals
from vlmfo1.data.shapeworld.sampling import Draws
from vlmfo1.data.shapeworld.scene import Scene, generate_scene, scene_seeds
from vlmfo1.data.shapeworld.tasks import TaskSample, make_task_samples

RECORD_STYLES = ("fo1", "coords")


@dataclass
class ShapeWorldExample:
    """A scene, its proposal list and its task samples, with both record renderings."""

    scene: Scene
    proposals: Proposals
    samples: list[TaskSample]

    def record_ids(self) -> list[str]:
        seen: Counter = Counter()
        ids = []
        for sample in self.samples:
            ids.append(f"{self.scene.split}-{self.scene.index:06d}-{sample.task}-{seen[sample.task]}")
            seen[sample.task] += 1
        return ids

    def fo1_records(self) -> list[FO1Record]:
        return [to_fo1_record(s, self.scene, self.proposals, rid) for s, rid in zip(self.samples, self.record_ids())]

    def coordinate_records(self) -> list[FO1Record]:
        return [to_coordinate_record(s, self.scene, self.proposals, rid) for s, rid in zip(self.samples, self.record_ids())]


def generate_example(config: ShapeWorldConfig | None = None, index: int = 0, seed: int = 0, split: str = "train") -> ShapeWorldExample:
    """Scene `index` of (`seed`, `split`) with the proposals and task samples the dataset writer gives it."""
    config = config or ShapeWorldConfig()
    scene = generate_scene(config, index, seed, split)
    proposals, samples = _tasks_of(scene, None, config)
    return ShapeWorldExample(scene, proposals, samples)


def make_task_records(
    scene: Scene,
    rng: np.random.Generator | Draws | None = None,
    config: ShapeWorldConfig | None = None,
    style: str = "fo1",
) -> list[FO1Record]:
    """The task records of a scene. Without `rng` they are the dataset's own records for this scene
    (drawn from the scene's task seed stream); `style` is "fo1" (region indexes) or "coords"."""
    if style not in RECORD_STYLES:
        raise ValueError(f"style must be one of {RECORD_STYLES}, got {style!r}")
    config = config or ShapeWorldConfig()
    proposals, samples = _tasks_of(scene, rng, config)
    example = ShapeWorldExample(scene, proposals, samples)
    return example.fo1_records() if style == "fo1" else example.coordinate_records()


def _tasks_of(scene: Scene, rng, config: ShapeWorldConfig) -> tuple[Proposals, list[TaskSample]]:
    if rng is None:
        rng = np.random.default_rng(scene_seeds(scene.seed, scene.split, scene.index)[1])
    draws = rng if isinstance(rng, Draws) else Draws(rng)
    proposals = build_proposals(scene, draws, config)
    return proposals, make_task_samples(scene, proposals, draws, config)


def encode_image(scene: Scene, image_format: str) -> bytes:
    """The stored bytes of a scene image; the same pixels give the same bytes."""
    buffer = io.BytesIO()
    if image_format == "png":
        scene.image.save(buffer, format="PNG", compress_level=1)
    elif image_format == "jpg":
        scene.image.save(buffer, format="JPEG", quality=90, subsampling=0)  # 4:4:4 keeps small shapes crisp
    else:
        raise ValueError(f"image_format must be one of {IMAGE_FORMATS}, got {image_format!r}")
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------
# Writing datasets
# ---------------------------------------------------------------------------------------------


@dataclass
class DatasetSummary:
    out_dir: str
    split: str
    images: int
    objects: int
    requested_objects: int  # objects asked for; the difference did not fit in crowded scenes
    records: dict[str, int] = field(default_factory=dict)  # per task
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "out_dir": self.out_dir, "split": self.split, "images": self.images, "objects": self.objects,
            "requested_objects": self.requested_objects, "records": dict(self.records),
            "seconds": round(self.seconds, 3), "images_per_second": round(self.images_per_second, 1),
        }


@dataclass
class _Written:
    """What one worker hands back for one scene (the image is already on disk)."""

    index: int
    coco_image: dict
    coco_annotations: list[dict]
    fo1_lines: list[str]
    coordinate_lines: list[str]
    tasks: list[str]
    objects: int
    requested: int


_WORKER: dict[str, Any] = {}


def _init_worker(config: ShapeWorldConfig, seed: int, split: str, out_dir: str, coordinates: bool, previews: int) -> None:
    _WORKER.update(config=config, seed=seed, split=split, out_dir=Path(out_dir), coordinates=coordinates, previews=previews)


def _write_one(index: int) -> _Written:
    config: ShapeWorldConfig = _WORKER["config"]
    out_dir: Path = _WORKER["out_dir"]
    example = generate_example(config, index, _WORKER["seed"], _WORKER["split"])
    scene = example.scene
    (out_dir / scene.file_name).write_bytes(encode_image(scene, config.image_format))
    if index < _WORKER["previews"]:
        from vlmfo1.data.shapeworld.visualize import side_by_side

        side_by_side(scene, example.proposals).save(out_dir / "previews" / scene.split / f"{index:06d}.png")
    fo1 = example.fo1_records()
    coordinates = example.coordinate_records() if _WORKER["coordinates"] else []
    return _Written(
        index=index,
        coco_image=coco_image(scene),
        coco_annotations=coco_annotations(scene),
        fo1_lines=[record.to_json() for record in fo1],
        coordinate_lines=[record.to_json() for record in coordinates],
        tasks=[record.task for record in fo1],
        objects=len(scene.objects),
        requested=scene.requested_objects,
    )


def write_dataset(
    out_dir: str | os.PathLike,
    n: int,
    seed: int = 0,
    split: str = "train",
    config: ShapeWorldConfig | None = None,
    *,
    workers: int = 1,
    coordinates: bool = True,
    previews: int = 0,
    progress: bool = False,
) -> DatasetSummary:
    """Writes `n` scenes of (`seed`, `split`) with their COCO file and record files.

    The files do not depend on `workers`: each scene is made from its own seed and results are
    written in index order. JSONL and COCO files are written under temporary names and renamed at
    the end, so an interrupted run leaves no truncated file that looks complete.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    if not split or any(c in split for c in "/\\") or split.startswith("."):
        raise ValueError(f"split must be a plain name (no path separators), got {split!r}")
    scene_seeds(seed, split, 0)  # validates the seed before any work starts
    config = config or ShapeWorldConfig()
    out = Path(out_dir)
    (out / "images" / split).mkdir(parents=True, exist_ok=True)
    if previews:
        (out / "previews" / split).mkdir(parents=True, exist_ok=True)
    paths = {name: out / f"{split}.{name}" for name in ("coco.json", "fo1.jsonl", "coords.jsonl", "config.json")}
    partial = {name: path.with_name(path.name + ".partial") for name, path in paths.items()}

    start = time.perf_counter()
    images, annotations = [], []
    tasks: Counter = Counter()
    objects = requested = 0
    worker_args = (config, seed, split, str(out), coordinates, previews)
    try:
        with open(partial["fo1.jsonl"], "w", encoding="utf-8") as fo1_file, \
             open(partial["coords.jsonl"], "w", encoding="utf-8") as coords_file:
            for written in _progress(_results(n, workers, worker_args), n, progress, split):
                images.append(written.coco_image)
                annotations.extend(written.coco_annotations)
                fo1_file.writelines(line + "\n" for line in written.fo1_lines)
                coords_file.writelines(line + "\n" for line in written.coordinate_lines)
                tasks.update(written.tasks)
                objects += written.objects
                requested += written.requested
        info = {
            "description": "ShapeWorld: procedural shapes with exact ground truth for VLM-FO1 tasks",
            "split": split, "seed": seed, "images": n, "config": config.to_dict(),
        }
        _write_json(partial["coco.json"], coco_dataset(images, annotations, info))
        _write_json(partial["config.json"], {"seed": seed, "split": split, "n": n, "coordinates": coordinates, "config": config.to_dict()})
        for name, path in paths.items():
            if name == "coords.jsonl" and not coordinates:
                partial[name].unlink()
                continue
            partial[name].replace(path)
    finally:
        for path in partial.values():
            path.unlink(missing_ok=True)
    return DatasetSummary(str(out), split, n, objects, requested, dict(sorted(tasks.items())), time.perf_counter() - start)


def _results(n: int, workers: int, worker_args: tuple) -> Iterator[_Written]:
    if workers == 1 or n < 2 * workers:
        _init_worker(*worker_args)
        yield from map(_write_one, range(n))
        return
    # "spawn" keeps workers clean of whatever threads the parent runs (torch, tokenizers).
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers, initializer=_init_worker, initargs=worker_args) as pool:
        yield from pool.imap(_write_one, range(n), chunksize=max(1, min(32, n // (8 * workers))))


def _progress(results: Iterator[_Written], n: int, enabled: bool, split: str) -> Iterator[_Written]:
    if not enabled:
        yield from results
        return
    from tqdm import tqdm

    with tqdm(total=n, desc=f"shapeworld {split}", unit="img") as bar:
        for item in results:
            yield item
            bar.update(1)


def _write_json(path: Path, data: Any) -> None:
    # json.dumps then one write: json.dump feeds the file many small chunks and is far slower.
    path.write_text(json.dumps(data, ensure_ascii=False, separators=(",", ":")), encoding="utf-8")
