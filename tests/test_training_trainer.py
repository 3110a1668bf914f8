"""The trainer: overfitting to exact answers, resume after interruption, configs, CLI, model factories."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration, TrainerCallback
from typer.testing import CliRunner

from vlmfo1.data.records import read_records
from vlmfo1.data.shapeworld import ShapeWorldConfig, write_dataset
from vlmfo1.modeling.factory import small_fo1_config
from vlmfo1.modeling.modeling_fo1 import FO1ForConditionalGeneration
from vlmfo1.processing.processing_fo1 import FO1Processor
from vlmfo1.training.recipes import generate_answers
from vlmfo1.training.tiny import first_fo1_token_id, init_tiny
from vlmfo1.training.trainer import build_from_base_vlm, resolve_config, train

ALL_GROUPS = ["vision", "image_projector", "llm", "aux_encoder", "region_encoder", "connector"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tokenizer(small_shapeworld_tokenizer):
    return small_shapeworld_tokenizer


@pytest.fixture(scope="module")
def shapeworld(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shapeworld")
    config = ShapeWorldConfig.train(objects_per_image=(2, 4), image_size=(96, 96), task_counts={
        "detection": 1, "counting": 1, "region_caption_brief": 1, "image_qa": 1})
    write_dataset(folder, n=2, seed=0, split="train", config=config, coordinates=False)
    return folder / "train.fo1.jsonl"


def tiny(tokenizer, seed=0):
    return init_tiny(None, size="tiny", tokenizer=tokenizer, max_pixels=112 * 112, aux_image_size=64, seed=seed)


def test_a_tiny_model_overfits_a_handful_of_records_to_exact_answers(tokenizer, tmp_path):
    config = ShapeWorldConfig.train(objects_per_image=(2, 4), image_size=(96, 96), task_counts={
        "detection": 1, "counting": 1, "region_caption_brief": 1, "image_qa": 1})
    write_dataset(tmp_path, n=1, seed=0, split="train", config=config, coordinates=False)
    records = list(read_records(tmp_path / "train.fo1.jsonl"))
    assert {r.task for r in records} >= {"counting", "region_caption_brief", "image_qa"}
    model, processor = tiny(tokenizer)
    untrained = generate_answers(model, processor, records, tmp_path, max_new_tokens=40)
    assert not any(untrained[r.id] == r.answer for r in records)
    result = train({
        "stage": {"name": "everything", "train": ALL_GROUPS},
        "data": {"train": [{"records": str(tmp_path / "train.fo1.jsonl")}]},
        "training": {"output_dir": str(tmp_path / "run"), "max_steps": 90, "per_device_train_batch_size": 4,
                     "learning_rate": 5e-3, "lr_scheduler_type": "constant", "save_strategy": "no",
                     "logging_steps": 10, "disable_tqdm": True},
    }, model=model, processor=processor)
    assert result.losses[-1][1] < 0.3
    answers = generate_answers(model, processor, records, tmp_path, max_new_tokens=40)
    assert {r.id: answers[r.id] for r in records} == {r.id: r.answer for r in records}


class StopAt(TrainerCallback):
    """Ends training right after step `step` (its checkpoint is written first): an interruption."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_save = True
            control.should_training_stop = True


def resume_config(records, output_dir):
    return {
        "stage": 1,
        "data": {"train": [{"records": str(records)}], "shuffle_regions": True},
        "training": {"output_dir": str(output_dir), "max_steps": 6, "per_device_train_batch_size": 2,
                     "learning_rate": 1e-2, "save_steps": 3, "logging_steps": 1, "disable_tqdm": True,
                     "lr_scheduler_type": "cosine", "warmup_steps": 2, "seed": 3},
    }


def test_resume_after_interruption_reproduces_the_loss_sequence(tokenizer, shapeworld, tmp_path):
    model, processor = tiny(tokenizer)
    straight = train(resume_config(shapeworld, tmp_path / "straight"), model=model, processor=processor)
    assert [step for step, _ in straight.losses] == [1, 2, 3, 4, 5, 6]

    model, processor = tiny(tokenizer)
    cut = train(resume_config(shapeworld, tmp_path / "cut"), model=model, processor=processor, callbacks=[StopAt(3)])
    assert cut.global_step == 3 and (tmp_path / "cut" / "checkpoint-3").is_dir()
    # A new process would build the model afresh (another seed even): the checkpoint decides.
    model, processor = tiny(tokenizer, seed=1)
    resumed = train(resume_config(shapeworld, tmp_path / "cut"), model=model, processor=processor, resume="auto")
    assert resumed.global_step == 6
    assert cut.losses + resumed.losses == straight.losses  # bit-identical floats, steps 1..6
    a = FO1ForConditionalGeneration.from_pretrained(str(tmp_path / "straight"))
    b = FO1ForConditionalGeneration.from_pretrained(str(tmp_path / "cut"))
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q), name


@pytest.mark.slow
def test_cli_training_killed_mid_run_resumes_to_the_same_losses(tokenizer, shapeworld, tmp_path):
    model, processor = tiny(tokenizer)
    model.save_pretrained(tmp_path / "init")
    processor.save_pretrained(tmp_path / "init")
    config = resume_config(shapeworld, "unused")
    config["model"] = {"init_from": str(tmp_path / "init")}
    config["training"].update(max_steps=12, save_steps=2)
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "vlmfo1.cli.main", "train", "--config", str(tmp_path / "run.yaml")]
    environment = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    subprocess.run(command + ["--output-dir", str(tmp_path / "straight")], check=True, env=environment,
                   capture_output=True)
    killed = subprocess.Popen(command + ["--output-dir", str(tmp_path / "killed")], env=environment,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (tmp_path / "killed" / "checkpoint-4" / "trainer_state.json").exists():
        assert time.time() < deadline and killed.poll() is None, "training ended before it could be killed"
        time.sleep(0.2)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert not (tmp_path / "killed" / "model.safetensors").exists()
    subprocess.run(command + ["--output-dir", str(tmp_path / "killed")], check=True, env=environment,
                   capture_output=True)

    def losses(folder):
        state = json.loads((folder / "checkpoint-12" / "trainer_state.json").read_text())
        return [(entry["step"], entry["loss"]) for entry in state["log_history"] if "loss" in entry]

    assert losses(tmp_path / "killed") == losses(tmp_path / "straight")
    assert len(losses(tmp_path / "straight")) == 12


def test_presets_configs_and_overrides_merge(tmp_path):
    user = tmp_path / "mine.yaml"
    user.write_text(yaml.safe_dump({"data": {"train": [{"records": "r.jsonl"}]}, "training": {"learning_rate": 2e-5}}))
    config = resolve_config(user, stage=2, overrides=["training.max_steps=7", "data.iou_threshold=0.6"])
    assert config["stage"]["train"] == ["aux_encoder", "region_encoder", "connector", "llm"]
    assert config["training"]["learning_rate"] == 2e-5 and config["training"]["max_steps"] == 7
    assert config["training"]["per_device_train_batch_size"] == 4  # from the preset
    assert config["data"]["iou_threshold"] == 0.6 and config["data"]["train"] == [{"records": str(tmp_path / "r.jsonl")}]
    assert resolve_config(None, stage=1)["training"]["learning_rate"] == 1e-3
    assert resolve_config(None, stage=2)["training"]["learning_rate"] == 1e-5
    with pytest.raises(ValueError, match="unknown section"):
        resolve_config(user, overrides=["optimizer.lr=1"])
    (tmp_path / "bad.yaml").write_text("stage: 1\nmodle: {}\n")
    with pytest.raises(ValueError, match="modle"):
        resolve_config(tmp_path / "bad.yaml")
    with pytest.raises(ValueError, match="no stage"):
        resolve_config(user)


def test_cli_dry_run_shows_the_resolved_config(tmp_path):
    from vlmfo1.cli.main import build_app

    result = CliRunner().invoke(build_app(), ["train", "--stage", "1", "--init-from", str(tmp_path),
                                              "--set", "training.max_steps=5", "--dry-run"])
    assert result.exit_code == 0, result.output
    shown = yaml.safe_load(result.output)
    assert shown["model"]["init_from"] == str(tmp_path.resolve())
    assert shown["training"]["max_steps"] == 5 and shown["stage"]["new_token_rows"] is True
    bad = CliRunner().invoke(build_app(), ["train", "--stage", "9"])
    assert bad.exit_code == 2 and "no preset" in bad.output


def test_init_tiny_writes_a_model_that_loads_back(tmp_path):
    from vlmfo1.cli.main import build_app

    result = CliRunner().invoke(build_app(), ["init-tiny", str(tmp_path / "m"), "--size", "tiny", "--aux-image-size", "64"])
    assert result.exit_code == 0, result.output
    model = FO1ForConditionalGeneration.from_pretrained(str(tmp_path / "m"))
    processor = FO1Processor.from_pretrained(tmp_path / "m")
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "m"))
    assert len(tokenizer) == len(processor.tokenizer) < 2000
    assert tokenizer.convert_ids_to_tokens(list(range(7))) == [
        "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
    first = first_fo1_token_id(tokenizer)
    assert tokenizer.convert_ids_to_tokens(first) == "<region0>" and model.config.region_token_id == len(tokenizer) - 1
    assert model.get_input_embeddings().weight.shape[0] >= len(tokenizer)
    assert model.config.aux_image_size == processor.image_processor.aux_image_size == 64


def test_a_new_fo1_is_built_around_a_qwen2_5_vl_folder(tmp_path):
    from vlmfo1.processing.tokenization import find_qwen_tokenizer_dir

    qwen_dir = find_qwen_tokenizer_dir()
    plain = AutoTokenizer.from_pretrained(str(qwen_dir))
    vlm_config = small_fo1_config("tiny").vlm_config
    vlm_config.text_config.vocab_size = len(plain)  # smaller than tokenizer + FO1 tokens: must grow
    torch.manual_seed(0)
    base = Qwen2_5_VLForConditionalGeneration(vlm_config)
    base.save_pretrained(tmp_path / "qwen")
    plain.save_pretrained(str(tmp_path / "qwen"))
    model, processor = build_from_base_vlm(tmp_path / "qwen", aux_encoder="davit-base", aux_image_size=64)
    assert model.get_input_embeddings().weight.shape[0] >= len(processor.tokenizer) > len(plain)
    for name, value in base.state_dict().items():
        ours = model.vlm.state_dict()[name]
        if "embed_tokens" in name or "lm_head" in name:
            assert torch.equal(ours[: value.shape[0]], value), name
        else:
            assert torch.equal(ours, value), name
    assert model.config.region_token_id == processor.region_token_id
    assert model.config.aux_encoder_config.embed_dim == [128, 256, 512, 1024]


@pytest.mark.slow
def test_two_processes_on_cpu_share_the_data(tokenizer, tmp_path):
    """torchrun with 2 CPU processes (gloo): each step consumes 2 samples, one model is written."""
    config_ = ShapeWorldConfig.train(objects_per_image=(2, 3), image_size=(96, 96), task_counts={"detection": 1})
    write_dataset(tmp_path, n=4, seed=0, split="train", config=config_, coordinates=False)
    model, processor = tiny(tokenizer)
    model.save_pretrained(tmp_path / "init")
    processor.save_pretrained(tmp_path / "init")
    config = {"stage": 1, "model": {"init_from": str(tmp_path / "init")},
              "data": {"train": [{"records": str(tmp_path / "train.fo1.jsonl")}]},
              "training": {"output_dir": str(tmp_path / "out"), "max_steps": 4, "per_device_train_batch_size": 1,
                           "logging_steps": 1, "save_steps": 4, "disable_tqdm": True}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "vlmfo1.cli.main"]
    subprocess.run(torchrun + ["train", "--config", str(tmp_path / "run.yaml")], check=True, capture_output=True,
                   env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}, timeout=600)
    state = json.loads((tmp_path / "out" / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["epoch"] == 2.0  # 4 records, 2 processes x batch 1: an epoch every 2 steps
    FO1ForConditionalGeneration.from_pretrained(str(tmp_path / "out"))


def test_init_tiny_scales_only_the_fo1_rows(tokenizer):
    plain, _ = init_tiny(None, size="tiny", tokenizer=tokenizer, aux_image_size=64, seed=3)
    scaled, _ = init_tiny(None, size="tiny", tokenizer=tokenizer, aux_image_size=64, seed=3, fo1_row_scale=8.0)
    first = first_fo1_token_id(tokenizer)
    before, after = plain.get_input_embeddings().weight, scaled.get_input_embeddings().weight
    torch.testing.assert_close(after[:first], before[:first], rtol=0, atol=0)
    torch.testing.assert_close(after[first:], before[first:] * 8.0)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="fo1_row_scale"):
            init_tiny(None, size="tiny", tokenizer=tokenizer, aux_image_size=64, fo1_row_scale=bad)
