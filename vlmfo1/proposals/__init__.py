"""Box proposals for VLM-FO1: any detector's (or the user's) boxes in, clean top-100 out.

>>> from vlmfo1.proposals import build_proposer
>>> proposer = build_proposer("selective-search")          # or "omdet:/path/to/weights", "user:boxes.json"
>>> proposals = proposer("image.jpg")                        # Proposals: boxes [N,4] xyxy px, scores [N]
>>> record = proposals.to_record("image.jpg")                # upstream JSONL: image, bbox_list, score_list

See docs/proposals.md for every proposer, its extra, and measured numbers.
"""
from vlmfo1.proposals.base import (
    ImageInput,
    MissingDependencyError,
    PostProcessConfig,
    Proposals,
    Proposer,
    box_iou,
    load_image,
    nms,
    postprocess,
)
from vlmfo1.proposals.io import list_images, read_proposals, write_proposals
from vlmfo1.proposals.registry import (
    available_proposers,
    build_proposer,
    build_proposer_from_config,
    get_proposer_class,
    parse_spec,
    register_proposer,
)

__all__ = [
    "ImageInput",
    "MissingDependencyError",
    "PostProcessConfig",
    "Proposals",
    "Proposer",
    "available_proposers",
    "box_iou",
    "build_proposer",
    "build_proposer_from_config",
    "get_proposer_class",
    "list_images",
    "load_image",
    "nms",
    "parse_spec",
    "postprocess",
    "read_proposals",
    "register_proposer",
    "write_proposals",
]
