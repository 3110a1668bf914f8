"""transformers detectors as proposers, offline: tiny random-initialised models built here, saved
with their processors, loaded back through ``NAME:PATH`` specs (the real ``from_pretrained`` path).

Random weights say nothing about detection quality, so each test runs the real forward pass
and then overrides the outputs that matter with known values: this checks the plumbing
(inputs the model receives, box frames, scores, labels, thresholds) exactly.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

transformers = pytest.importorskip("transformers")

from vlmfo1.proposals import build_proposer  # noqa: E402
from vlmfo1.proposals.sam3 import adaptive_threshold  # noqa: E402

LETTERS = "abcdefghijklmnopqrstuvwxyz"
BERT_WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "object", "red", "circle", "blue", "square"]


def clip_tokenizer(**kwargs):
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for piece in [*LETTERS, *(c + "</w>" for c in LETTERS), ".</w>", ",</w>"]:
        vocab[piece] = len(vocab)
    return transformers.CLIPTokenizer(vocab=vocab, merges=[], **kwargs)


def bert_tokenizer():
    return transformers.BertTokenizer(vocab={word: i for i, word in enumerate(BERT_WORDS)})


def swin(image_size):
    return {"embed_dim": 8, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1), "window_size": 7,
            "image_size": image_size, "out_indices": (2, 3, 4), "model_type": "swin"}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Folder per detector: tiny random model + processor/tokenizer, as from_pretrained expects."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("tiny_detectors")
    folders = {}

    omdet = transformers.OmDetTurboConfig(
        text_config={"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 16,
                     "max_position_embeddings": 77, "model_type": "clip_text_model", "vocab_size": 60},
        backbone_config=swin(64), use_timm_backbone=False, apply_layernorm_after_vision_backbone=False,
        image_size=64, encoder_in_channels=(16, 32, 64), num_queries=12, encoder_layers=1, decoder_num_layers=1,
        encoder_projection_indices=[2], encoder_attention_heads=2, decoder_num_heads=2, decoder_num_points=4,
        num_feature_levels=3, encoder_dim_feedforward=32, task_encoder_hidden_dim=32, decoder_dim_feedforward=32,
        class_embed_dim=16, text_projection_in_dim=16, text_projection_out_dim=16, encoder_hidden_dim=8,
        decoder_hidden_dim=8, vision_features_channels=[8, 8, 8],
    )
    folders["omdet"] = root / "omdet"
    transformers.OmDetTurboForObjectDetection(omdet).save_pretrained(folders["omdet"])
    transformers.DetrImageProcessorPil(size={"height": 64, "width": 64}, do_pad=False).save_pretrained(folders["omdet"])
    clip_tokenizer().save_pretrained(folders["omdet"])

    gdino = transformers.GroundingDinoConfig(
        d_model=32, encoder_layers=1, decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=16, decoder_ffn_dim=16, num_queries=10, num_feature_levels=4, encoder_n_points=2,
        decoder_n_points=2, use_timm_backbone=False, backbone_config=transformers.SwinConfig(**{k: v for k, v in swin(64).items() if k != "model_type"}),
        max_text_len=16, text_config={"hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 8,
                                      "max_position_embeddings": 32, "model_type": "bert", "vocab_size": len(BERT_WORDS)},
    )
    folders["grounding-dino"] = root / "gdino"
    transformers.GroundingDinoForObjectDetection(gdino).save_pretrained(folders["grounding-dino"])
    transformers.GroundingDinoProcessor(
        image_processor=transformers.GroundingDinoImageProcessorPil(size={"shortest_edge": 64, "longest_edge": 96}),
        tokenizer=bert_tokenizer(),
    ).save_pretrained(folders["grounding-dino"])

    owl = transformers.Owlv2Config(
        text_config={"vocab_size": 60, "hidden_size": 16, "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "max_position_embeddings": 16},
        vision_config={"hidden_size": 16, "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
        projection_dim=16,
    )
    folders["owlv2"] = root / "owlv2"
    transformers.Owlv2ForObjectDetection(owl).save_pretrained(folders["owlv2"])
    transformers.Owlv2Processor(
        image_processor=transformers.Owlv2ImageProcessorPil(size={"height": 32, "width": 32}),
        tokenizer=clip_tokenizer(model_max_length=16),  # OWLv2 pads prompts to the tokenizer's length
    ).save_pretrained(folders["owlv2"])

    detr = transformers.DetrConfig(
        use_timm_backbone=False,
        backbone_config=transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 8, 16, 16], depths=[1, 1, 1, 1], out_features=["stage4"]),
        d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=16, decoder_ffn_dim=16, num_queries=10, num_labels=3,
        id2label={0: "cat", 1: "dog", 2: "car"}, label2id={"cat": 0, "dog": 1, "car": 2},
    )
    folders["detr"] = root / "detr"
    transformers.DetrForObjectDetection(detr).save_pretrained(folders["detr"])
    transformers.DetrImageProcessorPil(size={"shortest_edge": 64, "longest_edge": 96}).save_pretrained(folders["detr"])

    sam3 = transformers.Sam3Config(
        vision_config=dict(
            backbone_config=dict(model_type="sam3_vit_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=2, image_size=112, patch_size=14, window_size=4, global_attn_indexes=[1],
                                 pretrain_image_size=56),
            fpn_hidden_size=32, backbone_feature_sizes=[[32, 32], [16, 16], [8, 8]],
        ),
        text_config=dict(vocab_size=60, hidden_size=32, intermediate_size=64, projection_dim=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=32, bos_token_id=0, eos_token_id=1, pad_token_id=1),
        geometry_encoder_config=dict(hidden_size=32, num_layers=1, num_attention_heads=2, intermediate_size=64),
        detr_encoder_config=dict(hidden_size=32, num_layers=1, num_attention_heads=2, intermediate_size=64),
        detr_decoder_config=dict(hidden_size=32, num_layers=1, num_queries=20, num_attention_heads=2, intermediate_size=64),
        mask_decoder_config=dict(hidden_size=32, num_upsampling_stages=2, num_attention_heads=2),
    )
    folders["sam3"] = root / "sam3"
    transformers.Sam3Model(sam3).save_pretrained(folders["sam3"])
    clip_tokenizer().save_pretrained(folders["sam3"])
    # Written by hand: instantiating Sam3ImageProcessor needs torchvision.
    (folders["sam3"] / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "Sam3ImageProcessor", "size": {"height": 112, "width": 112},
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "rescale_factor": 1 / 255,
    }))
    return folders


def noise_image(width=120, height=50, seed=0):
    return Image.fromarray((np.random.default_rng(seed).random((height, width, 3)) * 255).astype(np.uint8))


def override_outputs(proposer, **values):
    """Run the real forward, then replace output fields by `values(inputs, outputs)` results."""
    real_forward = proposer.model.forward
    received = {}

    def forward(*args, **kwargs):
        received.update(kwargs)
        outputs = real_forward(*args, **kwargs)
        for key, make in values.items():
            reference = getattr(outputs, key)
            setattr(outputs, key, make(reference).to(reference.dtype) if callable(make) else make)
        return outputs

    proposer.model.forward = forward
    return received


def logit(p):
    return float(np.log(p / (1 - p)))


# ---------------------------------------------------------------- OmDet-Turbo


def test_omdet_turbo_plumbing(saved):
    proposer = build_proposer(f"omdet:{saved['omdet']}", prompts=["red circle", "blue square"], postprocess={"nms_iou": None})

    def boxes(ref):
        out = torch.full_like(ref, 0.1)
        out[0, 0] = torch.tensor([0.5, 0.5, 0.2, 0.4])  # cx, cy, w, h of the image
        out[0, 1] = torch.tensor([0.25, 0.75, 0.1, 0.1])
        return out

    def classes(ref):
        out = torch.full_like(ref, -10.0)
        out[0, 0, 1] = logit(0.9)  # query 0 -> "blue square"
        out[0, 1, 0] = logit(0.6)  # query 1 -> "red circle"
        return out

    received = override_outputs(proposer, decoder_coord_logits=boxes, decoder_class_logits=classes)
    out = proposer(noise_image(200, 100))
    assert received["classes_structure"].tolist() == [2]
    assert received["classes_input_ids"].shape == (2, 77) and received["tasks_input_ids"].shape == (1, 77)
    assert received["pixel_values"].shape == (1, 3, 64, 64)
    assert out.boxes[0].tolist() == pytest.approx([80, 30, 120, 70], abs=1e-3)  # 200x100 pixels
    assert out.boxes[1].tolist() == pytest.approx([40, 70, 60, 80], abs=1e-3)
    assert out.scores[:2].tolist() == pytest.approx([0.9, 0.6], abs=1e-5)
    assert out.labels[:2] == ["blue square", "red circle"]
    thresholded = build_proposer(f"omdet:{saved['omdet']}", prompts=["red circle", "blue square"], postprocess={"score_threshold": 0.5})
    override_outputs(thresholded, decoder_coord_logits=boxes, decoder_class_logits=classes)
    assert thresholded(noise_image(200, 100)).labels == ["blue square", "red circle"]


def test_prompts_per_call_override_and_default(saved):
    proposer = build_proposer(f"omdet:{saved['omdet']}")
    received = override_outputs(proposer)
    out = proposer(noise_image(), prompts=["a", "b", "c"])
    assert received["classes_structure"].tolist() == [3] and set(out.labels) <= {"a", "b", "c"}
    out = proposer(noise_image())
    assert received["classes_structure"].tolist() == [1] and set(out.labels) == {"object"}
    with pytest.raises(ValueError, match="empty"):
        proposer(noise_image(), prompts=["  "])


# ---------------------------------------------------------------- Grounding DINO


def test_grounding_dino_plumbing(saved):
    proposer = build_proposer(f"grounding-dino:{saved['grounding-dino']}", prompts=["red circle", "blue square"], postprocess={"nms_iou": None})
    tokenizer = proposer.processor.tokenizer
    caption_ids = tokenizer(proposer.caption(["red circle", "blue square"]))["input_ids"]
    square_token = caption_ids.index(tokenizer.convert_tokens_to_ids("square"))
    red_token = caption_ids.index(tokenizer.convert_tokens_to_ids("red"))
    sep_token = caption_ids.index(tokenizer.sep_token_id)

    def logits(ref):
        out = torch.full_like(ref, -10.0)
        out[0, 0, square_token] = logit(0.8)
        out[0, 1, red_token] = logit(0.7)
        out[0, 2, sep_token] = logit(0.99)  # special tokens never score
        return out

    def boxes(ref):
        out = torch.full_like(ref, 0.05)
        out[0, 0] = torch.tensor([0.5, 0.5, 0.5, 0.5])
        return out

    override_outputs(proposer, logits=logits, pred_boxes=boxes)
    out = proposer(noise_image(160, 80))
    assert proposer.caption(["Red circle.", "blue square"]) == "red circle. blue square."
    assert out.labels[:2] == ["blue square", "red circle"]
    assert out.scores[:2].tolist() == pytest.approx([0.8, 0.7], abs=1e-5)
    assert out.scores[2] < 0.01
    assert out.boxes[0].tolist() == pytest.approx([40, 20, 120, 60], abs=1e-3)


# ---------------------------------------------------------------- OWLv2


@pytest.mark.parametrize("score", ["objectness", "prompt"])
def test_owlv2_plumbing(saved, score):
    proposer = build_proposer(f"owlv2:{saved['owlv2']}", prompts=["red circle", "blue square"], score=score, postprocess={"nms_iou": None})

    def boxes(ref):
        out = torch.full_like(ref, 0.05)
        out[0, 0] = torch.tensor([0.5, 0.25, 0.2, 0.1])
        return out

    def prompt_logits(ref):
        out = torch.full_like(ref, -10.0)
        out[0, 0, 1] = logit(0.4)
        return out

    def objectness(ref):
        out = torch.full_like(ref, -10.0)
        out[0, 0] = logit(0.95)
        return out

    override_outputs(proposer, pred_boxes=boxes, logits=prompt_logits, objectness_logits=objectness)
    out = proposer(noise_image(200, 100))
    # OWLv2 pads to a 200x200 square: normalised boxes are fractions of 200 on both axes.
    assert out.boxes[0].tolist() == pytest.approx([80, 40, 120, 60], abs=1e-3)
    assert out.scores[0].item() == pytest.approx(0.95 if score == "objectness" else 0.4, abs=1e-5)
    assert out.labels[0] == "blue square"
    with pytest.raises(ValueError, match="score"):
        build_proposer(f"owlv2:{saved['owlv2']}", score="best")


# ---------------------------------------------------------------- DETR family


def test_detr_family_plumbing(saved):
    proposer = build_proposer(f"detr:{saved['detr']}", postprocess={"nms_iou": None})

    def logits(ref):  # 3 classes + no-object
        out = torch.full_like(ref, -5.0)
        out[0, :, 3] = 5.0  # every query is "no object" ...
        out[0, 0, 2] = 5.0 + float(np.log(3.0))  # ... except query 0: car with softmax 0.75
        return out

    def boxes(ref):
        out = torch.full_like(ref, 0.1)
        out[0, 0] = torch.tensor([0.5, 0.5, 0.5, 0.5])
        return out

    override_outputs(proposer, logits=logits, pred_boxes=boxes)
    out = proposer(noise_image(160, 80))
    assert out.labels[0] == "car"
    assert out.scores[0].item() == pytest.approx(0.75, abs=1e-3)
    assert out.boxes[0].tolist() == pytest.approx([40, 20, 120, 60], abs=1e-3)
    with pytest.raises(ValueError, match="not text-prompted"):
        proposer(noise_image(), prompts=["cat"])
    with pytest.raises(ValueError, match="not text-prompted"):
        build_proposer(f"detr:{saved['detr']}", prompts=["cat"])


# ---------------------------------------------------------------- SAM3


def test_sam3_adaptive_threshold_rule():
    assert adaptive_threshold(torch.tensor([0.8, 0.31, 0.3, 0.1])).tolist() == [True, True, False, False]
    assert adaptive_threshold(torch.tensor([0.75, 0.31, 0.06, 0.05])).tolist() == [True, True, True, False]
    assert adaptive_threshold(torch.tensor([])).tolist() == []


def sam3_outputs(query_scores, presence=0.999):
    def logits(ref):
        out = torch.full_like(ref, -20.0)
        out[0, : len(query_scores)] = torch.tensor([logit(s / presence) for s in query_scores])
        return out

    def boxes(ref):
        out = torch.zeros_like(ref)
        out[0, :, 2:] = 0.05
        out[0, 0] = torch.tensor([0.25, 0.5, 0.75, 1.0])  # normalised xyxy
        return out

    def masks(ref):
        out = torch.full_like(ref, -10.0)
        height, width = ref.shape[-2:]
        out[0, 0, height // 2 :, width // 4 : 3 * width // 4] = 10.0
        return out

    return {"pred_logits": logits, "pred_boxes": boxes, "pred_masks": masks,
            "presence_logits": lambda ref: torch.full_like(ref, logit(presence))}


def test_sam3_confident_prompt_keeps_scores_above_0_3(saved):
    proposer = build_proposer(f"sam3:{saved['sam3']}", prompts=["red circle"])
    override_outputs(proposer, **sam3_outputs([0.9, 0.5, 0.31, 0.29, 0.1]))
    out = proposer(noise_image(200, 100))
    assert out.scores.tolist() == pytest.approx([0.9, 0.5, 0.31], abs=1e-4)
    assert out.labels == ["red circle"] * 3
    assert out.boxes[0].tolist() == pytest.approx([50, 50, 150, 100], abs=1e-3)
    assert out.masks.shape == (3, 100, 200)
    # Mask 0 covers the lower half, middle half of the width.
    assert out.masks[0, 75, 100] and not out.masks[0, 25, 100] and not out.masks[0, 75, 10]


def test_sam3_weak_prompt_keeps_scores_above_0_05_and_merges_prompts(saved):
    proposer = build_proposer(f"sam3:{saved['sam3']}", return_masks=False)
    override_outputs(proposer, **sam3_outputs([0.6, 0.2, 0.06, 0.04]))
    out = proposer(noise_image(200, 100), prompts=["cat", "dog"])
    assert out.masks is None
    assert sorted(out.scores.tolist(), reverse=True) == pytest.approx([0.6, 0.6, 0.2, 0.2, 0.06, 0.06], abs=1e-4)
    assert sorted(set(out.labels)) == ["cat", "dog"]


def test_sam3_real_forward_runs(saved):
    out = build_proposer(f"sam3:{saved['sam3']}")(noise_image(90, 70))
    assert out.masks is not None and out.masks.shape[1:] == (70, 90) and len(out.masks) == len(out)


def test_real_forward_of_every_detector_gives_valid_proposals(saved):
    for spec in ["omdet", "grounding-dino", "owlv2", "detr"]:
        out = build_proposer(f"{spec}:{saved[spec]}")(noise_image(130, 70))
        assert 0 < len(out) <= 100
        assert torch.all(out.boxes[:, 0] >= 0) and torch.all(out.boxes[:, 2] <= 130) and torch.all(out.boxes[:, 3] <= 70)
        assert torch.all(out.scores[:-1] >= out.scores[1:]) and len(out.labels) == len(out)


def test_missing_weights_folder_fails_clearly(tmp_path):
    with pytest.raises(OSError):
        build_proposer(f"detr:{tmp_path / 'nothing-here'}")
