"""Tiny FO1 models for the pipeline and CLI tests.

`random_model`: a random tiny FO1 (answers are noise, but every code path runs for real).
`scripted_model`: a tiny FO1 whose weights are set so that greedy decoding writes a chosen answer
whatever the prompt, with a chosen probability for the region tokens. It is an ordinary
FO1ForConditionalGeneration (saved and loaded like any checkpoint): every decoder layer's output
projections are zero, so the last hidden state is the current token's embedding, and the
embeddings and the (untied) output matrix chain the answer's tokens, each predicting the next.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from vlmfo1 import FO1ForConditionalGeneration, FO1Processor
from vlmfo1.modeling.factory import small_fo1_config
from vlmfo1.processing.image_processing import FO1ImageProcessor
from vlmfo1.processing.tokenization import find_qwen_tokenizer_dir, load_fo1_tokenizer

ANSWER = "<ground>red circle</ground><objects><region1><region3></objects>"
NEXT_TOKEN_LOGIT = 20.0  # far above the ~0 logits of the other 151k tokens: probability ~1


def make_processor() -> FO1Processor:
    image_processor = FO1ImageProcessor(min_pixels=56 * 56, max_pixels=112 * 112, aux_image_size=64)
    return FO1Processor(image_processor, load_fo1_tokenizer(find_qwen_tokenizer_dir()))


def random_model(processor: FO1Processor, seed: int = 0) -> FO1ForConditionalGeneration:
    torch.manual_seed(seed)
    config = small_fo1_config("tiny", tokenizer=processor.tokenizer, aux_image_size=64)
    # Larger than the default 0.02, so that a random model's answers depend on its inputs.
    config.vlm_config.text_config.initializer_range = 0.3
    return FO1ForConditionalGeneration(config).eval()


def scripted_model(
    processor: FO1Processor, answer: str = ANSWER, region_runner_up: dict[str, float] | None = None
) -> FO1ForConditionalGeneration:
    """A model that answers `answer` to any prompt.

    `region_runner_up` maps a token of the answer (e.g. "<region1>") to a gap g: another region
    token then gets a logit only g below it at that step, so the model emits the token with
    probability about 1 / (1 + e^-g) instead of ~1 (what the LLM score should measure).
    """
    tokenizer = processor.tokenizer
    torch.manual_seed(0)
    config = small_fo1_config("tiny", tokenizer=tokenizer, aux_image_size=64, tie_word_embeddings=False)
    model = FO1ForConditionalGeneration(config).eval()
    generation_prompt = tokenizer("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    chain = [generation_prompt[-1]] + tokenizer(answer + "<|im_end|>", add_special_tokens=False)["input_ids"]
    emitting = chain[:-1]  # each of these predicts the token after it
    if len(set(emitting)) != len(emitting):
        raise ValueError(f"a scripted answer needs distinct tokens; {answer!r} repeats one")
    hidden = config.vlm_config.text_config.hidden_size
    if len(emitting) > hidden:
        raise ValueError(f"a scripted answer of {len(emitting)} tokens needs hidden size >= that, got {hidden}")
    language_model = model.vlm.model.language_model
    with torch.no_grad():
        for layer in language_model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        directions = torch.linalg.qr(torch.randn(hidden, hidden))[0].T[: len(emitting)]  # orthonormal rows
        embeddings = model.get_input_embeddings().weight
        output = model.get_output_embeddings().weight
        output.zero_()
        # The final RMSNorm scales a unit vector by sqrt(hidden).
        scale = NEXT_TOKEN_LOGIT / hidden**0.5
        gaps = {tokenizer.convert_tokens_to_ids(token): gap for token, gap in (region_runner_up or {}).items()}
        unused_regions = [
            tokenizer.convert_tokens_to_ids(f"<region{k}>") for k in range(90, 100)
        ]
        for step, (current, following) in enumerate(zip(emitting, chain[1:])):
            embeddings[current] = directions[step]
            output[following] += scale * directions[step]
            if following in gaps:
                output[unused_regions[step % len(unused_regions)]] += (NEXT_TOKEN_LOGIT - gaps[following]) / hidden**0.5 * directions[step]
    return model


def save_model(model: FO1ForConditionalGeneration, processor: FO1Processor, folder: Path) -> Path:
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def random_boxes(n: int, width: int, height: int, seed: int) -> list[list[float]]:
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, [width - 8, height - 8], size=(n, 2))
    wh = rng.uniform(4, [width / 2, height / 2], size=(n, 2))
    return np.concatenate([xy, np.minimum(xy + wh, [width, height])], axis=1).round(2).tolist()
