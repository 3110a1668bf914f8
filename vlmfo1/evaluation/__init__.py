"""Evaluation: the paper's metrics done the standard way (docs/evaluation.md).

* `vlmfo1.evaluation.metrics`: pure metric functions (COCO mAP, NMS-AP, Acc@0.5, DensityF1, ...);
* `vlmfo1.evaluation.adapters`: readers for the benchmarks' own files, yielding `EvalItem`s;
* `vlmfo1.evaluation.tasks`: per benchmark, loading + prediction records + scoring (`get_task`);
* `vlmfo1.evaluation.runner`: a model on a benchmark, resumable (`run_evaluation`, `vlmfo1 eval TASK`).
"""
from vlmfo1.evaluation.items import EvalDataset, EvalItem
from vlmfo1.evaluation.tasks import TASKS, get_task, score_files

__all__ = ["EvalDataset", "EvalItem", "TASKS", "get_task", "score_files"]
