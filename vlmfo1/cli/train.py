"""Training commands (docs/training.md).

    vlmfo1 train --config stage1.yaml                      # a full config (copy a preset and edit it)
    vlmfo1 train --stage 2 --init-from runs/stage1 --config my_data.yaml
    vlmfo1 train-convert coco instances_train2017.json --out data/coco_train.fo1.jsonl
    vlmfo1 init-tiny runs/tiny --size tiny --tokenizer shapeworld
    vlmfo1 train-demo --out runs/demo                       # the bundled ShapeWorld demo model's recipe (its card: ~96 min of training on 2 cores)
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console


def train_command(
    config: Optional[List[Path]] = typer.Option(
        None, "--config", "-c", help="Training config YAML (see vlmfo1/configs/); repeat to merge several in order."
    ),
    stage: Optional[str] = typer.Option(
        None, "--stage", help="Start from a packaged preset: 0, 1, 2 or 2_lora; --config then adds to it."
    ),
    init_from: Optional[Path] = typer.Option(None, "--init-from", help="FO1 model folder to start from (model.init_from)."),
    output_dir: Optional[Path] = typer.Option(None, "--output-dir", "-o", help="Where checkpoints and the model go."),
    resume: bool = typer.Option(
        True, "--resume/--no-resume", help="Continue from the newest checkpoint in the output folder, if any."
    ),
    resume_from: Optional[Path] = typer.Option(None, "--resume-from", help="Continue from this checkpoint folder."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Stop after this many optimizer steps."),
    option: Optional[List[str]] = typer.Option(
        None, "--set", help="Override one setting, e.g. --set training.learning_rate=2e-5 (repeatable)."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved config and exit."),
) -> None:
    """Train one stage of the FO1 recipe on your own records (stage 1: alignment, stage 2: tuning)."""
    import yaml

    from vlmfo1.training.trainer import resolve_config, train

    if not config and stage is None:
        raise typer.BadParameter("give --config FILE, --stage N, or both", param_hint="--config")
    overrides = list(option or [])
    if output_dir is not None:
        overrides.append(f"training.output_dir={output_dir}")
    if max_steps is not None:
        overrides.append(f"training.max_steps={max_steps}")
    try:
        resolved = resolve_config(list(config or []), stage, overrides)
        if init_from is not None:
            # --init-from replaces whatever model source the preset or config named.
            resolved["model"] = {k: v for k, v in resolved.get("model", {}).items() if k not in ("base_vlm", "tiny")}
            resolved["model"]["init_from"] = str(init_from.resolve())
    except (ValueError, FileNotFoundError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=2) from error
    if dry_run:
        typer.echo(yaml.safe_dump({k: v for k, v in resolved.items() if not k.startswith("_")}, sort_keys=False))
        return
    result = train(resolved, resume=str(resume_from) if resume_from else ("auto" if resume else None))
    if int(os.environ.get("RANK", "0")) != 0:
        return  # one summary line per run, from the main process
    console = Console()
    last = f"{result.losses[-1][1]:.4f}" if result.losses else "n/a"
    console.print(f"[green]trained[/green] {result.global_step} steps, last logged loss {last}; model in {result.output_dir}")


def init_tiny_command(
    out: Path = typer.Argument(..., help="Folder to write the model, processor and tokenizer to."),
    size: str = typer.Option("tiny", "--size", help="tiny, small, demo or mid (vlmfo1.modeling.factory.SIZES)."),
    tokenizer: str = typer.Option(
        "shapeworld", "--tokenizer", help="shapeworld (small, trained now), qwen (the real 151k-token files) or a folder."
    ),
    seed: int = typer.Option(0, "--seed", help="Initialisation seed."),
    aux_image_size: int = typer.Option(256, "--aux-image-size", help="Side of the auxiliary DaViT input."),
    max_pixels: int = typer.Option(224 * 224, "--max-pixels", help="Largest primary image area (pixels)."),
) -> None:
    """Build a small random FO1 (tests, demos, experiments); it loads with from_pretrained."""
    from vlmfo1.training.tiny import count_parameters, init_tiny

    model, processor = init_tiny(out, size=size, tokenizer=tokenizer, seed=seed, aux_image_size=aux_image_size,
                                 max_pixels=max_pixels)
    Console().print(
        f"[green]wrote[/green] {out}: {count_parameters(model):,} parameters, {len(processor.tokenizer)} tokens"
    )


def train_demo_command(
    out: Path = typer.Option(..., "--out", help="Folder for data, stages, the final model (model/) and scores."),
    recipe_name: str = typer.Option("words-to-pixels", "--recipe",
                                     help="words-to-pixels (the bundled model's), language-first or plain."),
    quick: bool = typer.Option(False, "--quick", help="A few steps of everything (checks the pipeline only)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch CPU threads (default: torch's choice)."),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Keep finished stages; continue an interrupted one."),
) -> None:
    """Reproduce the bundled ShapeWorld demo model: language stages, stage 0 (base VLM), alignment,
    stage 2, held-out scores (docs/training.md)."""
    import time

    from vlmfo1.training.recipes import RECIPES, DemoRecipe, run_demo_recipe

    if recipe_name not in RECIPES:
        raise typer.BadParameter(f"unknown recipe {recipe_name!r}; choose from {sorted(RECIPES)}", param_hint="--recipe")
    recipe = DemoRecipe.quick(threads=threads) if quick else RECIPES[recipe_name](threads=threads)

    def log(message: str) -> None:
        typer.echo(f"{time.strftime('%H:%M:%S')} {message}")

    report = run_demo_recipe(out, recipe, log=log, resume=resume)
    typer.echo(json.dumps({"metrics": {k: report["metrics"].get(k) for k in ("detection_map", "counting")},
                           "wall_seconds": report["wall_seconds"]}, indent=2))


def train_convert_command(
    format: str = typer.Argument(..., help="coco, refcoco, referring, region-captions or llava."),
    source: Path = typer.Argument(..., help="The annotation file (refcoco: the refer-toolkit folder)."),
    out: Path = typer.Option(..., "--out", help="FO1 JSONL records to write."),
    split: str = typer.Option("train", "--split", help="refcoco: the split to convert."),
    rejection_share: float = typer.Option(0.2, "--rejection-share", help="coco: share of rejection records."),
    seed: int = typer.Option(0, "--seed", help="coco: seed of the query and rejection draws."),
    image_prefix: str = typer.Option("", "--image-prefix", help="coco: prefix for every image file name."),
) -> None:
    """Convert annotations to FO1 training records with ground-truth regions (docs/training.md)."""
    from vlmfo1.data.records import write_records
    from vlmfo1.training.converters import CONVERTERS

    if format not in CONVERTERS:
        raise typer.BadParameter(f"unknown format {format!r}; choose from {sorted(CONVERTERS)}", param_hint="FORMAT")
    options = {
        "coco": {"rejection_share": rejection_share, "seed": seed, "image_prefix": image_prefix},
        "refcoco": {"split": split},
    }.get(format, {})
    try:
        conversion = CONVERTERS[format](source, **options)
    except (ValueError, FileNotFoundError, KeyError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=2) from error
    out.parent.mkdir(parents=True, exist_ok=True)
    write_records(out, conversion.records)
    typer.echo(json.dumps({"out": str(out), **conversion.summary()}, indent=2))


def register(app: typer.Typer) -> None:
    app.command(name="train")(train_command)
    app.command(name="init-tiny")(init_tiny_command)
    app.command(name="train-demo")(train_demo_command)
    app.command(name="train-convert")(train_convert_command)
