"""vlmfo1: VLM-FO1 (fine-grained perception by region-token retrieval) on today's transformers."""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

# Imported on first use, so `vlmfo1.data` or `vlmfo1.evaluation` don't pay for transformers.
_LAZY = {
    "FO1Config": "vlmfo1.modeling.configuration_fo1",
    "FO1ForConditionalGeneration": "vlmfo1.modeling.modeling_fo1",
    "FO1Processor": "vlmfo1.processing.processing_fo1",
}
__all__ = [*_LAZY, "__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vlmfo1' has no attribute {name!r}")
