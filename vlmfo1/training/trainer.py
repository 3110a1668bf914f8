"""The FO1 trainer: a YAML config -> model, stage, data -> `transformers.Trainer` -> a saved model.

It runs on the HF Trainer/accelerate stack, so everything the Trainer supports works by config:
DeepSpeed ZeRO-2/3 (`training.deepspeed: ds_config.json`), FSDP (`training.fsdp` or an accelerate
config), bf16, gradient checkpointing and accumulation, checkpoints and resume, tensorboard/wandb
(`training.report_to`). A config has four sections::

    stage: 1                          # a preset (0, 1, 2) or a stage dict (see `stages.StageSpec`)
    model:
      init_from: runs/stage1          # an FO1 folder (ours or upstream's), or
      # base_vlm: Qwen/Qwen2.5-VL-3B-Instruct (local folder) to build a new FO1 around, or
      # tiny: {size: tiny, tokenizer: shapeworld}   a random small FO1
    data:
      train:                          # one or more record sources, mixed
        - {records: data/coco.fo1.jsonl, images: data/coco, proposals: {file: props.jsonl}, repeat: 1}
      eval: []                        # optional, same form
      iou_threshold: 0.5              # ground truth -> proposal matching
      max_regions: 100
      shuffle_regions: true           # also shuffle the regions of records used as they are
      regions_per_sample: null        # N: keep the named regions + random others up to N (curriculum)
      max_length: 4096
    training:                         # any transformers.TrainingArguments field
      output_dir: runs/stage1
      learning_rate: 1.0e-3
      ...

Relative paths in `model` and `data` are relative to the config file's folder; `training` paths
(output_dir, deepspeed) to the working folder, as transformers reads them.
"""
from __future__ import annotations

import copy
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import yaml
from torch import nn
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from vlmfo1.training.collator import FO1Collator
from vlmfo1.training.data import EpochSampler, FO1TrainingDataset, load_source
from vlmfo1.training.stages import AppliedStage, apply_lora, apply_stage, optimizer_groups, stage_spec, trainable_summary

logger = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
CONFIG_SECTIONS = ("stage", "model", "data", "training", "threads")
# TrainingArguments defaults that FO1 training needs whatever the config says.
_FORCED_ARGS = {"remove_unused_columns": False}
_DEFAULT_ARGS = {
    "logging_steps": 10,
    "save_strategy": "steps",
    "save_steps": 500,
    "report_to": "none",
    "dataloader_num_workers": 0,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 0,
    "weight_decay": 0.0,
}
RUN_CONFIG_NAME = "fo1_training_config.yaml"


# ---------------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------------


def preset_path(stage: Any) -> Path:
    """The packaged YAML preset of a stage (`vlmfo1/configs/stage{N}.yaml`)."""
    key = str(stage).lower().removeprefix("stage")
    path = CONFIG_DIR / f"stage{key}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in CONFIG_DIR.glob("stage*.yaml"))
        raise ValueError(f"no preset for stage {stage!r}; presets: {known}")
    return path


def load_config(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training config not found: {path}")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a training config must be a mapping with sections {CONFIG_SECTIONS}")
    unknown = sorted(set(data) - set(CONFIG_SECTIONS))
    if unknown:
        raise ValueError(f"{path}: unknown section(s) {unknown}; sections are {list(CONFIG_SECTIONS)}")
    return absolutize_paths(data, path.resolve().parent)


def absolutize_paths(config: dict[str, Any], base_dir: Path) -> dict[str, Any]:
    """The model and data paths of a config file, made absolute against the file's folder (so that
    merged files keep pointing where each one meant). `training` paths stay relative to the working
    folder, as transformers reads them."""
    config = copy.deepcopy(config)
    model = config.get("model") or {}
    for key in ("init_from", "base_vlm", "tokenizer", "aux_weights"):
        if model.get(key) is not None:
            model[key] = str(_resolve(model[key], base_dir))
    tiny = model.get("tiny")
    if isinstance(tiny, dict) and tiny.get("tokenizer") not in (None, "qwen", "shapeworld"):
        tiny["tokenizer"] = str(_resolve(tiny["tokenizer"], base_dir))
    data = config.get("data") or {}
    for split in ("train", "eval"):
        entries = data.get(split)
        if isinstance(entries, (dict, str)):
            entries = data[split] = [entries]
        for position, entry in enumerate(entries or []):
            if isinstance(entry, str):
                entry = entries[position] = {"records": entry}
            for key in ("records", "images"):
                if entry.get(key) is not None:
                    entry[key] = str(_resolve(entry[key], base_dir))
            proposals = entry.get("proposals")
            if isinstance(proposals, dict) and proposals.get("file") is not None:
                proposals["file"] = str(_resolve(proposals["file"], base_dir))
    return config


def merge_configs(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`override` on top of `base`, mappings merged key by key (lists and scalars replaced)."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_configs(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def set_option(config: dict[str, Any], dotted: str) -> dict[str, Any]:
    """Applies one `section.key=value` override (the value is read as YAML: 3, 1e-4, true, [a, b])."""
    if "=" not in dotted:
        raise ValueError(f"an override must look like section.key=value, got {dotted!r}")
    key, _, raw = dotted.partition("=")
    parts = key.strip().split(".")
    if parts[0] not in CONFIG_SECTIONS:
        raise ValueError(f"override {dotted!r}: unknown section {parts[0]!r}; sections are {list(CONFIG_SECTIONS)}")
    node = config
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ValueError(f"override {dotted!r}: {part!r} is not a mapping")
    node[parts[-1]] = yaml.safe_load(raw)
    return config


def resolve_config(
    config: str | os.PathLike | dict[str, Any] | Sequence[str | os.PathLike | dict[str, Any]] | None = None,
    stage: Any = None,
    overrides: Sequence[str] = (),
) -> dict[str, Any]:
    """The full config of a run: the stage preset (when `stage` is given), the user's config(s) on top
    in order, then `section.key=value` overrides. With both, the preset's `stage` block wins (`--stage`
    asks for it)."""
    resolved: dict[str, Any] = {}
    if stage is not None:
        resolved = load_config(preset_path(stage))
    configs = [] if config is None else list(config) if isinstance(config, (list, tuple)) else [config]
    for item in configs:
        user = load_config(item) if not isinstance(item, dict) else copy.deepcopy(item)
        resolved = merge_configs(resolved, user)
    if configs and stage is not None:
        resolved["stage"] = load_config(preset_path(stage))["stage"]
    for option in overrides:
        set_option(resolved, option)
    if "stage" not in resolved:
        raise ValueError("the config names no stage: give `stage:` in it or --stage")
    return resolved


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------


def build_model(model_config: dict[str, Any], seed: int = 0):
    """(model, processor) from the `model` section: `init_from`, `base_vlm` or `tiny`."""
    from vlmfo1.modeling.modeling_fo1 import FO1ForConditionalGeneration
    from vlmfo1.processing.processing_fo1 import FO1Processor

    options = dict(model_config or {})
    sources = [key for key in ("init_from", "base_vlm", "tiny") if options.get(key) is not None]
    if len(sources) != 1:
        raise ValueError(f"the model section needs exactly one of init_from, base_vlm, tiny; got {sources or 'none'}")
    dtype = _dtype(options.pop("torch_dtype", "float32"))
    if sources[0] == "tiny":
        from vlmfo1.training.tiny import init_tiny

        tiny = dict(options["tiny"]) if isinstance(options["tiny"], dict) else {"size": options["tiny"]}
        tokenizer = tiny.get("tokenizer", "qwen")
        if tokenizer not in ("qwen", "shapeworld"):
            tiny["tokenizer"] = str(tokenizer)
        tiny.setdefault("seed", seed)
        model, processor = init_tiny(None, **tiny)
        return model.to(dtype), processor
    if sources[0] == "base_vlm":
        return build_from_base_vlm(
            options["base_vlm"],
            tokenizer=options.get("tokenizer"),
            aux_encoder=options.get("aux_encoder", "davit-large"),
            aux_image_size=int(options.get("aux_image_size", 768)),
            aux_weights=options.get("aux_weights"),
            dtype=dtype,
            seed=seed,
        )
    path = Path(options["init_from"])
    model = FO1ForConditionalGeneration.from_pretrained(str(path), dtype=dtype)
    processor = FO1Processor.from_pretrained(path)
    _check_vocabulary(model, processor)
    return model, processor


def build_from_base_vlm(
    path: str | os.PathLike,
    tokenizer: str | os.PathLike | None = None,
    aux_encoder: str = "davit-large",
    aux_image_size: int = 768,
    aux_weights: str | os.PathLike | None = None,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
):
    """A new FO1 around a pre-trained Qwen2.5-VL folder: its ViT and LLM weights, the FO1 tokens added
    (the embedding table grows if it must), a random HFRE and connector, and a DaViT that is random or
    loaded from `aux_weights` (a safetensors file or folder holding a Florence-2 vision tower)."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    from vlmfo1.modeling.configuration_fo1 import FO1Config
    from vlmfo1.modeling.conversion import KNOWN_DAVIT
    from vlmfo1.modeling.modeling_fo1 import FO1ForConditionalGeneration
    from vlmfo1.processing.image_processing import FO1ImageProcessor
    from vlmfo1.processing.processing_fo1 import FO1Processor
    from vlmfo1.processing.tokenization import REGION_PLACEHOLDER_TOKEN, load_fo1_tokenizer

    path = Path(path)
    if aux_encoder not in KNOWN_DAVIT:
        raise ValueError(f"unknown aux_encoder {aux_encoder!r}; known: {sorted(KNOWN_DAVIT)}")
    tok = load_fo1_tokenizer(tokenizer or path)
    base = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(path), dtype=dtype)
    vlm_config = base.config
    if len(tok) > vlm_config.text_config.vocab_size:
        base.resize_token_embeddings(len(tok), pad_to_multiple_of=64)
        vlm_config = base.config
    config = FO1Config(
        vlm_config=vlm_config.to_dict(),
        aux_encoder_config=KNOWN_DAVIT[aux_encoder]().to_dict(),
        aux_image_size=aux_image_size,
        region_token_id=tok.convert_tokens_to_ids(REGION_PLACEHOLDER_TOKEN),
    )
    torch.manual_seed(seed)
    model = FO1ForConditionalGeneration(config).to(dtype)
    missing, unexpected = model.vlm.load_state_dict(base.state_dict(), strict=False)
    missing = [k for k in missing if k != "lm_head.weight" or not config.tie_word_embeddings]
    if missing or unexpected:
        raise ValueError(f"{path}: the Qwen2.5-VL weights do not fit (missing {missing[:5]}, unexpected {unexpected[:5]})")
    if model.config.tie_word_embeddings:
        model.tie_weights()
    if aux_weights is not None:
        load_aux_weights(model, aux_weights)
    image_processor = FO1ImageProcessor.from_pretrained(path, aux_image_size=aux_image_size) if (
        path / "preprocessor_config.json"
    ).is_file() else FO1ImageProcessor(aux_image_size=aux_image_size)
    return model, FO1Processor(image_processor, tok)


def load_aux_weights(model, source: str | os.PathLike) -> None:
    """Loads the DaViT weights from a safetensors file or folder whose keys end in the aux encoder's
    own keys after some prefix (e.g. Florence-2's `model.vision_tower.`)."""
    from safetensors.torch import load_file

    source = Path(source)
    files = sorted(source.glob("*.safetensors")) if source.is_dir() else [source]
    if not files:
        raise FileNotFoundError(f"no .safetensors files in {source}")
    wanted = model.aux_encoder.state_dict()
    found: dict[str, torch.Tensor] = {}
    prefixes: set[str] = set()
    for file in files:
        for key, value in load_file(str(file)).items():
            for target in wanted:
                if key == target or key.endswith("." + target):
                    prefix = key[: len(key) - len(target)]
                    if prefix == "" or "vision" in prefix or "aux" in prefix:
                        found[target] = value
                        prefixes.add(prefix)
    missing = sorted(set(wanted) - set(found))
    if missing:
        raise ValueError(f"{source}: no weights for {len(missing)} aux encoder keys (first: {missing[:3]})")
    if len(prefixes) > 1:
        raise ValueError(f"{source}: aux encoder keys found under several prefixes {sorted(prefixes)}")
    model.aux_encoder.load_state_dict(found)


def _check_vocabulary(model, processor) -> None:
    rows = model.get_input_embeddings().weight.shape[0]
    if len(processor.tokenizer) > rows:
        raise ValueError(f"the tokenizer has {len(processor.tokenizer)} tokens but the model only {rows} embedding rows")
    if model.config.region_token_id != processor.region_token_id:
        raise ValueError(
            f"model region_token_id {model.config.region_token_id} != tokenizer's <regionfeat> id {processor.region_token_id}"
        )


def _dtype(name: Any) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if name not in table:
        raise ValueError(f"unknown torch_dtype {name!r}; choose from {sorted(table)}")
    return table[name]


def _resolve(path: Any, base_dir: str | os.PathLike | None) -> Path:
    path = Path(str(path)).expanduser()
    return path if path.is_absolute() or base_dir is None else Path(base_dir) / path


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def build_dataset(data_config: dict[str, Any], split: str, processor, seed: int) -> FO1TrainingDataset | None:
    entries = (data_config or {}).get(split) or []
    if isinstance(entries, dict):
        entries = [entries]
    if not entries:
        if split == "train":
            raise ValueError("data.train names no record source")
        return None
    sources = []
    for position, entry in enumerate(entries):
        if isinstance(entry, str):
            entry = {"records": entry}
        unknown = sorted(set(entry) - {"records", "images", "proposals", "repeat", "name"})
        if unknown:
            raise ValueError(f"data.{split}[{position}]: unknown field(s) {unknown}")
        if "records" not in entry:
            raise ValueError(f"data.{split}[{position}]: needs `records` (a FO1 JSONL file)")
        sources.append(load_source(**entry))
    return FO1TrainingDataset(
        sources,
        processor,
        seed=seed,
        iou_threshold=float(data_config.get("iou_threshold", 0.5)),
        max_regions=int(data_config.get("max_regions", processor.max_regions)),
        shuffle_regions=bool(data_config.get("shuffle_regions", False)),
        max_length=data_config.get("max_length"),
        regions_per_sample=data_config.get("regions_per_sample"),
    )


# ---------------------------------------------------------------------------------------------
# Trainer
# ---------------------------------------------------------------------------------------------


class FO1Trainer(Trainer):
    """`transformers.Trainer` with FO1's needs: masked embedding matrices never decay, parameter
    groups may have learning rates of their own (the stage's `learning_rates`), and the sample order
    is an `EpochSampler` (seeded, epoch-aware, replayed exactly on resume)."""

    def __init__(self, *args, masked_parameters: Sequence[nn.Parameter] = (),
                 group_learning_rates: dict[str, float] | None = None, **kwargs):
        self.masked_parameters = list(masked_parameters)
        self.group_learning_rates = dict(group_learning_rates or {})
        super().__init__(*args, **kwargs)

    def create_optimizer(self, model=None):
        if self.optimizer is None and self.group_learning_rates:
            opt_model = self.model if model is None else model
            decay_names = set(self.get_decay_parameter_names(opt_model))
            decaying = {id(p) for name, p in opt_model.named_parameters() if name in decay_names}
            fo1 = opt_model.get_base_model() if hasattr(opt_model, "get_base_model") else opt_model  # peft
            groups = optimizer_groups(fo1, self.args.learning_rate, self.args.weight_decay, decaying,
                                      self.group_learning_rates)
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return super().create_optimizer(model)

    def get_decay_parameter_names(self, model: nn.Module) -> list[str]:
        names = super().get_decay_parameter_names(model)
        masked = {id(p) for p in self.masked_parameters}
        excluded = {name for name, parameter in model.named_parameters() if id(parameter) in masked}
        return [name for name in names if name not in excluded]

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        """Loads a checkpoint's weights through `from_pretrained`. The Trainer's own loader reads the
        safetensors keys as they are, but `save_pretrained` writes Qwen2.5-VL's sub-model in its hub
        layout (`vlm.model.layers.*`, `vlm.visual.*`), so those keys would miss and the run would go on
        from the initial weights with only a warning."""
        target = self.accelerator.unwrap_model(model if model is not None else self.model)
        if self.is_fsdp_enabled or self.is_deepspeed_enabled or not _is_fo1(target):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        _load_fo1_weights(target, resume_from_checkpoint)

    def _load_best_model(self) -> None:
        target = self.accelerator.unwrap_model(self.model)
        if self.is_fsdp_enabled or self.is_deepspeed_enabled or not _is_fo1(target):
            return super()._load_best_model()
        _load_fo1_weights(target, self.state.best_model_checkpoint)

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        return EpochSampler(len(dataset), seed=seed)


def _is_fo1(model) -> bool:
    from vlmfo1.modeling.modeling_fo1 import FO1ForConditionalGeneration

    return isinstance(model, FO1ForConditionalGeneration)


def _load_fo1_weights(model, checkpoint: str | os.PathLike) -> None:
    """Every weight of `checkpoint` into `model` (strict: a key that does not fit is an error)."""
    dtype = next(model.parameters()).dtype
    loaded = type(model).from_pretrained(str(checkpoint), dtype=dtype)
    model.load_state_dict(loaded.state_dict(), strict=True)


class LossHistory(TrainerCallback):
    """Keeps the (step, loss) pairs the Trainer logs, for reports and tests."""

    def __init__(self):
        self.losses: list[tuple[int, float]] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses.append((state.global_step, float(logs["loss"])))


@dataclass
class TrainResult:
    output_dir: Path
    global_step: int
    losses: list[tuple[int, float]]
    metrics: dict[str, Any]
    trainable: dict[str, dict[str, int]]


def training_arguments(training: dict[str, Any], output_dir: str | os.PathLike | None = None) -> TrainingArguments:
    settings = {**_DEFAULT_ARGS, **(training or {})}
    if output_dir is not None:
        settings["output_dir"] = str(output_dir)
    if not settings.get("output_dir"):
        raise ValueError("training.output_dir is not set")
    _rename_checkpointing(settings)
    checkpointing = "activation_checkpointing" if _HAS_ACTIVATION_CHECKPOINTING else "gradient_checkpointing"
    if settings.get(checkpointing) and not settings.get(f"{checkpointing}_kwargs"):
        # Reentrant checkpointing drops gradients when a layer's inputs need none (frozen embeddings).
        settings[f"{checkpointing}_kwargs"] = {"use_reentrant": False}
    if not _has_accelerator():
        if (settings.get("bf16") or settings.get("fp16")) and not settings.get("use_cpu"):
            # Documented recovery: the presets ask for bf16 (GPUs); on a CPU-only machine train in fp32,
            # which is also faster than bf16 autocast on most CPUs. `use_cpu: true` keeps CPU autocast.
            logger.warning("no GPU: training in float32 (the config's bf16/fp16 applies on GPUs only)")
            settings["bf16"] = settings["fp16"] = False
        # Without it, processes started by torchrun/accelerate on CPUs would each train alone.
        settings.setdefault("use_cpu", True)
    settings.update(_FORCED_ARGS)
    return TrainingArguments(**settings)


_HAS_ACTIVATION_CHECKPOINTING = "activation_checkpointing" in TrainingArguments.__dataclass_fields__


def _rename_checkpointing(settings: dict[str, Any]) -> None:
    """Configs say `gradient_checkpointing` (every transformers 5.x knows it); newer versions call it
    `activation_checkpointing` and warn about the old name, so it is translated where it exists."""
    if not _HAS_ACTIVATION_CHECKPOINTING:
        return
    for suffix in ("", "_kwargs"):
        old, new = f"gradient_checkpointing{suffix}", f"activation_checkpointing{suffix}"
        if old in settings:
            value = settings.pop(old)
            settings.setdefault(new, value)


def _has_accelerator() -> bool:
    return torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available()) or (
        hasattr(torch.backends, "mps") and torch.backends.mps.is_available()
    )


def train(
    config: dict[str, Any],
    resume: bool | str | os.PathLike | None = None,
    callbacks: Sequence[TrainerCallback] = (),
    model=None,
    processor=None,
) -> TrainResult:
    """Runs one stage as `config` says (see the module docstring). `resume`: True/"auto" continues from
    the newest checkpoint in the output folder (a fresh start if there is none), a path from that one.
    `model`/`processor` replace the `model` section (for programmatic use)."""
    from transformers import set_seed

    from vlmfo1.training.tiny import first_fo1_token_id

    if config.get("threads"):
        torch.set_num_threads(int(config["threads"]))
    args = training_arguments(config.get("training", {}))
    set_seed(args.seed)
    if model is None:
        model, processor = build_model(config.get("model", {}), seed=args.seed)
    elif processor is None:
        raise ValueError("pass the processor with the model")
    spec = stage_spec(config["stage"])
    applied: AppliedStage = apply_stage(model, spec, first_fo1_token_id(processor.tokenizer))
    trainable = trainable_summary(model)
    if spec.lora is not None:
        extra = [name for name in ("aux_encoder", "region_encoder", "image_projector", "visual")
                 if _group_for_module(name) in spec.train]
        model = apply_lora(model, spec.lora, extra)

    data_seed = args.data_seed if args.data_seed is not None else args.seed
    train_dataset = build_dataset(config.get("data", {}), "train", processor, data_seed)
    eval_dataset = build_dataset(config.get("data", {}), "eval", processor, data_seed)
    history = LossHistory()
    trainer = FO1Trainer(
        model=model,
        args=args,
        data_collator=FO1Collator(pad_token_id=processor.tokenizer.pad_token_id),
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=processor,
        callbacks=[history, *callbacks],
        masked_parameters=applied.masked_parameters,
        group_learning_rates=spec.learning_rates,
    )
    checkpoint = _checkpoint_to_resume(resume, Path(args.output_dir))
    output = trainer.train(resume_from_checkpoint=checkpoint)
    applied.remove()
    final_dir = Path(args.output_dir)
    save_trained(trainer, processor, final_dir, spec)
    if trainer.args.should_save:
        (final_dir / RUN_CONFIG_NAME).write_text(yaml.safe_dump(config, sort_keys=False))
    return TrainResult(final_dir, trainer.state.global_step, history.losses, dict(output.metrics), trainable)


def _group_for_module(name: str) -> str:
    return {"aux_encoder": "aux_encoder", "region_encoder": "region_encoder", "image_projector": "image_projector",
            "visual": "vision"}[name]


def _checkpoint_to_resume(resume, output_dir: Path) -> str | None:
    if resume in (None, False):
        return None
    if resume is True or resume == "auto":
        last = get_last_checkpoint(str(output_dir)) if output_dir.is_dir() else None
        if last is None:
            logger.warning("no checkpoint in %s: starting from the beginning", output_dir)
        return last
    path = Path(resume)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint to resume from not found: {path}")
    return str(path)


def save_trained(trainer: Trainer, processor, out_dir: Path, spec) -> None:
    """The final model in `out_dir` (LoRA merged into the weights; the adapter alone in `adapter/`).
    `Trainer.save_model` runs on every process: under ZeRO-3/FSDP it gathers the shards."""
    if spec.lora is None:
        trainer.save_model(str(out_dir))
    else:
        trainer.save_model(str(out_dir / "adapter"))
        if trainer.args.should_save:
            # Needs the whole model in this process (not ZeRO-3 partitioned): merge the adapter later
            # with peft if it is not.
            merged = trainer.accelerator.unwrap_model(trainer.model).merge_and_unload()
            merged.save_pretrained(str(out_dir))
    if trainer.args.should_save:
        processor.save_pretrained(out_dir)
        (out_dir / "fo1_stage.json").write_text(json.dumps(spec.to_dict(), indent=2) + "\n")
