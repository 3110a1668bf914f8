"""Numerical parity with upstream VLM-FO1 on the tiny fixtures in ../shared/fixtures/upstream-tiny.

The model is loaded from the upstream-layout folder (key/config conversion), fed the stored
preprocessed tensors (and, separately, the raw image through FO1Processor), and compared stage
by stage with what upstream's own code produced. Tolerance 1e-4 as the fixture README argues.
"""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from vlmfo1 import FO1ForConditionalGeneration

ATOL = 1e-4
FIXTURES = ["simplefp", "nofpn"]


def close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    actual, expected = actual.float(), expected.float()
    assert actual.shape == expected.shape
    diff = (actual - expected).abs().max().item()
    assert torch.allclose(actual, expected, rtol=1e-4, atol=ATOL), f"max abs diff {diff}"


@pytest.fixture(scope="module", params=FIXTURES)
def fixture(request, upstream_fixture_dir):
    name = request.param
    root = upstream_fixture_dir
    manifest = json.loads((root / "manifest.json").read_text())
    model = FO1ForConditionalGeneration.from_pretrained(
        root / name / "model",
        tokenizer_path=root / "tokenizer",
        aux_encoder_config=manifest["model_construction"]["davit_config"],
        attn_implementation="eager",
    ).eval()
    boxes = json.loads((root / "inputs" / "boxes.json").read_text())["boxes_xyxy"]
    return {
        "name": name,
        "root": root,
        "model": model,
        "boxes": boxes,
        "inputs": load_file(str(root / "inputs" / "preprocessed.safetensors")),
        "vision": load_file(str(root / name / "expected" / "vision_intermediates.safetensors")),
        "region": load_file(str(root / name / "expected" / "detect_region_path.safetensors")),
        "prompts": json.loads((root / "inputs" / "prompts.json").read_text()),
    }


def normalised_boxes(boxes, width=320, height=240) -> torch.Tensor:
    b = torch.tensor(boxes, dtype=torch.float64)
    b[:, [0, 2]] = b[:, [0, 2]].clamp(0, width) / width
    b[:, [1, 3]] = b[:, [1, 3]].clamp(0, height) / height
    return b.float()


def expected_ids(outputs: dict, region_token_id: int) -> torch.Tensor:
    ids = outputs["input_ids_expanded"].clone()
    ids[ids == -300] = region_token_id
    return ids[None]


@torch.no_grad()
def test_vision_and_region_path(fixture):
    model, inputs, vision, region = fixture["model"], fixture["inputs"], fixture["vision"], fixture["region"]
    boxes = normalised_boxes(fixture["boxes"])
    image_embeds, levels = model.encode_images(inputs["primary_pixel_values"], inputs["primary_image_grid_thw"])
    for i in range(4):
        close(levels[0][i], vision[f"vit_fullatt_level{i}"])
    close(image_embeds[0], region["image_features_post_merger"])
    aux_maps = model.encode_aux(inputs["aux_pixel_values"][None])
    for i in range(4):
        close(aux_maps[0][i], vision[f"davit_stage{i}"])
    encoder = model.region_encoder
    if fixture["name"] == "simplefp":
        pyramid = encoder.simple_fp(levels[0][-1][None])
        for i in range(4):
            close(pyramid[i][0], vision[f"simplefp_level{i}"])
    aux = encoder.aux_features(aux_maps[0], boxes, model.config.aux_image_size)
    primary = encoder.primary_features(levels[0], boxes)
    close(aux, region["roi_aux_raw"])
    close(primary, region["roi_vt_raw"])
    close(encoder.fuse(aux, primary, boxes), region["region_features_pre_connector"])
    close(encoder(boxes, levels[0], aux_maps[0], model.config.aux_image_size), region["region_tokens_post_connector"])


@pytest.mark.parametrize("prompt", ["detect", "caption"])
@torch.no_grad()
def test_sequence_logits_and_greedy_tokens(fixture, prompt):
    model, inputs = fixture["model"], fixture["inputs"]
    expected = load_file(str(fixture["root"] / fixture["name"] / "expected" / f"{prompt}_outputs.safetensors"))
    ids = expected_ids(expected, model.config.region_token_id)
    model_inputs = dict(
        input_ids=ids,
        pixel_values=inputs["primary_pixel_values"],
        image_grid_thw=inputs["primary_image_grid_thw"],
        aux_pixel_values=inputs["aux_pixel_values"][None],
        region_boxes=normalised_boxes(fixture["boxes"])[None],
    )
    embeds = model.embed_inputs(
        ids, model_inputs["pixel_values"], model_inputs["image_grid_thw"], model_inputs["aux_pixel_values"],
        model_inputs["region_boxes"],
    )
    close(embeds[0], expected["inputs_embeds"])
    positions, deltas = model.get_rope_index(ids, inputs["primary_image_grid_thw"])
    assert torch.equal(positions[:, 0], expected["position_ids_mrope"])
    assert deltas.flatten().tolist() == expected["rope_deltas"].tolist()

    out = model(**model_inputs, output_hidden_states=True)
    close(out.hidden_states[-1][0], expected["final_hidden_all_positions"])
    close(out.logits[0, -1], expected["logits_last_position"])
    close(out.logits[0][:, expected["logits_subset_ids"]], expected["logits_subset_all_positions"])

    generated = model.generate(
        **model_inputs, attention_mask=torch.ones_like(ids), max_new_tokens=16, do_sample=False
    )
    assert generated[0, ids.shape[1]:].tolist() == expected["generated_ids"].tolist()


@torch.no_grad()
def test_processor_reproduces_upstream_prompt_and_outputs(fixture):
    """Raw image + boxes + task text through FO1Processor give upstream's ids and greedy tokens."""
    from PIL import Image

    from vlmfo1 import FO1Processor

    root, model = fixture["root"], fixture["model"]
    processor = FO1Processor.from_pretrained(root / fixture["name"] / "model", tokenizer_path=root / "tokenizer")
    prompt = fixture["prompts"]["detect"]
    expected = load_file(str(root / fixture["name"] / "expected" / "detect_outputs.safetensors"))
    image = Image.open(root / "inputs" / "test_image.png")
    inputs = processor(images=image, boxes=fixture["boxes"], text=prompt["task_text"])
    assert torch.equal(inputs["input_ids"], expected_ids(expected, model.config.region_token_id))
    close(inputs["pixel_values"], fixture["inputs"]["primary_pixel_values"])
    close(inputs["aux_pixel_values"][0], fixture["inputs"]["aux_pixel_values"])
    generated = model.generate(**inputs, max_new_tokens=16, do_sample=False)
    assert generated[0, inputs["input_ids"].shape[1]:].tolist() == expected["generated_ids"].tolist()
    # The rendered prompt is upstream's, with the image and region placeholders expanded.
    rendered = processor.tokenizer.decode(inputs["input_ids"][0])
    upstream = prompt["prompt"].replace("<image>", "<|image_pad|>" * 99)
    assert rendered == upstream


def test_checkpoint_round_trip_is_bit_exact(fixture, tmp_path):
    model = fixture["model"]
    model.save_pretrained(tmp_path)
    reloaded = FO1ForConditionalGeneration.from_pretrained(tmp_path).eval()
    settings = lambda config: {k: v for k, v in config.to_dict().items() if k != "_name_or_path"}  # noqa: E731
    assert settings(reloaded.config) == settings(model.config)
    original, loaded = model.state_dict(), reloaded.state_dict()
    assert original.keys() == loaded.keys()
    for key in original:
        assert torch.equal(original[key], loaded[key]), key
