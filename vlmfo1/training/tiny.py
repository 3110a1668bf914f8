"""Small random FO1 models for tests, demos and CPU experiments, and the small tokenizer they use.

The real Qwen tokenizer has 151k tokens: its embedding table alone would be 20 MB at width 32. A
model meant to ship inside the package (or to train in minutes on a CPU) uses a byte-level BPE
tokenizer trained here on the task's own text instead. It keeps Qwen's special tokens (so the chat
layout and the processor work unchanged) and gets the FO1 tokens appended after its vocabulary, so
the "original vocabulary" of the stage-1 gradient mask is exactly the ids below the first FO1 token.

    tokenizer = train_small_tokenizer(shapeworld_corpus(), vocab_size=1024)
    model, processor = init_tiny("runs/tiny", size="tiny", tokenizer=tokenizer)
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Iterable, Iterator

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from vlmfo1 import prompts
from vlmfo1.modeling.factory import SIZES, small_fo1_config
from vlmfo1.processing.image_processing import FO1ImageProcessor
from vlmfo1.processing.tokenization import add_fo1_tokens, find_qwen_tokenizer_dir, load_fo1_tokenizer

# Qwen2.5's special tokens, in Qwen's id order; a small tokenizer gives them ids 0..6.
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
# Text that every chat contains, whatever the task corpus is.
_CHAT_TEXT = (
    f"<|im_start|>system\n{prompts.SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n",
    "<|im_end|>\n<|im_start|>assistant\n",
)


def train_small_tokenizer(
    texts: Iterable[str], vocab_size: int = 1024, max_regions: int = prompts.MAX_REGIONS
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer learned from `texts`, with Qwen's special tokens first (ids 0..6)
    and the FO1 tokens after the learned vocabulary. Any text still encodes (byte fallback)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < 300:
        raise ValueError(f"vocab_size must be at least 300 (256 byte symbols + special tokens), got {vocab_size}")
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(QWEN_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )

    def corpus() -> Iterator[str]:
        # The special tokens are removed so that BPE learns the text around them, not their pieces.
        for text in (*_CHAT_TEXT, *texts):
            for special in QWEN_SPECIAL_TOKENS:
                text = text.replace(special, "\n")
            yield text

    backend.train_from_iterator(corpus(), trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=list(QWEN_SPECIAL_TOKENS[1:2] + QWEN_SPECIAL_TOKENS[3:]),
        clean_up_tokenization_spaces=False,
        model_max_length=32768,
    )
    add_fo1_tokens(tokenizer, max_regions)
    return tokenizer


def shapeworld_corpus(num_scenes: int = 400, seed: int = 12345) -> list[str]:
    """Every text of ShapeWorld's records for `num_scenes` scenes, plus the world's whole word list
    (so that words a small sample misses still get tokens of their own)."""
    from vlmfo1.data.shapeworld import COLOURS, SHAPES, SIZES as SHAPE_SIZES, TEXTURES, WORDS, generate_example
    from vlmfo1.data.shapeworld.vocab import NUMBER_WORDS, plural

    texts = [" ".join(words) for words in (SHAPES, [plural(s) for s in SHAPES], COLOURS, SHAPE_SIZES, TEXTURES, WORDS, NUMBER_WORDS)]
    for index in range(num_scenes):
        for record in generate_example(index=index, seed=seed, split="tokenizer").fo1_records():
            texts.extend(turn["value"].replace(prompts.IMAGE_TAG, "") for turn in record.conversations)
    return texts


def resolve_tokenizer(tokenizer: str | os.PathLike | PreTrainedTokenizerBase = "qwen") -> PreTrainedTokenizerBase:
    """"qwen" (the real Qwen2.5 files, 151k tokens), "shapeworld" (a small one trained now on ShapeWorld
    text), a tokenizer folder, or a tokenizer object; FO1 tokens are added when missing."""
    if isinstance(tokenizer, PreTrainedTokenizerBase):
        add_fo1_tokens(tokenizer)
        return tokenizer
    if tokenizer == "qwen":
        return load_fo1_tokenizer(find_qwen_tokenizer_dir())
    if tokenizer == "shapeworld":
        return train_small_tokenizer(shapeworld_corpus())
    path = Path(tokenizer)
    if not path.is_dir():
        raise ValueError(f"tokenizer must be 'qwen', 'shapeworld' or a tokenizer folder; {path} is not a folder")
    return load_fo1_tokenizer(path)


def first_fo1_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The lowest id of an FO1 token: every id below it is the base vocabulary."""
    from vlmfo1.processing.tokenization import fo1_special_tokens

    return min(tokenizer.convert_tokens_to_ids(token) for token in fo1_special_tokens())


def init_tiny(
    out_dir: str | os.PathLike | None = None,
    size: str = "tiny",
    tokenizer: str | os.PathLike | PreTrainedTokenizerBase = "qwen",
    seed: int = 0,
    min_pixels: int = 56 * 56,
    max_pixels: int = 224 * 224,
    aux_image_size: int = 256,
    fo1_row_scale: float = 1.0,
    **config_overrides,
):
    """A random FO1 of `size` (see `vlmfo1.modeling.factory.SIZES`) with its processor, saved to
    `out_dir` when given (then `FO1ForConditionalGeneration.from_pretrained(out_dir)` and
    `FO1Processor.from_pretrained(out_dir)` load it). Returns (model, processor).

    `fo1_row_scale` multiplies the FO1 token rows of the random embedding (region index tokens among
    them). A small LLM trained from scratch copies a token from its context only once the token's
    row stands out; 100 rarely seen region tokens at the initial scale barely do (9 % of them copied
    after 500 repeat steps, against 58 % at 8x; docs/training.md)."""
    from vlmfo1.modeling.modeling_fo1 import FO1ForConditionalGeneration
    from vlmfo1.processing.processing_fo1 import FO1Processor

    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose from {sorted(SIZES)}")
    tok = resolve_tokenizer(tokenizer)
    config = small_fo1_config(size, tokenizer=tok, aux_image_size=aux_image_size, **config_overrides)
    if not math.isfinite(fo1_row_scale) or fo1_row_scale <= 0:
        raise ValueError(f"fo1_row_scale must be a positive number, got {fo1_row_scale}")
    torch.manual_seed(seed)
    model = FO1ForConditionalGeneration(config)
    if fo1_row_scale != 1.0:
        with torch.no_grad():
            model.get_input_embeddings().weight[first_fo1_token_id(tok):] *= fo1_row_scale
    processor = FO1Processor(
        FO1ImageProcessor(min_pixels=min_pixels, max_pixels=max_pixels, aux_image_size=aux_image_size), tok
    )
    if out_dir is not None:
        save_model(model, processor, out_dir)
    return model, processor


def save_model(model, processor, out_dir: str | os.PathLike) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def reload_tokenizer(path: str | os.PathLike) -> PreTrainedTokenizerBase:
    """`AutoTokenizer.from_pretrained`, as users reload a saved tokenizer."""
    return AutoTokenizer.from_pretrained(str(path))
