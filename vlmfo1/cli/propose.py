"""``vlmfo1 propose``: compute box proposals once, reuse them in evaluation and training.

``vlmfo1 propose IMAGE_OR_DIR --proposer selective-search --out proposals.jsonl`` writes one
upstream-format record per image: ``{"image", "bbox_list", "score_list"}`` (plus ``label_list``
when the proposer names its boxes). See docs/proposals.md.
"""
from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import List, Optional

import typer


def register(app: typer.Typer) -> None:
    app.command(name="propose")(propose_command)


def propose_command(
    source: Path = typer.Argument(..., help="An image, or a folder of images."),
    proposer: str = typer.Option("selective-search", "--proposer", "-p", help="NAME or NAME:ARG, e.g. contours, omdet:/weights, user:boxes.json."),
    out: Path = typer.Option(..., "--out", "-o", help="Output JSONL (one record per image)."),
    prompt: Optional[List[str]] = typer.Option(None, "--prompt", help="Text prompt for prompted detectors (repeatable)."),
    score_threshold: Optional[float] = typer.Option(None, "--score-threshold", help="Drop boxes scoring below this."),
    nms_iou: Optional[float] = typer.Option(None, "--nms-iou", help="NMS IoU (default: the proposer's, 0.8 for most)."),
    no_nms: bool = typer.Option(False, "--no-nms", help="Turn NMS off."),
    min_size: Optional[float] = typer.Option(None, "--min-size", help="Smallest box width/height in pixels."),
    top_k: Optional[int] = typer.Option(None, "--top-k", help="Boxes kept per image (default 100)."),
    device: Optional[str] = typer.Option(None, "--device", help="Device for model-based proposers (cpu, cuda, cuda:1)."),
    option: Optional[List[str]] = typer.Option(None, "--option", help="Extra proposer option KEY=JSON_VALUE, e.g. max_side=640 (repeatable)."),
    plugin: Optional[List[str]] = typer.Option(None, "--plugin", help="Module to import first (it registers custom proposers)."),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="Also take images from subfolders."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Write upstream-format proposals (image, bbox_list, score_list) for every image."""
    from tqdm import tqdm

    from vlmfo1.proposals import build_proposer, list_images

    for module in plugin or []:
        importlib.import_module(module)
    postprocess: dict = {}
    if score_threshold is not None:
        postprocess["score_threshold"] = score_threshold
    if nms_iou is not None and no_nms:
        raise typer.BadParameter("--nms-iou and --no-nms contradict each other")
    if nms_iou is not None or no_nms:
        postprocess["nms_iou"] = None if no_nms else nms_iou
    if min_size is not None:
        postprocess["min_size"] = min_size
    if top_k is not None:
        postprocess["top_k"] = top_k
    options = _parse_options(option or [])
    if prompt:
        options["prompts"] = list(prompt)
    if device is not None:
        options["device"] = device

    images = list_images(source, recursive=recursive)
    if not images:
        raise typer.BadParameter(f"no images found in {source}")
    built = build_proposer(proposer, postprocess=postprocess or None, **options)
    # Records name images relative to the folder given, so they join with a dataset root.
    root = source if source.is_dir() else None
    out.parent.mkdir(parents=True, exist_ok=True)
    total_boxes = 0
    with out.open("w", encoding="utf-8") as handle:
        for path in tqdm(images, desc=f"propose ({proposer})", unit="img", disable=not progress):
            name = path.relative_to(root).as_posix() if root is not None else str(path)
            try:
                proposals = built.propose(path, image_id=name)
            except Exception as error:
                raise RuntimeError(f"proposer {proposer!r} failed on {path}: {error}") from error
            handle.write(json.dumps(proposals.to_record(name)) + "\n")
            total_boxes += len(proposals)
    typer.echo(f"wrote {len(images)} records ({total_boxes} boxes) to {out}")


def _parse_options(pairs: list[str]) -> dict:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"--option must be KEY=VALUE, got {pair!r}")
        try:
            options[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip()] = value  # a bare string such as mode=quality
    return options
