"""The user-facing pipeline: model + processor + proposer, one typed method per task (docs/pipeline.md).

    from vlmfo1.pipeline import FO1Pipeline
    result = FO1Pipeline.from_pretrained("shapeworld").detect("scene.png", "red circle, blue star")
"""
from __future__ import annotations

import importlib

# Imported on first use, so reading results (vlmfo1.pipeline.results) does not pay for torch.
_LAZY = {
    "FO1Pipeline": "vlmfo1.pipeline.pipeline",
    "TaskRequest": "vlmfo1.pipeline.pipeline",
    "parse_categories": "vlmfo1.pipeline.pipeline",
    "FO1Result": "vlmfo1.pipeline.results",
    "ProposalSet": "vlmfo1.pipeline.results",
    "Region": "vlmfo1.pipeline.results",
    "RegionAnswer": "vlmfo1.pipeline.results",
    "RESULT_JSON_SCHEMA": "vlmfo1.pipeline.results",
    "draw_result": "vlmfo1.pipeline.visualize",
}
__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vlmfo1.pipeline' has no attribute {name!r}")
