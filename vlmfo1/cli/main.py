"""`vlmfo1` command line. Each command family lives in its own module with a `register(app)`."""
from __future__ import annotations

import importlib

import typer

app = typer.Typer(help="VLM-FO1: fine-grained perception by region-token retrieval.", no_args_is_help=True)

# Modules that add commands to `app`; each defines `register(app: typer.Typer) -> None`.
COMMAND_MODULES = [
    "vlmfo1.cli.convert",
    "vlmfo1.cli.evaluate",
    "vlmfo1.cli.data",
    "vlmfo1.cli.infer",
    "vlmfo1.cli.propose",
    "vlmfo1.cli.serve",
    "vlmfo1.cli.train",
]


def build_app() -> typer.Typer:
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(app)
    return app


def main() -> None:
    build_app()()


if __name__ == "__main__":
    main()
