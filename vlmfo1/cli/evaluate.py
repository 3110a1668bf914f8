"""``vlmfo1 eval``: run a model on a benchmark, or score predictions, with the benchmarks' standard
protocols (docs/evaluation.md).

``vlmfo1 eval TASK --data FILE --model M`` (one command per task: ``vlmfo1 eval shapeworld ...``)
answers every item with the model and scores the answers (`vlmfo1.evaluation.runner`);
``vlmfo1 eval score TASK --gt FILE --pred FILE`` needs no model: it scores any system's output
(COCO results JSON for detection, JSON lines for the other tasks).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from vlmfo1.evaluation.tasks import ALIASES, TASKS, get_task

eval_app = typer.Typer(help="Evaluate on standard benchmarks (COCO, RefCOCO, HumanRef, CountBench, ...).", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(eval_app, name="eval")


def _run_command(task_name: str, command: str | None = None):
    """The `vlmfo1 eval TASK` command of one task (`command`: the name it is called by, e.g. an alias)."""
    command = command or task_name

    def run_command(
        data: Path = typer.Option(..., "--data", help="The benchmark's annotation file or folder (as `eval score --gt` takes it)."),
        model: str = typer.Option("shapeworld", "--model", "-m", help="Model folder, or 'shapeworld' (the bundled demo model)."),
        proposer: str = typer.Option(
            "selective-search", "--proposer", "-p",
            help="Proposer spec for items without proposals of their own (selective-search, contours, user:FILE, ...) or 'none'.",
        ),
        proposals: Optional[Path] = typer.Option(None, "--proposals", help="Upstream's precomputed proposal JSONL (bbox_list/score_list per image id)."),
        images: Optional[Path] = typer.Option(None, "--images", help="Folder the annotation file's image names are relative to."),
        split: Optional[str] = typer.Option(None, "--split", help="Split (RefCOCO: val/testA/...; ShapeWorld: val; COCO-Text: val)."),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help=f"Output folder (default: vlmfo1-eval/{command})."),
        limit: Optional[int] = typer.Option(None, "--limit", min=0, help="Only the first N items (a quick run)."),
        batch_size: int = typer.Option(8, "--batch-size", min=1, help="Items per forward pass."),
        max_new_tokens: int = typer.Option(256, "--max-new-tokens", min=1, help="Longest answer, in tokens."),
        score: str = typer.Option("proposal", "--score", help="Region score: proposal, llm or combined."),
        device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:1, ... or auto."),
        dtype: str = typer.Option("auto", "--dtype", help="auto (the checkpoint's), float32, bfloat16 or float16."),
        resume: bool = typer.Option(True, "--resume/--no-resume", help="Skip items already in the output's predictions file."),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    ) -> None:
        from vlmfo1.evaluation.runner import run_evaluation

        out_dir = out if out is not None else Path("vlmfo1-eval") / command
        try:
            report = run_evaluation(
                task_name, data, model, out_dir=out_dir,
                proposer=None if proposer.lower() == "none" else proposer, proposals=proposals, images=images,
                split=split, limit=limit, batch_size=batch_size, max_new_tokens=max_new_tokens, score_mode=score,
                device=device, dtype=dtype, resume=resume, progress=progress,
                log=lambda message: typer.echo(message, err=True),
            )
        except (ValueError, FileNotFoundError, KeyError, TypeError, ImportError) as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(code=2) from error
        Console().print(report_table(report, get_task(task_name).headline_keys(report)))
        answers = report["answers"]
        typer.echo(f"score mode: {report['score_mode']}; predicted now: {report['run']['num_predicted']}, "
                   f"resumed: {report['run']['num_resumed']}")
        for name, path in report["files"].items():
            typer.echo(f"{name}: {path}")
        for warning in coverage_warnings(report):
            typer.echo(f"warning: {warning}", err=True)
        if answers["num_with_warnings"]:
            typer.echo(f"warning: {answers['num_with_warnings']} answers needed repairs ({answers['num_cut_off']} cut off at "
                       "--max-new-tokens); each record's 'warnings' says what", err=True)
        if answers["num_unknown_labels"]:
            typer.echo(f"warning: {answers['num_unknown_labels']} labels in the answers are not category names (dropped)", err=True)

    what = task_name if command == task_name else f"{command} (the {task_name} task)"
    run_command.__doc__ = f"Run a model on {what}: {TASKS[task_name].description}."
    return run_command


for _name in TASKS:
    eval_app.command(_name)(_run_command(_name))
for _alias, _target in ALIASES.items():
    eval_app.command(_alias)(_run_command(_target, _alias))


@eval_app.command("score")
def score_command(
    task: str = typer.Argument(..., help="Benchmark: " + ", ".join(sorted(TASKS))),
    gt: Path = typer.Option(..., "--gt", help="The benchmark's annotation file (RefCOCO: its folder or refs(*).p)."),
    pred: Path = typer.Option(..., "--pred", help="Predictions: COCO results JSON (detection) or JSON lines."),
    split: Optional[str] = typer.Option(None, "--split", help="Split to score (RefCOCO: val/testA/...; COCO-Text: val)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write the full metrics JSON here."),
    print_json: bool = typer.Option(False, "--json", help="Print the full metrics JSON instead of the table."),
) -> None:
    """Score an existing predictions file against a benchmark's ground truth."""
    try:
        task_object = get_task(task)
        dataset = task_object.load(gt, None, split)
        report = task_object.score(dataset, task_object.read_predictions(pred))
    except (ValueError, FileNotFoundError, KeyError, TypeError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=2) from error
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    console = Console()
    if print_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        console.print(report_table(report, task_object.headline_keys(report)))
    for warning in coverage_warnings(report):
        typer.echo(f"warning: {warning}", err=True)


@eval_app.command("tasks")
def tasks_command() -> None:
    """List the benchmarks and what they measure."""
    table = Table("task", "aliases", "metrics")
    for name, task in TASKS.items():
        aliases = ", ".join(alias for alias, target in ALIASES.items() if target == name)
        table.add_row(name, aliases, task.description)
    Console().print(table)


def report_table(report: dict[str, Any], headline: tuple[str, ...]) -> Table:
    """The short terminal summary: headline metrics as percentages, then coverage counts."""
    table = Table(title=f"{report['task']}  ({report['source']})", show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    metrics = report["metrics"]
    for key in headline:
        value = metrics.get(key)
        table.add_row(key, "n/a" if value is None else f"{100 * value:.2f}")
    for key in ("num_items", "num_missing", "num_extra"):
        if report.get(key) is not None:
            table.add_row(key, str(report[key]))
    return table


def coverage_warnings(report: dict[str, Any]) -> list[str]:
    warnings = []
    if report.get("num_missing"):
        warnings.append(f"{report['num_missing']} of {report['num_items']} items have no prediction (scored as failures)")
    if report.get("num_extra"):
        warnings.append(f"{report['num_extra']} predictions name items that are not in the ground truth (ignored)")
    return warnings
