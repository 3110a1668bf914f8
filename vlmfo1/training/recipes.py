"""The recipe of the bundled ShapeWorld demo model (`vlmfo1/assets/shapeworld-fo1`), end to end on a CPU.

No small pre-trained VLM exists offline, so the recipe makes its own base VLM first:

1. data: a ShapeWorld train split (the `train` preset, changed by `scene_overrides`) and a held-out
   split of new scenes;
2. a byte-level BPE tokenizer trained on ShapeWorld text (Qwen's special tokens + the FO1 tokens);
3. **stage 0** (stands in for the base VLM's pre-training): a random `demo`-size FO1 learns
   image-level ShapeWorld questions ("Is there a blue square in this image?") with no regions;
   ViT, merger and LLM train;
4. **stage 1**: region-language alignment (the `stage1` preset's groups: region encoder, connector,
   FO1 token rows; everything else frozen);
5. **stage 2**: region tasks + image questions against forgetting (the `stage2` preset's groups);
6. evaluation on the held-out split with `vlmfo1.evaluation`: COCO bbox mAP of the "detect
   everything" answers (box = proposal box, score = proposal score), counting accuracy, and the
   ShapeWorld grounding scores of detection and REC.

`DemoRecipe()` (`--recipe plain`) is exactly these steps; it made the first bundled model, which
did not ground. `DemoRecipe.language_first()` adds **language stages** before stage 0 (text only,
the LLM alone: copying with `repeat_records`, then detection over word-filled region slots with
`lookup_records(keys="slots")`), those skills mixed into stages 0 and 2 (`StagePlan.text`), FO1
rows started at 8x, and stage 1 keeping the trained FO1 rows with the connector at a low rate
(`StagePlan.spec_changes`) (docs/training.md, sessions 4-5). `DemoRecipe.words_to_pixels()`, the
recipe of the bundled model as shipped, moves that look-up from words to pixels: word-filled object
slots beside images in stage 0 (`StagePlan.word_slots`), then the region-token alignment
(`DemoRecipe.alignment_steps`) in place of stage 1 (session 6).

Every stage runs through `vlmfo1.training.trainer.train`, the same code path as `vlmfo1 train`.
Learning rates are larger than the presets' (1e-5 in stage 2 is for a pre-trained 3B model; a
3.7M-parameter model trained for a few hundred steps needs more). `vlmfo1 train-demo --out DIR`
runs it; `recipe.json` and `metrics.json` in DIR record every setting, wall times and scores.
"""
from __future__ import annotations

import dataclasses
import json
import os
import platform
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from vlmfo1.data.records import FO1Record, read_records, write_records
from vlmfo1.training.stages import STAGES, StageSpec

REGION_TASKS_STAGE1 = {
    "detection": 3,
    "counting": 2,
    "rec": 1,
    "detect_everything": 2,
    "region_caption_brief": 1,
    "visual_prompt_detection": 1,
}


TEXT_TASKS = ("repeat", "repeat_random", "slot_lookup")


@dataclass
class StagePlan:
    tasks: dict[str, int]  # records per scene and task (ShapeWorld `task_counts`)
    steps: int
    learning_rate: float
    batch_size: int = 8
    warmup: float = 0.05  # share of the steps
    schedule: str = "cosine"  # `lr_scheduler_type` of transformers (cosine, constant_with_warmup, ...)
    # Text-only records mixed into the stage, by kind (TEXT_TASKS): "repeat" (copying ShapeWorld
    # words and region tokens), "repeat_random" (copying random letter strings and region tokens:
    # a general copier) and "slot_lookup" (detection over word-filled region slots), the LLM skills a pre-trained base
    # brings and a model trained from scratch must learn (`vlmfo1.data.shapeworld.text_tasks`).
    text: dict[str, int] = field(default_factory=dict)
    lookup_items: int = 6  # the most items in this stage's slot look-up lists
    lookup_queries: int = 2  # the most labels one slot look-up question asks for
    lookup_present_share: float = 0.0  # share of look-up labels taken from the list (`lookup_records(present_share=)`)
    lookup_turns: int = 1  # questions per slot look-up conversation (`lookup_records(turns=)`)
    # Records per scene and task (as `tasks`) given again with each object's region slot holding its
    # label's words, the image beside them (`text_tasks.word_slot_records`): the look-up beside images.
    word_slots: dict[str, int] = field(default_factory=dict)
    # Changes to the stage preset (`StageSpec` fields), e.g. {"learning_rates": {"connector": 1e-4}}.
    spec_changes: dict[str, Any] = field(default_factory=dict)


@dataclass
class DemoRecipe:
    seed: int = 0
    train_scenes: int = 1500
    eval_scenes: int = 150
    eval_split: str = "val"
    eval_preset: str = "train"  # the held-out scenes are new scenes of the training distribution
    size: str = "demo"
    tokenizer_vocab: int = 1024
    tokenizer_scenes: int = 400
    aux_image_size: int = 192
    max_pixels: int = 224 * 224
    threads: int | None = None
    fo1_row_scale: float = 1.0  # `init_tiny`: scale of the FO1 token rows at initialisation
    # ShapeWorldConfig fields changed from the `train` preset, for the training and held-out scenes
    # alike (e.g. {"objects_per_image": [1, 4]}: a simpler world).
    scene_overrides: dict[str, Any] = field(default_factory=dict)
    language: tuple[StagePlan, ...] = ()  # text-only stages before stage 0, the LLM alone
    # After stage 0: steps of `align_region_tokens` (encoders and connector put each object's region
    # token on its label's word-embedding sum, on the train split's objects); 0 = none.
    alignment_steps: int = 0
    alignment_learning_rate: float = 2e-3
    stage0: StagePlan = field(default_factory=lambda: StagePlan({"image_qa": 4}, steps=500, learning_rate=2e-3, batch_size=8))
    # None: no stage 1 (the words-to-pixels chain, whose alignment step does its work; docs/training.md)
    stage1: StagePlan | None = field(default_factory=lambda: StagePlan(dict(REGION_TASKS_STAGE1), steps=250, learning_rate=1e-3))
    stage2: StagePlan = field(
        default_factory=lambda: StagePlan({**REGION_TASKS_STAGE1, "image_qa": 1}, steps=450, learning_rate=5e-4)
    )
    language_check_questions: int = 200  # held-out questions per language check (copy, look-ups over 2/4/6 items)
    lookup_describe_share: float = 0.3  # share of slot look-ups asked the reverse way ("What shape is <region1>?")
    eval_tasks: tuple[str, ...] = ("detect_everything", "counting", "detection", "rec")
    max_new_tokens: int = 96
    eval_batch_size: int = 8

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def language_first(cls, **overrides) -> "DemoRecipe":
        """The session-5 chain (docs/training.md, sessions 4-5); `words_to_pixels` builds on it.

        FO1 rows start at 8x. Language stages before stage 0, the LLM alone at batch 64:
        language0 copies random text with region tokens in it (a general copier); language1 asks
        2-item slot look-ups, language2 lists of up to 4, both at a constant rate (the look-up
        leaves its plateau late; a decayed rate stalls it) and each with a quarter of ShapeWorld-word
        repeats (copying the words the look-up compares, and not forgetting to copy). Every look-up
        asks one label, mostly one the list holds (`lookup_present_share`), four questions per list
        (`lookup_turns`). Look-ups are mixed into stages 0 and 2; stage 1 keeps the FO1 rows the
        earlier stages trained (the preset's reset to the mean would make the 100 region rows one
        vector) and runs the connector at 1e-4. The image stages use a simpler world: 1-4 objects
        and 0-2 background proposals per scene."""
        keep_rows = {"init_new_token_rows": None}
        slow_connector = {"learning_rates": {"connector": 1e-4}}
        lookup = dict(lookup_queries=1, lookup_present_share=0.8, lookup_turns=4)
        constant = dict(learning_rate=1e-3, batch_size=64, warmup=0.03, schedule="constant_with_warmup")
        settings: dict[str, Any] = dict(
            fo1_row_scale=8.0,
            lookup_describe_share=0.0,
            scene_overrides={"objects_per_image": [1, 4], "background_proposals": [0, 2]},
            language=(
                StagePlan({}, steps=800, learning_rate=1e-3, batch_size=64, text={"repeat_random": 800 * 64}),
                StagePlan({}, steps=1000, **constant, text={"slot_lookup": 750 * 64, "repeat": 250 * 64},
                          lookup_items=2, **lookup),
                StagePlan({}, steps=500, **constant, text={"slot_lookup": 375 * 64, "repeat": 125 * 64},
                          lookup_items=4, **lookup),
            ),
            stage0=StagePlan({"image_qa": 4}, steps=500, learning_rate=1e-3, batch_size=8,
                             text={"slot_lookup": 2000, "repeat_random": 500}, lookup_items=4, **lookup),
            stage1=StagePlan(dict(REGION_TASKS_STAGE1), steps=250, learning_rate=1e-3,
                             spec_changes={**keep_rows, **slow_connector}),
            stage2=StagePlan({**REGION_TASKS_STAGE1, "image_qa": 1}, steps=450, learning_rate=5e-4,
                             text={"slot_lookup": 1000}, lookup_items=4, spec_changes=slow_connector, **lookup),
        )
        settings.update(overrides)
        return cls(**settings)

    @classmethod
    def words_to_pixels(cls, **overrides) -> "DemoRecipe":
        """The bundled model's recipe (docs/training.md, session 6): `language_first`'s language stages,
        then the look-up moved from words to pixels in two steps. Stage 0 (2500 steps at a constant
        rate) adds image records whose object slots hold their labels' words (`StagePlan.word_slots`),
        so the LLM learns the look-up beside an image; alignment (2000 steps) then trains the encoders
        and the connector to put each object's region token on its label's word-embedding sum, the
        vector the LLM has learned to read. There is no stage 1: after the alignment, every stage 1
        tried lowered the pixel look-up (its FO1-row training, at 1e-3 or 1e-4). Stage 2 keeps
        word-slot records in its mix. The world is simpler still: 1-4 large, plain objects, no
        occlusion, clutter, distractors or words, and 6000 training scenes (the alignment sees each
        about three times)."""
        chain = cls.language_first()
        easy = {**chain.scene_overrides, "size_range": [0.14, 0.3], "occlusion": 0.0, "outline_prob": 0.0,
                "texture_prob": 0.0, "clutter": 0.0, "distractors": [0, 0], "words": False}
        words = {"detection": 1, "detect_everything": 1, "counting": 1}
        settings: dict[str, Any] = dict(
            train_scenes=6000,
            scene_overrides=easy,
            alignment_steps=2000,
            stage1=None,
            stage0=dataclasses.replace(chain.stage0, tasks={"image_qa": 1}, steps=2500, schedule="constant_with_warmup",
                                       warmup=0.03, text={"slot_lookup": 6000, "repeat_random": 1500}, word_slots=words),
            stage2=dataclasses.replace(chain.stage2, word_slots={"detection": 1, "detect_everything": 1}),
        )
        settings.update(overrides)
        return dataclasses.replace(chain, **settings)

    @classmethod
    def quick(cls, **overrides) -> "DemoRecipe":
        """A few steps of everything: checks the recipe runs (tests), proves nothing about quality."""
        settings: dict[str, Any] = dict(
            size="tiny", train_scenes=12, eval_scenes=4, tokenizer_scenes=20, tokenizer_vocab=400,
            language=(StagePlan({}, steps=2, learning_rate=1e-3, batch_size=2, text={"repeat": 2, "slot_lookup": 2},
                                lookup_items=2),),
            stage0=StagePlan({"image_qa": 1}, steps=2, learning_rate=1e-3, batch_size=2),
            stage1=StagePlan({"detection": 1, "counting": 1}, steps=2, learning_rate=1e-3, batch_size=2),
            stage2=StagePlan({"detection": 1, "counting": 1, "image_qa": 1}, steps=2, learning_rate=1e-3, batch_size=2),
            max_new_tokens=8, language_check_questions=4, alignment_steps=2,
        )
        settings.update(overrides)
        return cls(**settings)


# The recipes `vlmfo1 train-demo --recipe` runs; "words-to-pixels" made the bundled model.
RECIPES = {"words-to-pixels": DemoRecipe.words_to_pixels, "language-first": DemoRecipe.language_first, "plain": DemoRecipe}


def recipe_world(model_dir: str | os.PathLike):
    """The ShapeWorld a `run_demo_recipe` model was trained on: the `train` preset with the
    `scene_overrides` of the recipe.json beside it; None when it has no recipe.json or no overrides."""
    from vlmfo1.data.shapeworld import ShapeWorldConfig

    path = Path(model_dir) / "recipe.json"
    overrides = json.loads(path.read_text()).get("recipe", {}).get("scene_overrides") if path.is_file() else None
    return ShapeWorldConfig.train(**overrides) if overrides else None


def stage_plans(recipe: DemoRecipe) -> list[tuple[str, StagePlan]]:
    """The recipe's stages in training order: language0, language1, ..., stage0, stage1 (unless None), stage2."""
    language = [(f"language{k}", plan) for k, plan in enumerate(recipe.language)]
    stage1 = [("stage1", recipe.stage1)] if recipe.stage1 is not None else []
    return language + [("stage0", recipe.stage0), *stage1, ("stage2", recipe.stage2)]


def all_tasks(recipe: DemoRecipe) -> dict[str, int]:
    """Records per scene for the train split: the most any stage asks of each task."""
    counts: dict[str, int] = {}
    for _, plan in stage_plans(recipe):
        for task, n in (*plan.tasks.items(), *plan.word_slots.items()):
            counts[task] = max(counts.get(task, 0), n)
    return counts


def make_data(recipe: DemoRecipe, data_dir: Path, log: Callable[[str], None] = print,
              coordinates: bool = False) -> dict[str, Any]:
    """The ShapeWorld splits and one records file per stage (`stage{N}.fo1.jsonl`, same folder);
    with `coordinates`, the train split's coordinate-answer twins too (`train.coords.jsonl`)."""
    from vlmfo1.data.shapeworld import ShapeWorldConfig, write_dataset
    from vlmfo1.data.shapeworld.text_tasks import word_slot_records

    # One process: generation takes seconds next to training, and worker processes would re-run a
    # caller's script that lacks an `if __name__ == "__main__"` guard.
    workers = 1
    train_config = ShapeWorldConfig.train(task_counts=all_tasks(recipe), **recipe.scene_overrides)
    train = write_dataset(data_dir, n=recipe.train_scenes, seed=recipe.seed, split="train", config=train_config,
                          workers=workers, coordinates=coordinates)
    log(f"data: train {train.images} scenes, records {train.records}")
    eval_config = ShapeWorldConfig.preset(recipe.eval_preset, task_counts={t: 1 for t in recipe.eval_tasks},
                                          **recipe.scene_overrides)
    held_out = write_dataset(data_dir, n=recipe.eval_scenes, seed=recipe.seed + 1, split=recipe.eval_split,
                             config=eval_config, workers=workers, coordinates=False)
    log(f"data: {recipe.eval_split} {held_out.images} scenes, records {held_out.records}")
    records = list(read_records(data_dir / "train.fo1.jsonl"))
    train_coco = json.loads((data_dir / "train.coco.json").read_text())
    for number, (name, plan) in enumerate(stage_plans(recipe)):
        text = text_records(recipe, plan, seed=recipe.seed * 100 + number)
        words = word_slot_records(take_tasks(records, plan.word_slots), train_coco) if plan.word_slots else []
        write_records(data_dir / f"{name}.fo1.jsonl", take_tasks(records, plan.tasks) + words + text)
    return {"train": train.to_dict(), recipe.eval_split: held_out.to_dict()}


def text_records(recipe: DemoRecipe, plan: StagePlan, seed: int) -> list[FO1Record]:
    """The text-only records a stage plan asks for (`StagePlan.text`, with its look-up settings);
    the trainer shuffles them in."""
    from vlmfo1.data.shapeworld.text_tasks import lookup_records, repeat_records

    counts = plan.text
    unknown = sorted(set(counts) - set(TEXT_TASKS))
    if unknown:
        raise ValueError(f"unknown text task(s) {unknown}; choose from {list(TEXT_TASKS)}")
    records: list[FO1Record] = []
    if counts.get("repeat_random"):
        records += repeat_records(counts["repeat_random"], seed=seed, vocabulary="random", split=f"random{seed}")
    if counts.get("repeat"):
        records += repeat_records(counts["repeat"], seed=seed, split=f"repeat{seed}")
    if counts.get("slot_lookup"):
        records += lookup_records(counts["slot_lookup"], seed=seed, max_items=plan.lookup_items,
                                  max_queries=plan.lookup_queries, split=f"slots{seed}", keys="slots",
                                  describe_share=recipe.lookup_describe_share,
                                  present_share=plan.lookup_present_share, turns=plan.lookup_turns)
    return records


def take_tasks(records: Sequence[FO1Record], tasks: dict[str, int]) -> list[FO1Record]:
    """Each scene's first `tasks[t]` records of task t (rejection records count as detection)."""
    taken, seen = [], {}
    for record in records:
        task = "detection" if record.task == "rejection" else record.task
        scene = record.meta.get("scene_index")
        key = (scene, task)
        if seen.get(key, 0) < tasks.get(task, 0):
            seen[key] = seen.get(key, 0) + 1
            taken.append(record)
    return taken


LANGUAGE_STAGE = StageSpec(name="language", train=["llm"])


def stage_config(recipe: DemoRecipe, stage: int | str, data_dir: Path, out_dir: Path, init_from: Path | None) -> dict[str, Any]:
    """The `vlmfo1 train` config of one recipe stage (0, 1, 2 or a name from `stage_plans`)."""
    name = f"stage{stage}" if isinstance(stage, int) else stage
    plans = dict(stage_plans(recipe))
    if name not in plans:
        raise ValueError(f"no stage {stage!r} in the recipe; it has {list(plans)}")
    plan = plans[name]
    spec = LANGUAGE_STAGE if name.startswith("language") else STAGES[name.removeprefix("stage")]
    spec = dataclasses.replace(spec, **plan.spec_changes)
    model: dict[str, Any]
    if init_from is None:
        model = {"tiny": {"size": recipe.size, "tokenizer": str(data_dir.parent / "tokenizer"),
                          "aux_image_size": recipe.aux_image_size, "max_pixels": recipe.max_pixels,
                          "fo1_row_scale": recipe.fo1_row_scale}}
    else:
        model = {"init_from": str(init_from)}
    return {
        "stage": spec.to_dict(),
        "model": model,
        "data": {"train": [{"records": str(data_dir / f"{name}.fo1.jsonl")}], "shuffle_regions": True},
        "training": {
            "output_dir": str(out_dir),
            "max_steps": plan.steps,
            "learning_rate": plan.learning_rate,
            "per_device_train_batch_size": plan.batch_size,
            "warmup_steps": plan.warmup,
            "lr_scheduler_type": plan.schedule,
            "weight_decay": 0.0,
            "logging_steps": 10,
            "save_steps": max(plan.steps // 2, 1),
            "save_total_limit": 1,
            "report_to": "none",
            "seed": recipe.seed,
            "dataloader_num_workers": 0,
            "disable_tqdm": True,
        },
        "threads": recipe.threads,
    }


def run_demo_recipe(
    out_dir: str | os.PathLike, recipe: DemoRecipe | None = None, log: Callable[[str], None] = print, resume: bool = True
) -> dict[str, Any]:
    """Runs the whole recipe into `out_dir` (data/, tokenizer/, stage0..2/, model/, eval/) and returns
    the report also written to `out_dir/recipe.json`. With `resume`, finished stages are kept and an
    interrupted stage continues from its last checkpoint."""
    from vlmfo1.training.tiny import shapeworld_corpus, train_small_tokenizer
    from vlmfo1.training.trainer import train

    recipe = recipe or DemoRecipe()
    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data_dir = out / "data"
    report: dict[str, Any] = {"recipe": recipe.to_dict(), "machine": _machine(), "wall_seconds": {}}
    start = time.perf_counter()

    t = time.perf_counter()
    if not (data_dir / "stage2.fo1.jsonl").exists() or not resume:
        report["data"] = make_data(recipe, data_dir, log)
    report["wall_seconds"]["data"] = round(time.perf_counter() - t, 1)

    t = time.perf_counter()
    tokenizer_dir = out / "tokenizer"
    if not (tokenizer_dir / "tokenizer.json").exists() or not resume:
        tokenizer = train_small_tokenizer(shapeworld_corpus(recipe.tokenizer_scenes, seed=recipe.seed + 12345),
                                          vocab_size=recipe.tokenizer_vocab)
        tokenizer.save_pretrained(str(tokenizer_dir))
    report["wall_seconds"]["tokenizer"] = round(time.perf_counter() - t, 1)

    init_from = None
    report["losses"] = {}
    for name, _ in stage_plans(recipe):
        stage_dir = out / name
        t = time.perf_counter()
        if resume and (stage_dir / "fo1_stage.json").exists():
            log(f"{name}: already trained in {stage_dir}")
        else:
            log(f"{name}: training into {stage_dir}")
            result = train(stage_config(recipe, name, data_dir, stage_dir, init_from), resume="auto" if resume else None)
            report["losses"][name] = result.losses
            log(f"{name}: {result.global_step} steps, losses {result.losses[:2]} ... {result.losses[-2:]}")
        report["wall_seconds"][name] = round(time.perf_counter() - t, 1)
        if name.startswith("language") or (recipe.language and name == "stage0"):
            # Whether each curriculum step formed is measured, not assumed (docs/training.md).
            report.setdefault("language_checks", {})[name] = stage_language_checks(stage_dir, recipe)
            log(f"{name}: checks {report['language_checks'][name]}")
        init_from = stage_dir
        if name == "stage0" and recipe.alignment_steps:
            t = time.perf_counter()
            init_from = _align(recipe, stage_dir, data_dir, out / "aligned", report, resume, log)
            report["wall_seconds"]["alignment"] = round(time.perf_counter() - t, 1)

    model_dir = out / "model"
    export_model(init_from, model_dir)
    t = time.perf_counter()
    report["metrics"] = evaluate_shapeworld(model_dir, data_dir, recipe.eval_split, out / "eval",
                                            tasks=recipe.eval_tasks, max_new_tokens=recipe.max_new_tokens,
                                            batch_size=recipe.eval_batch_size, log=log)
    report["wall_seconds"]["eval"] = round(time.perf_counter() - t, 1)
    report["wall_seconds"]["total"] = round(time.perf_counter() - start, 1)
    (out / "recipe.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _align(recipe: DemoRecipe, stage_dir: Path, data_dir: Path, out_dir: Path, report: dict, resume: bool,
           log: Callable[[str], None]) -> Path:
    """The recipe's alignment step (`align_model`) on the stage-0 model; its last measures go to `report`."""
    history = align_model(stage_dir, data_dir, out_dir, recipe.alignment_steps, recipe.alignment_learning_rate,
                          seed=recipe.seed, resume=resume, log=log)
    report["alignment"] = {name: values[-1] for name, values in history.items()}
    log(f"alignment: {report['alignment']}")
    return out_dir


def align_model(model_dir: Path, data_dir: Path, out_dir: Path, steps: int, learning_rate: float, seed: int = 0,
                groups: Sequence[str] | None = None, batch_size: int = 8, resume: bool = True,
                log: Callable[[str], None] = print) -> dict[str, list[float]]:
    """`align_region_tokens` on the model of `model_dir`, on the objects of `data_dir/train.coco.json`,
    saved into `out_dir` with its history (`alignment.json`); `groups` trained (None:
    `region_pretraining.ALIGNMENT_GROUPS`). With `resume`, a finished `out_dir` is kept. Returns the history."""
    from vlmfo1.modeling.modeling_fo1 import FO1ForConditionalGeneration
    from vlmfo1.processing.processing_fo1 import FO1Processor
    from vlmfo1.training.region_pretraining import ALIGNMENT_GROUPS, align_region_tokens
    from vlmfo1.training.tiny import save_model

    done = Path(out_dir) / "alignment.json"
    if resume and done.exists():
        log(f"alignment: already done in {out_dir}")
        return json.loads(done.read_text())
    log(f"alignment: {steps} steps into {out_dir}")
    model = FO1ForConditionalGeneration.from_pretrained(str(model_dir))
    processor = FO1Processor.from_pretrained(model_dir)
    history = align_region_tokens(model, processor, Path(data_dir) / "train.coco.json", data_dir, steps=steps,
                                  batch_size=batch_size, learning_rate=learning_rate, seed=seed, log=lambda line: None,
                                  groups=ALIGNMENT_GROUPS if groups is None else tuple(groups))
    save_model(model, processor, out_dir)
    done.write_text(json.dumps(history) + "\n")
    return history


def stage_language_checks(stage_dir: Path, recipe: DemoRecipe) -> dict[str, Any]:
    """`text_checks.language_checks` of a trained stage folder, with the recipe's question count."""
    from vlmfo1.modeling.modeling_fo1 import FO1ForConditionalGeneration
    from vlmfo1.processing.processing_fo1 import FO1Processor
    from vlmfo1.training.text_checks import language_checks

    model = FO1ForConditionalGeneration.from_pretrained(str(stage_dir))
    return language_checks(model, FO1Processor.from_pretrained(stage_dir), n=recipe.language_check_questions)


def export_model(trained_dir: Path, model_dir: Path) -> Path:
    """The loadable files of a trained stage folder (no checkpoints, no optimizer state)."""
    model_dir.mkdir(parents=True, exist_ok=True)
    for path in trained_dir.iterdir():
        # The run config names this machine's paths; recipe.json records the recipe instead.
        if path.is_file() and path.name not in ("training_args.bin", "fo1_training_config.yaml"):
            shutil.copy2(path, model_dir / path.name)
    return model_dir


def _machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }


# ---------------------------------------------------------------------------------------------
# Evaluation on a ShapeWorld split
# ---------------------------------------------------------------------------------------------


def generate_answers(model, processor, records: Sequence[FO1Record], image_root: Path, max_new_tokens: int = 96,
                     batch_size: int = 8) -> dict[str, str]:
    """Greedy answers of `model` to each record's question, with the record's proposals as regions
    (the evaluation runner's code path: `vlmfo1.evaluation.runner.answer_items`)."""
    from vlmfo1.evaluation.items import EvalItem
    from vlmfo1.evaluation.runner import answer_items
    from vlmfo1.pipeline import FO1Pipeline

    pipeline = FO1Pipeline(model, processor, proposer=None, max_new_tokens=max_new_tokens, batch_size=batch_size)
    items = [
        EvalItem(id=r.id, image=str(Path(image_root) / r.image), prompt=r.prompt, target={},
                 proposals=[list(box) for box in r.bbox_list], proposal_scores=list(r.score_list))
        for r in records
    ]
    return {item.id: answered.answer for item, answered in zip(items, answer_items(pipeline, items))}


def evaluate_shapeworld(
    model_dir: str | os.PathLike,
    data_dir: str | os.PathLike,
    split: str,
    out_dir: str | os.PathLike | None = None,
    tasks: Sequence[str] = ("detect_everything", "counting", "detection", "rec"),
    max_new_tokens: int = 96,
    batch_size: int = 8,
    limit: int | None = None,
    log: Callable[[str], None] = print,
    device: str = "cpu",
) -> dict[str, Any]:
    """Held-out scores of a model folder on a ShapeWorld split, through the evaluation runner
    (`vlmfo1.evaluation.runner.run_evaluation`, task `shapeworld`; its files go to `out_dir`,
    a temporary folder when None):

    * `detection_map`: COCO bbox AP (pycocotools) of the "detect everything" answers against the
      split's COCO file — each region named under a shape label is a detection with the proposal's
      box and score;
    * `counting`: exact-match accuracy of the counting answers (SPEC §5 protocol);
    * `shapeworld`: the ShapeWorld task's own scores (region-index F1 etc.) for every task asked.
    """
    import tempfile

    from vlmfo1.evaluation.adapters.shapeworld import load_shapeworld
    from vlmfo1.evaluation.metrics.detection import image_subset_map
    from vlmfo1.evaluation.predictions import read_prediction_records
    from vlmfo1.evaluation.runner import run_evaluation
    from vlmfo1.parsing import parse_answer

    data_dir = Path(data_dir)
    # Rejection records are detection questions whose objects are absent.
    wanted = tuple(tasks) + (("rejection",) if "detection" in tasks else ())
    dataset = load_shapeworld(data_dir, split=split, tasks=wanted).limit(limit)
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(out_dir) if out_dir is not None else Path(scratch)
        # A fresh run every time: the recipe retrains its model into the same folder.
        run = run_evaluation("shapeworld", dataset, str(model_dir), out_dir=out, proposer=None, device=device,
                             batch_size=batch_size, max_new_tokens=max_new_tokens, resume=False, progress=False, log=log)
        answers = {key: record["answer"] for key, record in read_prediction_records(run["files"]["predictions"]).items()}
    seconds = run["run"]["seconds"]
    log(f"eval: {len(dataset)} answers in {seconds:.0f} s")

    report: dict[str, Any] = {"split": split, "num_records": len(dataset), "generation_seconds": round(seconds, 1),
                              "shapeworld": run["metrics"]}
    coco = json.loads((data_dir / f"{split}.coco.json").read_text())
    everything = [item for item in dataset.items if item.target["task"] == "detect_everything"]
    if everything:
        detections = []
        for item in everything:
            parsed = parse_answer(answers[item.id], item.proposals, item.proposal_scores)
            detections.append((item.target["meta"]["scene_index"],
                               [(g.label, ref.box, ref.score) for g in parsed.groups for ref in g.regions]))
        detection = image_subset_map(coco, detections)
        report["detection_map"] = {k: detection[k] for k in ("AP", "AP50", "AP75", "AR100", "images", "unknown_labels")}
    if "counting" in report["shapeworld"]["per_task"]:
        report["counting"] = report["shapeworld"]["per_task"]["counting"]
    if out_dir is not None:
        (Path(out_dir) / f"{split}.metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
