"""``vlmfo1 data``: make training and evaluation data.

``vlmfo1 data shapeworld --out DIR --n 5000 --seed 0 --split train`` writes ShapeWorld scenes, their
COCO annotations, FO1 task records and coordinate twins (docs/shapeworld.md).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import typer

data_app = typer.Typer(help="Make datasets (ShapeWorld: procedural scenes with exact ground truth).", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")


def _names(text: Optional[str]) -> Optional[tuple[str, ...]]:
    if text is None:
        return None
    return tuple(name.strip() for name in text.split(",") if name.strip())


@data_app.command("shapeworld")
def shapeworld_command(
    out: Path = typer.Option(..., "--out", help="Dataset folder (created if missing)."),
    n: int = typer.Option(5000, "--n", help="Number of images."),
    seed: int = typer.Option(0, "--seed", help="Dataset seed; scene i of (seed, split) is always the same."),
    split: str = typer.Option("train", "--split", help="Split name; also part of every scene's seed."),
    preset: Optional[str] = typer.Option(None, "--preset", help="train or heldout (default: the split's name if it is one, else train)."),
    image_size: Optional[int] = typer.Option(None, "--image-size", help="Square image side in pixels."),
    min_objects: Optional[int] = typer.Option(None, "--min-objects", help="Fewest objects per image (>= 1)."),
    max_objects: Optional[int] = typer.Option(None, "--max-objects", help="Most objects per image (<= 60)."),
    categories: Optional[str] = typer.Option(None, "--categories", help="Comma-separated shape subset, e.g. circle,square,star."),
    colours: Optional[str] = typer.Option(None, "--colours", help="Comma-separated colour subset."),
    clutter: Optional[float] = typer.Option(None, "--clutter", help="Background clutter, 0..1."),
    occlusion: Optional[float] = typer.Option(None, "--occlusion", help="Largest share of a shape's box later shapes may cover, 0..1."),
    noise: Optional[int] = typer.Option(None, "--noise", help="Pixel noise amplitude, 0..64."),
    words: Optional[bool] = typer.Option(None, "--words/--no-words", help="Draw words on shapes (region OCR)."),
    rejection_share: Optional[float] = typer.Option(None, "--rejection-share", help="Share of detection records asking for absent labels."),
    tasks: Optional[str] = typer.Option(None, "--tasks", help="Comma-separated tasks to make (one record per scene each); default all."),
    image_format: Optional[str] = typer.Option(None, "--format", help="jpg (fast) or png (lossless)."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Processes (default: all cores). Output does not depend on it."),
    coords: bool = typer.Option(True, "--coords/--no-coords", help="Also write the coordinate-answer twin of every record."),
    previews: int = typer.Option(0, "--previews", help="Also draw the first N scenes with their boxes into previews/."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Write N ShapeWorld scenes with COCO annotations, FO1 task records and coordinate twins."""
    from vlmfo1.data.shapeworld import COUNTED_TASKS, ShapeWorldConfig, write_dataset

    overrides: dict = {}
    if image_size is not None:
        overrides["image_size"] = (image_size, image_size)
    for name, value in (("categories", _names(categories)), ("colours", _names(colours)), ("clutter", clutter),
                        ("occlusion", occlusion), ("noise", noise), ("words", words),
                        ("rejection_share", rejection_share), ("image_format", image_format)):
        if value is not None:
            overrides[name] = value
    if tasks is not None:
        chosen = _names(tasks)
        if "rejection" in chosen:
            typer.echo("error: rejection records come from detection slots; choose detection and set --rejection-share", err=True)
            raise typer.Exit(code=2)
        overrides["task_counts"] = {task: 1 for task in chosen}
    try:
        preset_name = preset or (split if split in ("train", "heldout") else "train")
        base = ShapeWorldConfig.preset(preset_name)
        if min_objects is not None or max_objects is not None:
            low = min_objects if min_objects is not None else base.objects_per_image[0]
            high = max_objects if max_objects is not None else base.objects_per_image[1]
            # The bound not given follows the one given, so "--max-objects 3" alone just works.
            if min_objects is None:
                low = min(low, high)
            if max_objects is None:
                high = max(low, high)
            overrides["objects_per_image"] = (low, high)
        if "task_counts" in overrides:
            unknown = sorted(set(overrides["task_counts"]) - set(COUNTED_TASKS))
            if unknown:
                raise ValueError(f"unknown task(s) {unknown}; tasks are {', '.join(COUNTED_TASKS)}")
        config = ShapeWorldConfig.preset(preset_name, **overrides)
        summary = write_dataset(
            out, n, seed=seed, split=split, config=config, workers=workers or os.cpu_count() or 1,
            coordinates=coords, previews=previews, progress=progress,
        )
    except ValueError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=2) from error
    typer.echo(json.dumps(summary.to_dict(), indent=2))
    missing = summary.requested_objects - summary.objects
    if missing:
        typer.echo(
            f"note: {missing} of {summary.requested_objects} requested objects did not fit in their scenes "
            "(crowded scenes keep what fits; lower --max-objects or the size range to avoid this)",
            err=True,
        )
