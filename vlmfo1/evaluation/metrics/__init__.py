"""Metrics as pure functions of predictions and ground truth; each module documents its definition
and the reference implementation it follows (see also docs/evaluation.md)."""
from vlmfo1.evaluation.metrics.counting import counting_scores, parse_count
from vlmfo1.evaluation.metrics.detection import (
    COCO_STAT_NAMES,
    coco_bbox_map,
    detections_to_coco_results,
    ovdeval_nms_ap,
    ovdeval_nms_filter,
)
from vlmfo1.evaluation.metrics.ocr import edit_distance, normalize_ocr_text, ocr_scores
from vlmfo1.evaluation.metrics.referring import (
    HUMANREF_IOU_THRESHOLDS,
    density_f1,
    greedy_match_count,
    multi_target_item_scores,
    multi_target_scores,
    precision_recall,
    rec_scores,
)
from vlmfo1.evaluation.metrics.region_classification import (
    clean_answer,
    clean_category_name,
    minilm_embedder,
    region_classification_scores,
    semantic_iou,
    semantic_similarity,
)
from vlmfo1.evaluation.metrics.shapeworld import (
    caption_similarity,
    grounding_scores,
    grounding_set_scores,
    short_answer_accuracy,
)

__all__ = [
    "COCO_STAT_NAMES",
    "caption_similarity",
    "grounding_scores",
    "grounding_set_scores",
    "short_answer_accuracy",
    "HUMANREF_IOU_THRESHOLDS",
    "clean_answer",
    "clean_category_name",
    "coco_bbox_map",
    "counting_scores",
    "density_f1",
    "detections_to_coco_results",
    "edit_distance",
    "greedy_match_count",
    "minilm_embedder",
    "multi_target_item_scores",
    "multi_target_scores",
    "normalize_ocr_text",
    "ocr_scores",
    "ovdeval_nms_ap",
    "ovdeval_nms_filter",
    "parse_count",
    "precision_recall",
    "rec_scores",
    "region_classification_scores",
    "semantic_iou",
    "semantic_similarity",
]
