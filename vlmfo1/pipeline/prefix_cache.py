"""Many questions about one image and one region list: encode them once, reuse the KV cache.

Every FO1 prompt starts with the same tokens for a given image and region list: system turn, the
image tokens, `<regionK><regionfeat>` per region, "\n". Only the task text differs. So the
questions of one image are tokenized in full, their longest common token prefix (which must hold
every image and region token) is run through the model once with `use_cache=True` (ViT, DaViT,
region encoder and the LLM prefill of the prefix), and each batch of questions continues from a
copy of that cache with only its own suffix.

A batch of suffixes of different lengths is laid out as ``[prefix][padding][suffix]`` with the
padding masked out: positions come from the attention mask (M-RoPE continues from the image's
positions, as in a full prompt), so each row computes what its own full prompt would.
`tests/test_pipeline_generation.py` checks the tokens are those of independent calls.
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch


def shared_prefix_length(sequences: Sequence[Sequence[int]], must_cover: int) -> int | None:
    """Length of the longest common prefix of `sequences`, leaving each at least one token of its
    own (the first logits come from the suffix). None when that prefix ends before `must_cover`
    tokens (the image and region tokens must all be in it, since the suffix is run without them)."""
    shortest = min(len(s) for s in sequences)
    length = 0
    first = sequences[0]
    while length < shortest - 1 and all(s[length] == first[length] for s in sequences[1:]):
        length += 1
    return length if length >= must_cover else None


def suffix_batch(
    prefix: Sequence[int], suffixes: Sequence[Sequence[int]], pad_token_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids and attention_mask of ``[prefix][padding][suffix]`` rows (padding masked)."""
    longest = max(len(s) for s in suffixes)
    ids, mask = [], []
    for suffix in suffixes:
        gap = longest - len(suffix)
        ids.append(list(prefix) + [pad_token_id] * gap + list(suffix))
        mask.append([1] * len(prefix) + [0] * gap + [1] * len(suffix))
    return torch.tensor(ids, dtype=torch.long), torch.tensor(mask, dtype=torch.long)


def expand_cache(cache, batch_size: int):
    """A copy of a batch-1 cache, repeated for `batch_size` rows (generation appends to it in place)."""
    copied = copy.deepcopy(cache)
    if batch_size > 1:
        copied.batch_repeat_interleave(batch_size)
    return copied


@torch.no_grad()
def prefill(model, inputs: dict[str, torch.Tensor], length: int):
    """Runs the first `length` tokens of a single prompt (with its image and regions) into a KV cache."""
    out = model(
        input_ids=inputs["input_ids"][:, :length],
        attention_mask=inputs["attention_mask"][:, :length],
        pixel_values=inputs.get("pixel_values"),
        image_grid_thw=inputs.get("image_grid_thw"),
        aux_pixel_values=inputs.get("aux_pixel_values"),
        region_boxes=inputs.get("region_boxes"),
        use_cache=True,
        logits_to_keep=1,
    )
    return out.past_key_values
