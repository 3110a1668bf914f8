"""`vlmfo1 ui` (Gradio demo), `vlmfo1 serve` (HTTP API) and `vlmfo1 batch` (Ray Data batch inference).

See docs/serving.md.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

MODEL_HELP = 'model folder, or a bundled model\'s name ("shapeworld")'


def _limits(**overrides):
    from vlmfo1.serving.limits import ServingLimits

    return ServingLimits(**{name: value for name, value in overrides.items() if value is not None})


def _engine(model: str, proposers: List[str], device: str, dtype: Optional[str], max_new_tokens: int, limits):
    from vlmfo1.serving.engine import InferenceEngine

    try:
        return InferenceEngine.from_pretrained(
            model, proposers=tuple(proposers), device=device, dtype=dtype, max_new_tokens=max_new_tokens, limits=limits
        )
    except FileNotFoundError as error:
        raise typer.BadParameter(str(error), param_hint="--model") from None
    except (ImportError, KeyError, ValueError) as error:  # a proposer's missing extra, an unknown proposer
        raise typer.BadParameter(str(error).strip("'\"")) from None


def ui(
    model: str = typer.Option("shapeworld", help=MODEL_HELP),
    proposer: List[str] = typer.Option(["selective-search"], help="proposer(s) offered; the first is the default (repeat the option)"),
    host: str = typer.Option("127.0.0.1", help="address to listen on (0.0.0.0: every interface)"),
    port: int = typer.Option(7860),
    device: str = typer.Option("cpu", help="cpu, cuda, cuda:1, ..."),
    dtype: Optional[str] = typer.Option(None, help="float32, bfloat16 or float16 (default: the checkpoint's)"),
    max_new_tokens: int = typer.Option(256, help="longest answer"),
    max_image_bytes: Optional[int] = typer.Option(None, help="largest upload in bytes"),
) -> None:
    """Gradio demo: draw regions or use a proposer, pick a task, see the annotated answer."""
    from vlmfo1.serving.app import launch

    engine = _engine(model, proposer, device, dtype, max_new_tokens, _limits(max_image_bytes=max_image_bytes))
    Console().print(f"[green]vlmfo1 ui[/green] serving {engine.model_name} on http://{host}:{port}")
    launch(engine, host=host, port=port, block=True)


def serve(
    model: str = typer.Option("shapeworld", help=MODEL_HELP),
    proposer: List[str] = typer.Option(["selective-search"], help="proposer(s) a request may name; the first is the default"),
    host: str = typer.Option("127.0.0.1", help="address to listen on (0.0.0.0: every interface)"),
    port: int = typer.Option(8000),
    device: str = typer.Option("cpu", help="cpu, cuda, cuda:1, ..."),
    dtype: Optional[str] = typer.Option(None, help="float32, bfloat16 or float16 (default: the checkpoint's)"),
    max_new_tokens: int = typer.Option(256, help="longest answer; requests may ask for less"),
    max_batch_size: Optional[int] = typer.Option(None, help="requests answered together (micro-batch size; 1 turns batching off)"),
    batch_window_ms: Optional[float] = typer.Option(None, help="how long a request waits for others to batch with"),
    max_queue: Optional[int] = typer.Option(None, help="requests waiting for the model before new ones get 503"),
    timeout: Optional[float] = typer.Option(None, "--timeout", help="seconds from arrival to answer before a 504"),
    max_image_bytes: Optional[int] = typer.Option(None),
    max_image_pixels: Optional[int] = typer.Option(None),
    max_regions: Optional[int] = typer.Option(None, help="boxes per request"),
    max_prompt_chars: Optional[int] = typer.Option(None),
    log_level: str = typer.Option("info"),
) -> None:
    """HTTP API (FastAPI + uvicorn): /v1/<task>, /v1/chat/completions, /healthz, /openapi.json."""
    import uvicorn

    from vlmfo1.serving.api import create_app

    limits = _limits(
        max_batch_size=max_batch_size, batch_window_ms=batch_window_ms, max_queue=max_queue, request_timeout_s=timeout,
        max_image_bytes=max_image_bytes, max_image_pixels=max_image_pixels, max_regions=max_regions,
        max_prompt_chars=max_prompt_chars,
    )
    engine = _engine(model, proposer, device, dtype, max_new_tokens, limits)
    try:
        uvicorn.run(create_app(engine), host=host, port=port, log_level=log_level)
    finally:
        engine.close()


def batch(
    source: Path = typer.Argument(..., help="a folder of images, a .txt list of image paths, or a .parquet with an 'image' column"),
    output: Path = typer.Argument(..., help="results: a .jsonl file or a .parquet folder (resumed if it exists)"),
    task: str = typer.Option(..., help="detect, refer, count, caption, ocr, ask, detect_like, grounded_caption, reason, detect_everything"),
    text: Optional[str] = typer.Option(None, help="categories (detect), expression (refer), category (count) or question (ask, reason)"),
    model: str = typer.Option("shapeworld", help=MODEL_HELP),
    proposer: Optional[str] = typer.Option("selective-search", help="proposer for images without boxes ('' for none)"),
    min_score: Optional[float] = typer.Option(None, help="drop proposals scoring below this"),
    detailed: bool = typer.Option(False, help="caption: detailed instead of brief"),
    address: Optional[str] = typer.Option(None, help="Ray cluster address (e.g. ray://head:10001 or auto); default: a local Ray"),
    num_workers: int = typer.Option(1, help="model replicas (Ray actors)"),
    cpus_per_worker: float = typer.Option(1.0),
    gpus_per_worker: float = typer.Option(0.0, help="1: one worker per GPU (use with --device cuda)"),
    device: str = typer.Option("cpu"),
    dtype: Optional[str] = typer.Option(None),
    max_new_tokens: int = typer.Option(256),
    images_per_call: int = typer.Option(8, help="images one model call answers together"),
    limit: Optional[int] = typer.Option(None, help="stop after this many new images (the rest on a later run)"),
    retry_errors: bool = typer.Option(False, help="redo images whose earlier row holds an error"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Run a task over many images with Ray Data; re-running resumes where the output stops."""
    from vlmfo1.pipeline.pipeline import resolve_model_path
    from vlmfo1.serving.batch import BatchJobConfig, read_inputs, run_batch_job

    try:
        resolve_model_path(model)
        config = BatchJobConfig(
            task=task, text=text, model=model, proposer=proposer or None, min_score=min_score, detailed=detailed,
            device=device, dtype=dtype, max_new_tokens=max_new_tokens, images_per_call=images_per_call,
        )
        inputs = read_inputs(source)
    except (FileNotFoundError, ValueError) as error:
        raise typer.BadParameter(str(error)) from None
    summary = run_batch_job(
        inputs, output, config, address=address, num_workers=num_workers, cpus_per_worker=cpus_per_worker,
        gpus_per_worker=gpus_per_worker, limit=limit, retry_errors=retry_errors, progress=progress,
    )
    typer.echo(json.dumps(summary.as_dict()))


def register(app: typer.Typer) -> None:
    app.command(name="ui")(ui)
    app.command(name="serve")(serve)
    app.command(name="batch")(batch)
