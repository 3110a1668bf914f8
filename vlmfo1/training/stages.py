"""What trains in each stage of the FO1 recipe (SPEC §3), and how the rest is kept exactly unchanged.

Parameters are grouped by the part of the model they belong to:

=================  ==========================================================================
group              parameters
=================  ==========================================================================
``vision``         the primary ViT of the base VLM, merger included (`model.visual`)
``image_projector`` the projector after the merger (an identity in the released model)
``llm``            the language model: embeddings, decoder layers, final norm and LM head
``aux_encoder``    the auxiliary DaViT
``region_encoder`` HFRE: SimpleFP and the branch LayerNorms
``connector``      the region -> LLM connector MLP
=================  ==========================================================================

A stage names the groups it trains; everything else gets ``requires_grad=False``. Stage 1 also
trains the embedding rows of the FO1 tokens (``new_token_rows``) while the rows of the base
vocabulary stay bit-identical: a gradient hook zeroes their gradient, and the trainer keeps
the embedding matrix out of weight decay (AdamW's decay would otherwise shrink rows that get no
gradient). With tied embeddings the same matrix is the LM head, so the output side of the new
tokens trains too; with an untied head its new rows get the same treatment.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

GROUPS = ("vision", "image_projector", "llm", "aux_encoder", "region_encoder", "connector")


@dataclass
class StageSpec:
    """One training stage: which groups train, whether the FO1 token rows train, LoRA settings."""

    name: str = "custom"
    train: list[str] = field(default_factory=list)
    new_token_rows: bool = False
    # Start the FO1 token rows from the mean of the base vocabulary's rows (only when the model is
    # fresh, not when training resumes: the checkpoint's rows are loaded over them).
    init_new_token_rows: str | None = None  # None or "mean"
    lora: dict[str, Any] | None = None  # peft LoraConfig fields; LoRA on the LLM's linear layers
    # Per-group learning rates over the run's `learning_rate` (as LLaVA's `mm_projector_lr`). With
    # Adam every weight moves about lr per step whatever its gradient, so a wide-fan-in layer such as
    # the connector (thousands of inputs) moves its output far faster than the LLM's layers do.
    learning_rates: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = [g for g in (*self.train, *self.learning_rates) if g not in GROUPS]
        if unknown:
            raise ValueError(f"stage {self.name!r}: unknown parameter group(s) {unknown}; groups are {list(GROUPS)}")
        untrained = [g for g in self.learning_rates if g not in self.train]
        if untrained:
            raise ValueError(f"stage {self.name!r}: learning_rates names group(s) {untrained} that the stage does not train")
        bad = {g: lr for g, lr in self.learning_rates.items() if not (isinstance(lr, (int, float)) and lr > 0)}
        if bad:
            raise ValueError(f"stage {self.name!r}: learning rates must be positive numbers, got {bad}")
        if self.init_new_token_rows not in (None, "mean"):
            raise ValueError(f"stage {self.name!r}: init_new_token_rows must be null or 'mean', got {self.init_new_token_rows!r}")
        if self.lora is not None and "llm" not in self.train:
            raise ValueError(f"stage {self.name!r}: LoRA adapts the LLM, so 'llm' must be in train")
        if not self.train and not self.new_token_rows:
            raise ValueError(f"stage {self.name!r} trains nothing")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "StageSpec":
        known = {"name", "train", "new_token_rows", "init_new_token_rows", "lora", "learning_rates"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown stage field(s) {unknown}; known fields are {sorted(known)}")
        return cls(**{**data, "train": list(data.get("train", [])),
                      "learning_rates": {g: float(lr) if isinstance(lr, str) else lr
                                         for g, lr in (data.get("learning_rates") or {}).items()}})

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "train": list(self.train),
            "new_token_rows": self.new_token_rows,
            "init_new_token_rows": self.init_new_token_rows,
            "lora": self.lora,
            "learning_rates": dict(self.learning_rates),
        }


# The paper's recipe. A stage-0 preset stands in for the base VLM's own pre-training when a model
# is built from scratch (the bundled ShapeWorld demo); real runs start from a pre-trained VLM.
STAGES = {
    "0": StageSpec(name="stage0", train=["vision", "image_projector", "llm"]),
    "1": StageSpec(name="stage1", train=["region_encoder", "connector"], new_token_rows=True, init_new_token_rows="mean"),
    "2": StageSpec(name="stage2", train=["aux_encoder", "region_encoder", "connector", "llm"]),
}


def stage_spec(stage: Any) -> StageSpec:
    """A `StageSpec` from a preset name (0/1/2, "stage1", ...), a dict, or a `StageSpec`."""
    if isinstance(stage, StageSpec):
        return stage
    if isinstance(stage, dict):
        return StageSpec.from_dict(stage)
    key = str(stage).lower().removeprefix("stage")
    if key not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; presets are {sorted(STAGES)} (or give a stage dict)")
    return StageSpec.from_dict(STAGES[key].to_dict())


def group_modules(model) -> dict[str, list[nn.Module]]:
    """The modules of each group (`GROUPS`) of an `FO1ForConditionalGeneration`."""
    head = model.vlm.lm_head
    llm = [model.language_model] + ([] if _is_tied(model) else [head])
    # Under LoRA, peft's `modules_to_save` wraps the region encoder: its trainable copy lives beside
    # the original, and attribute access reaches only the original.
    encoders = _peft_copies(model.region_encoder)
    region = [m for encoder in encoders for name, m in encoder.named_children() if name != "connector"]
    return {
        "vision": [model.visual],
        "image_projector": [model.image_projector],
        "llm": llm,
        "aux_encoder": [model.aux_encoder] if model.aux_encoder is not None else [],
        "region_encoder": region,
        "connector": [encoder.connector for encoder in encoders],
    }


def _peft_copies(module: nn.Module) -> list[nn.Module]:
    """`module`, or the original and trained copies when peft's ModulesToSaveWrapper wraps it."""
    if hasattr(module, "original_module") and hasattr(module, "modules_to_save"):
        return [module.original_module, *module.modules_to_save.values()]
    return [module]


def group_of_parameters(model) -> dict[str, str]:
    """Parameter name -> group, for every parameter of the model."""
    ids = {}
    for group, modules in group_modules(model).items():
        for module in modules:
            for parameter in module.parameters():
                ids.setdefault(id(parameter), group)
    names = {}
    for name, parameter in model.named_parameters():
        if id(parameter) not in ids:
            raise RuntimeError(f"parameter {name} belongs to no stage group; stages.group_modules must learn it")
        names[name] = ids[id(parameter)]
    return names


def _is_tied(model) -> bool:
    return model.vlm.lm_head.weight is model.get_input_embeddings().weight


@dataclass
class AppliedStage:
    """What `apply_stage` did: the hooks it registered and the matrices whose rows it masks."""

    spec: StageSpec
    first_new_token_id: int | None
    masked_parameters: list[nn.Parameter]
    hooks: list[Any]

    def remove(self) -> None:
        for hook in self.hooks:
            hook.remove()
        self.hooks.clear()


def apply_stage(model, stage: Any, first_new_token_id: int | None = None, fresh: bool = True) -> AppliedStage:
    """Sets `requires_grad` for `stage` and registers the row mask of the FO1 token embeddings.

    `first_new_token_id` (the lowest FO1 token id; `vlmfo1.training.tiny.first_fo1_token_id`) is
    needed when the stage trains `new_token_rows`. `fresh` (the model was not loaded from a
    checkpoint of this stage) allows `init_new_token_rows`.
    """
    spec = stage_spec(stage)
    model.requires_grad_(False)
    groups = group_modules(model)
    for name in spec.train:
        for module in groups[name]:
            module.requires_grad_(True)
    masked: list[nn.Parameter] = []
    hooks = []
    if spec.new_token_rows and "llm" not in spec.train:
        if first_new_token_id is None:
            raise ValueError(f"stage {spec.name!r} trains the FO1 token rows: pass first_new_token_id")
        matrices = [model.get_input_embeddings().weight]
        if not _is_tied(model):
            matrices.append(model.vlm.lm_head.weight)
        for weight in matrices:
            if first_new_token_id >= weight.shape[0]:
                raise ValueError(f"first_new_token_id {first_new_token_id} is past the {weight.shape[0]} embedding rows")
            if fresh and spec.init_new_token_rows == "mean":
                with torch.no_grad():
                    weight[first_new_token_id:] = weight[:first_new_token_id].mean(0)
            weight.requires_grad_(True)
            hooks.append(weight.register_hook(_row_mask_hook(first_new_token_id)))
            masked.append(weight)
    return AppliedStage(spec, first_new_token_id, masked, hooks)


def _row_mask_hook(first_new_token_id: int):
    def mask_rows(grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        grad[:first_new_token_id] = 0
        return grad

    return mask_rows


def trainable_summary(model) -> dict[str, dict[str, int]]:
    """Per group: total and trainable parameter counts (a masked matrix counts as trainable)."""
    groups = group_of_parameters(model)
    summary = {group: {"total": 0, "trainable": 0} for group in GROUPS}
    for name, parameter in model.named_parameters():
        entry = summary[groups[name]]
        entry["total"] += parameter.numel()
        entry["trainable"] += parameter.numel() if parameter.requires_grad else 0
    return summary


def optimizer_groups(model, base_lr: float, weight_decay: float, decaying: set[int],
                     learning_rates: dict[str, float]) -> list[dict[str, Any]]:
    """AdamW parameter groups of the trainable parameters: one per (learning rate, decay) pair.
    `decaying` holds the `id` of each parameter that decays; `learning_rates` overrides `base_lr`
    per group (`GROUPS`)."""
    groups = group_of_parameters(model)
    buckets: dict[tuple[float, float], list[nn.Parameter]] = {}
    seen: set[int] = set()
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad or id(parameter) in seen:
            continue
        seen.add(id(parameter))
        lr = learning_rates.get(groups[name], base_lr)
        buckets.setdefault((lr, weight_decay if id(parameter) in decaying else 0.0), []).append(parameter)
    return [{"params": params, "lr": lr, "weight_decay": decay} for (lr, decay), params in buckets.items()]


def apply_lora(model, lora: dict[str, Any], extra_trainable: list[str]):
    """Wraps `model` with peft LoRA adapters on the LLM's linear layers. The other trained groups
    (`extra_trainable` module names, e.g. aux_encoder, region_encoder) train fully and are saved
    with the adapter (peft `modules_to_save`)."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as error:  # pragma: no cover - depends on the installed extras
        raise ImportError("LoRA needs peft: pip install 'vlmfo1[train]'") from error
    settings = dict(lora)
    targets = settings.pop("target_modules", ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    pattern = r".*language_model.*\.(" + "|".join(targets) + r")$"
    config = LoraConfig(
        r=settings.pop("r", 16),
        lora_alpha=settings.pop("lora_alpha", 32),
        lora_dropout=settings.pop("lora_dropout", 0.05),
        target_modules=pattern,
        modules_to_save=list(extra_trainable) or None,
        **settings,
    )
    return get_peft_model(model, config)
