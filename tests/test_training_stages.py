"""Stage presets: what trains, and what provably does not change (hashes before/after real Trainer steps)."""
from __future__ import annotations

import hashlib

import pytest
import torch

from vlmfo1.data.shapeworld import ShapeWorldConfig, write_dataset
from vlmfo1.modeling.modeling_fo1 import FO1ForConditionalGeneration
from vlmfo1.training.stages import GROUPS, StageSpec, apply_stage, group_of_parameters, stage_spec
from vlmfo1.training.tiny import first_fo1_token_id, init_tiny
from vlmfo1.training.trainer import train


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tokenizer(small_shapeworld_tokenizer):
    return small_shapeworld_tokenizer


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shapeworld")
    config = ShapeWorldConfig.train(objects_per_image=(2, 4), image_size=(96, 96),
                                    task_counts={"detection": 1, "counting": 1, "region_caption_brief": 1})
    write_dataset(folder, n=4, seed=0, split="train", config=config, coordinates=False)
    return folder / "train.fo1.jsonl"


def make_model(tokenizer, **overrides):
    return init_tiny(None, size="tiny", tokenizer=tokenizer, max_pixels=112 * 112, aux_image_size=64, **overrides)


def digest(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.detach().contiguous().float().numpy().tobytes()).hexdigest()


def snapshot(model) -> dict[str, str]:
    return {name: digest(p) for name, p in model.named_parameters()}


def run_stage(model, processor, records, tmp_path, stage, steps=3, **training):
    config = {
        "stage": stage,
        "data": {"train": [{"records": str(records)}], "shuffle_regions": True},
        "training": {"output_dir": str(tmp_path / "run"), "max_steps": steps, "per_device_train_batch_size": 2,
                     "learning_rate": 1e-2, "weight_decay": 0.1, "save_strategy": "no", "report_to": "none",
                     "lr_scheduler_type": "constant", "disable_tqdm": True, **training},
    }
    return train(config, model=model, processor=processor)


@pytest.mark.parametrize("tied, checkpointing", [(True, False), (False, True)])
def test_stage1_changes_only_the_new_token_rows_and_the_region_encoder(tokenizer, records, tmp_path, tied, checkpointing):
    model, processor = make_model(tokenizer, tie_word_embeddings=tied)
    first_new = first_fo1_token_id(processor.tokenizer)
    embed = model.get_input_embeddings().weight
    head = model.vlm.lm_head.weight
    assert (head is embed) == tied
    before = snapshot(model)
    rows_before = [digest(row) for row in embed[:first_new]]
    head_rows_before = [digest(row) for row in head[:first_new]]
    new_rows_before = embed[first_new:].detach().clone()
    new_head_before = head[first_new:].detach().clone()

    run_stage(model, processor, records, tmp_path, stage=1, gradient_checkpointing=checkpointing)

    after = snapshot(model)
    groups = group_of_parameters(model)
    embedding_names = {n for n, p in model.named_parameters() if p is embed or p is head}
    for name, group in groups.items():
        if name in embedding_names:
            continue
        if group in ("vision", "image_projector", "llm", "aux_encoder"):
            assert after[name] == before[name], f"stage 1 changed base-VLM parameter {name}"
        else:
            assert after[name] != before[name], f"stage 1 did not train {name}"
    assert [digest(row) for row in embed[:first_new]] == rows_before
    assert [digest(row) for row in head[:first_new]] == head_rows_before
    # The FO1 rows started from the mean of the original rows (init_new_token_rows: mean), then trained.
    assert not torch.equal(embed[first_new:], new_rows_before)
    assert not torch.equal(head[first_new:], new_head_before)


def test_stage2_never_changes_the_primary_vit(tokenizer, records, tmp_path):
    model, processor = make_model(tokenizer)
    before = snapshot(model)
    run_stage(model, processor, records, tmp_path, stage=2)
    after = snapshot(model)
    changed = {group: [] for group in GROUPS}
    for name, group in group_of_parameters(model).items():
        changed[group].append(after[name] != before[name])
    assert changed["vision"] and not any(changed["vision"])
    for group in ("llm", "aux_encoder", "region_encoder", "connector"):
        assert all(changed[group]), group


def test_stage2_with_lora_trains_adapters_and_saves_a_merged_model(tokenizer, records, tmp_path):
    model, processor = make_model(tokenizer)
    vit_before = {n: digest(p) for n, p in model.visual.named_parameters()}
    q_before = model.language_model.layers[0].self_attn.q_proj.weight.detach().clone()
    region_before = model.region_encoder.connector[0].weight.detach().clone()
    lora = {"name": "lora", "train": ["aux_encoder", "region_encoder", "connector", "llm"],
            "lora": {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0}}
    result = run_stage(model, processor, records, tmp_path, stage=lora, steps=4)
    assert (result.output_dir / "adapter" / "adapter_config.json").exists()
    merged = FO1ForConditionalGeneration.from_pretrained(str(result.output_dir))
    assert {n: digest(p) for n, p in merged.visual.named_parameters()} == vit_before
    assert not torch.equal(merged.language_model.layers[0].self_attn.q_proj.weight, q_before)
    assert not torch.equal(merged.region_encoder.connector[0].weight, region_before)


@pytest.mark.parametrize("lora", [None, {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0}])
def test_a_group_learning_rate_sets_how_far_that_group_moves(tokenizer, records, tmp_path, lora):
    # One Adam step moves each weight by about the learning rate (m / sqrt(v) = +-1 at step 1), so
    # the largest change of a group's weights reads back the learning rate it trained with.
    model, processor = make_model(tokenizer)
    connector = model.region_encoder.connector[0].weight.detach().clone()
    aux = model.aux_encoder.convs[0].conv.weight.detach().clone()
    stage = {"name": "stage2", "train": ["aux_encoder", "region_encoder", "connector", "llm"],
             "learning_rates": {"connector": 1e-4}, "lora": lora}
    result = run_stage(model, processor, records, tmp_path, stage=stage, steps=1, weight_decay=0.0)
    trained = FO1ForConditionalGeneration.from_pretrained(str(result.output_dir))
    connector_step = (trained.region_encoder.connector[0].weight - connector).abs().max().item()
    aux_step = (trained.aux_encoder.convs[0].conv.weight - aux).abs().max().item()
    assert 0.5e-4 < connector_step < 1.5e-4
    assert 0.5e-2 < aux_step < 1.5e-2  # the run's learning_rate, 1e-2
    assert StageSpec.from_dict(stage).to_dict()["learning_rates"] == {"connector": 1e-4}


def test_every_parameter_belongs_to_a_group(tokenizer):
    for overrides in ({}, {"use_aux_features": False}, {"use_simple_fp": False}):
        model, _ = make_model(tokenizer, **overrides)
        groups = group_of_parameters(model)
        assert len(groups) == len(list(model.named_parameters()))


def test_stage_specs_are_checked():
    assert stage_spec(1).train == ["region_encoder", "connector"] and stage_spec("stage1").new_token_rows
    assert "vision" not in stage_spec(2).train
    with pytest.raises(ValueError, match="unknown parameter group"):
        StageSpec(train=["vit"])
    with pytest.raises(ValueError, match="LoRA"):
        StageSpec(train=["region_encoder"], lora={"r": 4})
    with pytest.raises(ValueError, match="unknown stage"):
        stage_spec(7)
    with pytest.raises(ValueError, match="does not train"):
        StageSpec(train=["llm"], learning_rates={"connector": 1e-4})
    with pytest.raises(ValueError, match="positive"):
        StageSpec(train=["connector"], learning_rates={"connector": -1.0})
    assert StageSpec.from_dict({"train": ["connector"], "learning_rates": {"connector": "1e-4"}}).learning_rates == {"connector": 1e-4}


def test_stage1_needs_to_know_where_the_new_rows_start(tokenizer):
    model, _ = make_model(tokenizer)
    with pytest.raises(ValueError, match="first_new_token_id"):
        apply_stage(model, 1)
