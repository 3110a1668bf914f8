"""Runs many model calls at once: batches across images, shares the prefix of calls on one image.

A `ModelCall` is one prompt: an image, at most `max_regions` boxes and a chat. `FO1Generator.generate`
answers a list of them greedily and returns, per call, the new tokens and the probability the model
gave each (for the LLM region score):

* calls with the same `share_key` (same image, same boxes, e.g. 80 category questions) go through
  `prefix_cache`: the image and regions are encoded once and their KV cache reused;
* the other calls are batched, `batch_size` prompts per forward, left-padded (each may have a
  different image and number of regions); calls with similar region counts are batched together.

Decoding is greedy with every sampling and penalty option neutral, whatever the checkpoint's
generation_config says, so answers are reproducible.
"""
from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from vlmfo1.pipeline import prefix_cache

EOS_TOKENS = ("<|im_end|>", "<|endoftext|>")


@dataclass
class ModelCall:
    image: Image.Image
    boxes: np.ndarray  # [n, 4] xyxy original pixels, n <= max_regions
    messages: list[dict[str, str]]
    share_key: Hashable | None = None  # calls with an equal key have the same image and boxes


@dataclass
class Generated:
    token_ids: list[int]  # new tokens, up to and including the end-of-turn token
    probabilities: list[float] = field(default_factory=list)  # of each token, where it was emitted
    finished: bool = True  # False: cut off by max_new_tokens


class _ChosenTokenProbability(LogitsProcessor):
    """Records the probability of every emitted token without keeping all the logits.

    A logits processor sees step t's scores before the token is chosen; the chosen token shows up
    in `input_ids` at step t+1. So each call keeps one step's distribution and reads the previous
    choice from it; the last choice is read in `finish`.
    """

    def __init__(self) -> None:
        self.steps: list[torch.Tensor] = []
        self._last: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self._last is not None:
            self.steps.append(self._last.gather(-1, input_ids[:, -1:]).squeeze(-1))
        self._last = scores.float().softmax(-1)
        return scores

    def finish(self, last_tokens: torch.LongTensor) -> torch.Tensor:
        """[batch, steps] probabilities of the emitted tokens."""
        if self._last is not None:
            self.steps.append(self._last.gather(-1, last_tokens[:, None].to(self._last.device)).squeeze(-1))
            self._last = None
        return torch.stack(self.steps, dim=1).cpu() if self.steps else torch.zeros(0, 0)


class FO1Generator:
    def __init__(self, model, processor, max_new_tokens: int = 256, batch_size: int = 8, reuse_prefix: bool = True):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        self.model = model
        self.processor = processor
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.reuse_prefix = reuse_prefix
        tokenizer = processor.tokenizer
        found = [tokenizer.convert_tokens_to_ids(t) for t in EOS_TOKENS]
        self.eos_token_ids = [i for t, i in zip(EOS_TOKENS, found) if i is not None and tokenizer.convert_ids_to_tokens(i) == t]
        if not self.eos_token_ids:
            raise ValueError(f"the tokenizer has none of the end-of-turn tokens {EOS_TOKENS}")
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_token_ids[-1]
        self.visual_token_ids = torch.tensor([processor.image_token_id, processor.region_token_id])

    def generation_config(self) -> GenerationConfig:
        return GenerationConfig(
            max_new_tokens=self.max_new_tokens,
            do_sample=False,
            num_beams=1,
            repetition_penalty=1.0,
            no_repeat_ngram_size=0,
            eos_token_id=self.eos_token_ids,
            pad_token_id=self.pad_token_id,
        )

    @torch.no_grad()
    def generate(self, calls: Sequence[ModelCall]) -> list[Generated]:
        results: list[Generated | None] = [None] * len(calls)
        groups: dict[Hashable, list[int]] = {}
        alone: list[int] = []
        for position, call in enumerate(calls):
            if self.reuse_prefix and call.share_key is not None:
                groups.setdefault(call.share_key, []).append(position)
            else:
                alone.append(position)
        for members in groups.values():
            if len(members) == 1 or not self._generate_shared(calls, members, results):
                alone += members
        # Similar prompt lengths in one batch waste less on padding; the region count sets most of it.
        alone.sort(key=lambda position: (len(calls[position].boxes), position))
        for start in range(0, len(alone), self.batch_size):
            batch = alone[start : start + self.batch_size]
            for position, generated in zip(batch, self._generate_batch([calls[i] for i in batch])):
                results[position] = generated
        return results  # type: ignore[return-value]

    # -- independent prompts, batched -------------------------------------------------------
    def _generate_batch(self, calls: Sequence[ModelCall]) -> list[Generated]:
        inputs = self.processor(
            images=[c.image for c in calls], boxes=[c.boxes for c in calls], messages=[c.messages for c in calls]
        )
        inputs.pop("labels", None)
        return self._run_generate(self._to_device(dict(inputs)))

    # -- one image, many questions ----------------------------------------------------------
    def _generate_shared(self, calls: Sequence[ModelCall], members: list[int], results: list) -> bool:
        """Answers the calls in `members` from one shared prefix; False when they share too little."""
        first = calls[members[0]]
        inputs = self.processor(images=first.image, boxes=first.boxes, messages=first.messages)
        inputs.pop("labels", None)
        first_ids = inputs["input_ids"][0].tolist()
        num_image_tokens = first_ids.count(self.processor.image_token_id)
        sequences = [first_ids]
        for position in members[1:]:
            segments = self.processor.render_chat(calls[position].messages, num_image_tokens, len(first.boxes))
            sequences.append(self.processor.tokenize_segments(segments)["input_ids"])
        visual = torch.isin(inputs["input_ids"][0], self.visual_token_ids).nonzero()
        must_cover = int(visual.max()) + 1 if len(visual) else 0
        length = prefix_cache.shared_prefix_length(sequences, must_cover)
        if length is None:
            return False
        inputs = self._to_device(dict(inputs))
        cache = prefix_cache.prefill(self.model, inputs, length)
        grid = inputs["image_grid_thw"]
        for start in range(0, len(members), self.batch_size):
            batch = list(range(start, min(start + self.batch_size, len(members))))
            input_ids, attention_mask = prefix_cache.suffix_batch(
                first_ids[:length], [sequences[k][length:] for k in batch], self.pad_token_id
            )
            batch_inputs = self._to_device(
                {"input_ids": input_ids, "attention_mask": attention_mask, "image_grid_thw": grid.repeat(len(batch), 1)}
            )
            batch_inputs["past_key_values"] = prefix_cache.expand_cache(cache, len(batch))
            for k, generated in zip(batch, self._run_generate(batch_inputs)):
                results[members[k]] = generated
        return True

    # -- shared ------------------------------------------------------------------------------
    def _run_generate(self, inputs: dict[str, Any]) -> list[Generated]:
        recorder = _ChosenTokenProbability()
        prompt_length = inputs["input_ids"].shape[1]
        sequences = self.model.generate(
            **inputs, generation_config=self.generation_config(), logits_processor=LogitsProcessorList([recorder])
        )
        new_tokens = sequences[:, prompt_length:].cpu()
        probabilities = recorder.finish(sequences[:, -1])
        results = []
        eos = set(self.eos_token_ids)
        for row, row_probs in zip(new_tokens.tolist(), probabilities.tolist() if len(probabilities) else [[]] * len(new_tokens)):
            end = next((k + 1 for k, token in enumerate(row) if token in eos), None)
            kept = row if end is None else row[:end]
            results.append(Generated(kept, row_probs[: len(kept)], finished=end is not None))
        return results

    def _to_device(self, inputs: dict[str, Any]) -> dict[str, Any]:
        device = self.model.device
        return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
