"""Dataset adapters: each reads files the user already has (nothing is downloaded) and returns an
`EvalDataset` of uniform `EvalItem`s. Each module documents the file layout it reads and the form
of `EvalItem.target` it produces."""
from vlmfo1.evaluation.adapters.coco import coco_ground_truth, load_coco_detection, load_ovdeval
from vlmfo1.evaluation.adapters.counting import load_counting
from vlmfo1.evaluation.adapters.proposals import attach_proposals, load_proposal_file
from vlmfo1.evaluation.adapters.referring import load_humanref, load_refcoco
from vlmfo1.evaluation.adapters.regions import load_cocotext, load_region_classification
from vlmfo1.evaluation.adapters.shapeworld import load_shapeworld

__all__ = [
    "attach_proposals",
    "coco_ground_truth",
    "load_coco_detection",
    "load_cocotext",
    "load_counting",
    "load_humanref",
    "load_ovdeval",
    "load_proposal_file",
    "load_refcoco",
    "load_region_classification",
    "load_shapeworld",
]
