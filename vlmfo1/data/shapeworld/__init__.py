"""ShapeWorld: a procedural world of coloured shapes with exact ground truth for every FO1 task.

    from vlmfo1.data.shapeworld import ShapeWorldConfig, generate_scene, make_task_records, write_dataset

    config = ShapeWorldConfig.train()              # or .heldout(), or any knob as a keyword
    scene = generate_scene(config, index=3, seed=0, split="train")
    records = make_task_records(scene, config=config)            # FO1 records (region indexes)
    twins = make_task_records(scene, config=config, style="coords")  # the same, as JSON pixel boxes
    write_dataset("data/shapeworld", n=5000, seed=0, split="train", config=config, workers=8)

Scene `index` of (`seed`, `split`) is always the same image and labels, made alone or in a run.
See docs/shapeworld.md for the knobs, the tasks and an example record of each.
"""
from vlmfo1.data.shapeworld.coco import coco_annotations, coco_categories, coco_dataset, coco_image
from vlmfo1.data.shapeworld.config import COUNTED_TASKS, MAX_OBJECTS, TASKS, ShapeWorldConfig
from vlmfo1.data.shapeworld.dataset import (
    DatasetSummary,
    ShapeWorldExample,
    encode_image,
    generate_example,
    make_task_records,
    write_dataset,
)
from vlmfo1.data.shapeworld.proposals import BACKGROUND, DISTRACTOR, Proposals, build_proposals
from vlmfo1.data.shapeworld.scene import Distractor, Scene, ShapeObject, generate_scene, scene_seeds
from vlmfo1.data.shapeworld.tasks import Grounding, TaskSample, make_task_samples
from vlmfo1.data.shapeworld.visualize import draw_scene, side_by_side
from vlmfo1.data.shapeworld.vocab import COLOURS, SHAPES, SIZES, TEXTURES, WORDS

__all__ = [
    "BACKGROUND", "COLOURS", "COUNTED_TASKS", "DISTRACTOR", "MAX_OBJECTS", "SHAPES", "SIZES", "TASKS",
    "TEXTURES", "WORDS", "DatasetSummary", "Distractor", "Grounding", "Proposals", "Scene", "ShapeObject",
    "ShapeWorldConfig", "ShapeWorldExample", "TaskSample", "build_proposals", "coco_annotations",
    "coco_categories", "coco_dataset", "coco_image", "draw_scene", "encode_image", "generate_example",
    "generate_scene", "make_task_records", "make_task_samples", "scene_seeds", "side_by_side", "write_dataset",
]
