"""COCO-format annotations of ShapeWorld scenes (bbox detection, with attributes)."""
from __future__ import annotations

from typing import Any

from vlmfo1.data.shapeworld.scene import Scene
from vlmfo1.data.shapeworld.vocab import SHAPES, category_id

# Annotation ids are image_id * ANNOTATION_ID_STRIDE + object id + 1: unique, and the same whichever
# order or process made the scene. Scenes hold at most 60 objects.
ANNOTATION_ID_STRIDE = 100


def coco_categories() -> list[dict[str, Any]]:
    """Every shape of the world with its fixed id, whichever subset a split draws from."""
    return [{"id": category_id(shape), "name": shape, "supercategory": "shape"} for shape in SHAPES]


def coco_image(scene: Scene) -> dict[str, Any]:
    """The image entry; its id is the scene index."""
    return {
        "id": scene.index,
        "file_name": scene.file_name,
        "width": scene.width,
        "height": scene.height,
        "split": scene.split,
        "seed": scene.seed,
        "requested_objects": scene.requested_objects,
        "distractor_boxes": [list(blob.bbox) for blob in scene.distractors],
    }


def annotation_id(scene_index: int, object_id: int) -> int:
    """The COCO annotation id of scene object `object_id` (`Proposals.object_ids` name objects so)."""
    return scene_index * ANNOTATION_ID_STRIDE + object_id + 1


def coco_annotations(scene: Scene) -> list[dict[str, Any]]:
    annotations = []
    for obj in scene.objects:
        x1, y1, x2, y2 = obj.bbox
        annotations.append({
            "id": annotation_id(scene.index, obj.id),
            "image_id": scene.index,
            "category_id": category_id(obj.category),
            "bbox": [x1, y1, x2 - x1, y2 - y1],
            "area": obj.area,  # visible pixels, as COCO's mask area
            "iscrowd": 0,
            "attributes": obj.attributes(),
        })
    return annotations


def coco_dataset(images: list[dict], annotations: list[dict], info: dict[str, Any]) -> dict[str, Any]:
    return {
        "info": info,
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": coco_categories(),
    }
