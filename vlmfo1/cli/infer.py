"""`vlmfo1 detect | count | refer | caption | ocr | ask | demo`: run the pipeline on images.

IMAGE is an image file or a folder of images (processed in batches, with a progress bar). Each
image gets `OUT/<name>.json` (`FO1Result.to_dict()`) and `OUT/<name>.png` (the annotated picture).
torch and transformers are imported inside the commands, so `vlmfo1 --help` stays fast.
"""
from __future__ import annotations

import json
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import typer

DEFAULT_OUT = Path("vlmfo1-out")

_MODEL = typer.Option("shapeworld", "--model", "-m", help="Model folder, or 'shapeworld' (the bundled demo model).")
_PROPOSER = typer.Option(
    "selective-search", "--proposer", "-p",
    help="Proposer spec (selective-search, contours, omdet:PATH, ...; see docs/proposals.md) or 'none'.",
)
_BOXES = typer.Option(
    None, "--boxes", "-b",
    help="Your own boxes instead of the proposer's: a JSON list of [x1,y1,x2,y2], {image: boxes}, proposal JSONL or COCO JSON.",
)
_OUT = typer.Option(DEFAULT_OUT, "--out", "-o", help="Folder for the annotated PNG and JSON of each image.")
_DEVICE = typer.Option("cpu", "--device", help="cpu, cuda, cuda:1, ... or auto.")
_DTYPE = typer.Option("auto", "--dtype", help="auto (the checkpoint's), float32, bfloat16 or float16.")
_SCORE = typer.Option("proposal", "--score", help="Detection score: proposal, llm or combined.")
_BATCH = typer.Option(4, "--batch-size", min=1, help="Images (and questions) per forward pass.")
_MAX_NEW = typer.Option(256, "--max-new-tokens", min=1, help="Longest answer, in tokens.")
_SHOW_PROPOSALS = typer.Option(False, "--show-proposals", help="Draw every proposal faintly under the results.")


@dataclass
class RunSettings:
    model: str
    proposer: str
    boxes: Optional[Path]
    out: Path
    device: str
    dtype: str
    score: str
    batch_size: int
    max_new_tokens: int
    show_proposals: bool


def register(app: typer.Typer) -> None:
    app.command("detect")(detect_command)
    app.command("count")(count_command)
    app.command("refer")(refer_command)
    app.command("caption")(caption_command)
    app.command("ocr")(ocr_command)
    app.command("ask")(ask_command)
    app.command("demo")(demo_command)


# -- commands --------------------------------------------------------------------------------
def detect_command(
    image: Path = typer.Argument(..., help="An image file or a folder of images."),
    categories: str = typer.Argument(..., help='Categories, comma-separated: "red circle, blue star".'),
    per_category: bool = typer.Option(False, "--per-category", help="One question per category (the image is encoded once)."),
    model: str = _MODEL, proposer: str = _PROPOSER, boxes: Optional[Path] = _BOXES, out: Path = _OUT,
    device: str = _DEVICE, dtype: str = _DTYPE, score: str = _SCORE, batch_size: int = _BATCH,
    max_new_tokens: int = _MAX_NEW, show_proposals: bool = _SHOW_PROPOSALS,
) -> None:
    """Detect objects of the given categories."""
    settings = RunSettings(model, proposer, boxes, out, device, dtype, score, batch_size, max_new_tokens, show_proposals)
    _run_images("detect", image, {"categories": categories, "per_category": per_category}, settings)


def count_command(
    image: Path = typer.Argument(..., help="An image file or a folder of images."),
    category: str = typer.Argument(..., help='What to count, e.g. "red circles".'),
    model: str = _MODEL, proposer: str = _PROPOSER, boxes: Optional[Path] = _BOXES, out: Path = _OUT,
    device: str = _DEVICE, dtype: str = _DTYPE, score: str = _SCORE, batch_size: int = _BATCH,
    max_new_tokens: int = _MAX_NEW, show_proposals: bool = _SHOW_PROPOSALS,
) -> None:
    """Count the objects of a category (and locate them)."""
    settings = RunSettings(model, proposer, boxes, out, device, dtype, score, batch_size, max_new_tokens, show_proposals)
    _run_images("count", image, {"category": category}, settings)


def refer_command(
    image: Path = typer.Argument(..., help="An image file or a folder of images."),
    expression: str = typer.Argument(..., help='A referring expression, e.g. "the largest red circle".'),
    model: str = _MODEL, proposer: str = _PROPOSER, boxes: Optional[Path] = _BOXES, out: Path = _OUT,
    device: str = _DEVICE, dtype: str = _DTYPE, score: str = _SCORE, batch_size: int = _BATCH,
    max_new_tokens: int = _MAX_NEW, show_proposals: bool = _SHOW_PROPOSALS,
) -> None:
    """Find the object(s) a referring expression describes."""
    settings = RunSettings(model, proposer, boxes, out, device, dtype, score, batch_size, max_new_tokens, show_proposals)
    _run_images("refer", image, {"expression": expression}, settings)


def caption_command(
    image: Path = typer.Argument(..., help="An image file or a folder of images."),
    detailed: bool = typer.Option(False, "--detailed", help="Detailed instead of brief descriptions."),
    model: str = _MODEL, proposer: str = _PROPOSER, boxes: Optional[Path] = _BOXES, out: Path = _OUT,
    device: str = _DEVICE, dtype: str = _DTYPE, score: str = _SCORE, batch_size: int = _BATCH,
    max_new_tokens: int = _MAX_NEW, show_proposals: bool = _SHOW_PROPOSALS,
) -> None:
    """Describe each box (--boxes), or each proposal when no boxes are given."""
    settings = RunSettings(model, proposer, boxes, out, device, dtype, score, batch_size, max_new_tokens, show_proposals)
    _run_images("caption", image, {"detailed": detailed}, settings)


def ocr_command(
    image: Path = typer.Argument(..., help="An image file or a folder of images."),
    model: str = _MODEL, proposer: str = _PROPOSER, boxes: Optional[Path] = _BOXES, out: Path = _OUT,
    device: str = _DEVICE, dtype: str = _DTYPE, score: str = _SCORE, batch_size: int = _BATCH,
    max_new_tokens: int = _MAX_NEW, show_proposals: bool = _SHOW_PROPOSALS,
) -> None:
    """Read the text in each box (--boxes), or in each proposal when no boxes are given."""
    settings = RunSettings(model, proposer, boxes, out, device, dtype, score, batch_size, max_new_tokens, show_proposals)
    _run_images("ocr", image, {}, settings)


def ask_command(
    image: Path = typer.Argument(..., help="An image file or a folder of images."),
    question: str = typer.Argument(..., help="A question; it may name regions as <regionK>."),
    model: str = _MODEL, proposer: str = _PROPOSER, boxes: Optional[Path] = _BOXES, out: Path = _OUT,
    device: str = _DEVICE, dtype: str = _DTYPE, score: str = _SCORE, batch_size: int = _BATCH,
    max_new_tokens: int = _MAX_NEW, show_proposals: bool = _SHOW_PROPOSALS,
) -> None:
    """Ask a free question about the image and its regions."""
    settings = RunSettings(model, proposer, boxes, out, device, dtype, score, batch_size, max_new_tokens, show_proposals)
    _run_images("ask", image, {"question": question}, settings)


def demo_command(
    out: Path = typer.Option(Path("vlmfo1-demo"), "--out", "-o", help="Folder for the scene, pictures and JSON."),
    seed: int = typer.Option(0, "--seed", help="ShapeWorld seed of the scene."),
    index: int = typer.Option(0, "--index", help="ShapeWorld scene index."),
    model: str = _MODEL,
    proposer: str = typer.Option(
        "scene", "--proposer", "-p",
        help="'scene': the scene's own proposal list (ShapeWorld's stand-in for a detector, the kind of "
             "list the model was trained on); or any proposer spec, as for detect.",
    ),
    device: str = _DEVICE, dtype: str = _DTYPE,
    score: str = _SCORE, max_new_tokens: int = _MAX_NEW,
    show_proposals: bool = _SHOW_PROPOSALS,
) -> None:
    """Generate a new ShapeWorld scene and run several tasks on it; writes the pictures. The scene is
    of the model's own world when its recipe.json names one (the bundled model's does), else of the
    harder `heldout` preset."""
    from vlmfo1.data.shapeworld import generate_example
    from vlmfo1.data.shapeworld.vocab import COLOURS, SHAPES, plural
    from vlmfo1.pipeline import TaskRequest

    example = generate_example(_model_world(model), index=index, seed=seed, split="demo")
    scene = example.scene
    out.mkdir(parents=True, exist_ok=True)
    scene_path = out / "scene.png"
    scene.image.save(scene_path)
    # The scene's proposals are written in the --boxes format, so any command can be rerun on them.
    boxes_path = out / "scene.boxes.json"
    boxes_path.write_text(json.dumps({"bbox_list": example.proposals.boxes, "score_list": example.proposals.scores}) + "\n")
    from_scene = proposer.lower() == "scene"
    settings = RunSettings(model, "none" if from_scene else proposer, None, out, device, dtype, score, 4,
                           max_new_tokens, show_proposals)
    pipeline = _build_pipeline(settings)
    regions = {"boxes": example.proposals.boxes, "scores": example.proposals.scores} if from_scene else {}

    labels = Counter(obj.label for obj in scene.objects)
    present = [label for label, _ in labels.most_common(2)]
    # One label the scene does not hold: the answer should say so ("None").
    absent = next(f"{c} {s}" for s in SHAPES for c in COLOURS if f"{c} {s}" not in labels)
    most = scene.objects[0] if not labels else next(o for o in scene.objects if o.label == labels.most_common(1)[0][0])
    most_colour, most_shape = most.colour, most.category
    requests = {
        "detect": TaskRequest("detect", scene.image, {"categories": present + [absent], **regions}),
        "count": TaskRequest("count", scene.image, {"category": f"{most_colour} {plural(most_shape)}", **regions}),
        "grounded_caption": TaskRequest("grounded_caption", scene.image, regions),
        "detect_everything": TaskRequest("detect_everything", scene.image, regions),
    }
    results = dict(zip(requests, pipeline.run(list(requests.values()))))
    # Captions for the regions detection found (or the first proposals when it found none).
    found = [r.box for r in results["detect"].detections][:4] or results["detect"].proposals.boxes[:4]
    if found:
        results["caption"] = pipeline.caption(scene.image, boxes=found)
    for name, result in results.items():
        _write_outputs(scene.image, result, out / name, settings.show_proposals)
    _print_summary([(name, result) for name, result in results.items()], out)
    source = f"its {len(example.proposals)} proposals in {boxes_path.name}" if from_scene else f"proposer {proposer}"
    typer.echo(f"scene: {scene_path} ({len(scene.objects)} objects; asked for {present + [absent]}; {source})")


def _model_world(model: str):
    """ShapeWorld as the model was trained on it (its recipe.json), else the `heldout` preset."""
    from vlmfo1.data.shapeworld import ShapeWorldConfig
    from vlmfo1.pipeline.pipeline import resolve_model_path
    from vlmfo1.training.recipes import recipe_world

    return recipe_world(resolve_model_path(model)) or ShapeWorldConfig.heldout()


# -- shared ----------------------------------------------------------------------------------
def _build_pipeline(settings: RunSettings):
    from vlmfo1.pipeline import FO1Pipeline

    # With --boxes, each request carries its image's boxes (see `_user_boxes`): no proposer runs.
    proposer: Any = None if settings.proposer.lower() == "none" or settings.boxes is not None else settings.proposer
    try:
        return FO1Pipeline.from_pretrained(
            settings.model,
            proposer=proposer,
            device=settings.device,
            dtype=settings.dtype,
            score=settings.score,
            batch_size=settings.batch_size,
            max_new_tokens=settings.max_new_tokens,
        )
    except (FileNotFoundError, ValueError, KeyError, ImportError) as error:
        _fail(str(error))


def _run_images(task: str, image: Path, args: dict[str, Any], settings: RunSettings) -> None:
    from rich.progress import Progress

    from vlmfo1.pipeline import TaskRequest
    from vlmfo1.processing.image_processing import load_image
    from vlmfo1.proposals import list_images

    if not image.exists():
        _fail(f"image not found: {image}")
    paths = list_images(image)
    if not paths:
        _fail(f"no images in {image}")
    user_boxes = _user_boxes(settings.boxes)
    pipeline = _build_pipeline(settings)
    settings.out.mkdir(parents=True, exist_ok=True)
    names = _output_names(paths)
    done: list[tuple[str, Any]] = []
    failed: list[tuple[Path, str]] = []
    with Progress(transient=True, disable=len(paths) == 1) as progress:
        bar = progress.add_task(f"{task}", total=len(paths))
        for start in range(0, len(paths), settings.batch_size):
            ready, requests = [], []
            for path in paths[start : start + settings.batch_size]:
                try:
                    requests.append(TaskRequest(task, str(path), {**args, **user_boxes(path)}))
                    ready.append(path)
                except (KeyError, ValueError) as error:
                    failed.append((path, f"{type(error).__name__}: {error}"))
                    progress.advance(bar)
            for path, outcome in zip(ready, _run_batch(pipeline, requests) if requests else []):
                if isinstance(outcome, Exception):
                    failed.append((path, f"{type(outcome).__name__}: {outcome}"))
                else:
                    _write_outputs(load_image(path), outcome, settings.out / names[path], settings.show_proposals)
                    done.append((path.name, outcome))
                progress.advance(bar)
    _print_summary(done, settings.out)
    for path, message in failed:
        typer.echo(f"error: {path}: {message}", err=True)
    if failed:
        raise typer.Exit(code=1)


def _user_boxes(boxes_file: Optional[Path]):
    """image path -> {"boxes", "scores"} from --boxes (nothing without it).

    The file is read by the `user` proposer's loader (every format it knows), but its boxes go to
    the pipeline as they are: in the file's order, so that `<regionK>` in a question is the file's
    K-th box, and all of them (more than 100 are chunked, never cut to a top-k).
    """
    if boxes_file is None:
        return lambda path: {}
    from vlmfo1.proposals.user_boxes import UserBoxesProposer

    if not boxes_file.is_file():
        _fail(f"boxes file not found: {boxes_file}")
    try:
        source = UserBoxesProposer(boxes_file)
    except (ValueError, KeyError) as error:
        _fail(f"{boxes_file}: {error}")

    def lookup(path: Path) -> dict[str, Any]:
        found = source.lookup(str(path))
        if found is None:
            raise KeyError(f"{boxes_file} holds no boxes for {path.name}")
        return {"boxes": found.boxes.tolist(), "scores": found.scores.tolist()}

    return lookup


def _run_batch(pipeline, requests) -> list:
    """Results of a batch; when the batch fails, each request alone, so one bad image costs only itself."""
    try:
        return pipeline.run(requests)
    except (ValueError, FileNotFoundError, KeyError, OSError) as error:
        if len(requests) == 1:
            return [error]
    outcomes = []
    for request in requests:
        try:
            outcomes.append(pipeline.run([request])[0])
        except (ValueError, FileNotFoundError, KeyError, OSError) as error:
            outcomes.append(error)
    return outcomes


def _output_names(paths: list[Path]) -> dict[Path, str]:
    """The file stem, or the whole file name where two images share a stem (a.jpg and a.png)."""
    stems = Counter(path.stem for path in paths)
    return {path: path.stem if stems[path.stem] == 1 else path.name for path in paths}


def _write_outputs(image, result, base: Path, show_proposals: bool) -> None:
    from vlmfo1.pipeline.visualize import draw_result

    base.with_name(base.name + ".json").write_text(result.to_json() + "\n", encoding="utf-8")
    draw_result(image, result, show_proposals=show_proposals).save(base.with_name(base.name + ".png"))


def _print_summary(done: list[tuple[str, Any]], out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"results in {out}")
    for column in ("image", "task", "found", "answer"):
        table.add_column(column, overflow="fold")
    for name, result in done:
        found = ", ".join(f"{label} x{len(regions)}" for label, regions in result.by_label().items())
        if result.count is not None:
            found = f"count {result.count}" + (f" ({found})" if found else "")
        if result.region_answers:
            found = f"{len(result.region_answers)} regions"
        answer = " | ".join(line for line in result.answer.splitlines() if line.strip())
        table.add_row(name, result.task, found or "-", answer[:120] + ("…" if len(answer) > 120 else ""))
    Console(file=sys.stdout, width=max(100, Console().width)).print(table)


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


__all__ = ["register"]
