"""``vlmfo1 eval``: score predictions with the benchmarks' standard protocols (docs/evaluation.md).

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
