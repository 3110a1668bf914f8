"""`vlmfo1 convert`: write an upstream-layout VLM-FO1 checkpoint in vlmfo1's own layout."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console


def convert(
    source: Path = typer.Argument(..., help="upstream checkpoint folder (config.json with model_type omchat_qwen2_5_vl)"),
    out: Path = typer.Argument(..., help="folder to write the converted checkpoint, processor and tokenizer to"),
    tokenizer: Optional[Path] = typer.Option(None, help="tokenizer folder, when the checkpoint folder has none"),
    aux_config: Optional[Path] = typer.Option(
        None, help="JSON of the auxiliary DaViT layout (upstream or Florence2VisionConfig keys) for unknown names"
    ),
    dtype: str = typer.Option("float32", help="dtype to store: float32, bfloat16 or float16"),
) -> None:
    """Convert an upstream VLM-FO1 checkpoint; the result loads with FO1ForConditionalGeneration.from_pretrained."""
    import json

    import torch

    from vlmfo1.modeling.conversion import is_upstream_checkpoint
    from vlmfo1.modeling.modeling_fo1 import FO1ForConditionalGeneration
    from vlmfo1.processing.processing_fo1 import FO1Processor

    console = Console()
    if not is_upstream_checkpoint(source):
        raise typer.BadParameter(f"{source} is not an upstream VLM-FO1 checkpoint (config model_type)", param_hint="SOURCE")
    aux = json.loads(aux_config.read_text()) if aux_config else None
    model = FO1ForConditionalGeneration.from_pretrained(
        source, tokenizer_path=tokenizer, aux_encoder_config=aux, dtype=getattr(torch, dtype)
    )
    model.save_pretrained(out)
    FO1Processor.from_pretrained(source, tokenizer_path=tokenizer).save_pretrained(out)
    console.print(f"[green]converted[/green] {source} -> {out} ({sum(p.numel() for p in model.parameters()):,} parameters)")


def register(app: typer.Typer) -> None:
    app.command(name="convert")(convert)
