"""More regions than the model holds: split them into chunks, ask each chunk, merge the answers.

The model has `max_regions` (100) region tokens. A larger proposal list is cut, in its own order,
into ceil(n / capacity) contiguous chunks of near-equal size (250 -> 84 + 83 + 83), so every
proposal is seen exactly once. Pinned regions (the reference object of `detect_like`) come first
in every chunk, so a prompt can refer to them as `<region0>`...

Merging grounded answers: the regions each chunk names are mapped back to their index in the whole
list. The same object can be proposed twice (two near-identical boxes) and land in different
chunks, where each chunk names its copy; so, per label, a region is dropped when a higher-scoring
region *from another chunk* overlaps it with IoU >= `dedupe_iou` (0.5 by default, as common NMS).
Regions named by the same chunk are never merged: the model saw both and chose both.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from vlmfo1.evaluation.box_ops import pairwise_iou
from vlmfo1.pipeline.results import Region

DEFAULT_DEDUPE_IOU = 0.5


def plan_chunks(num_regions: int, capacity: int, pinned: Sequence[int] = ()) -> list[list[int]]:
    """Indexes (into the whole list) of the regions of each chunk: `pinned` ones first, then a
    contiguous run of the rest. One chunk when everything fits."""
    pinned = list(dict.fromkeys(int(i) for i in pinned))
    if any(not 0 <= i < num_regions for i in pinned):
        raise ValueError(f"pinned regions {pinned} out of range for {num_regions} regions")
    free = capacity - len(pinned)
    if free <= 0:
        raise ValueError(f"{len(pinned)} pinned regions leave no room in chunks of {capacity}")
    rest = [i for i in range(num_regions) if i not in set(pinned)]
    if not rest:
        return [pinned]
    count = math.ceil(len(rest) / free)
    return [pinned + part.tolist() for part in np.array_split(np.array(rest, dtype=int), count)]


@dataclass
class ChunkedRegion:
    region: Region
    chunk: int  # which chunk named it


def merge_chunk_regions(found: Sequence[ChunkedRegion], dedupe_iou: float = DEFAULT_DEDUPE_IOU) -> tuple[list[Region], int]:
    """The regions named across chunks, duplicates removed (see the module docstring); order kept.
    Returns (regions, how many were removed as duplicates)."""
    # The same region named twice under one label (a pinned region, seen by every chunk): keep the best.
    best: dict[tuple[str | None, int], ChunkedRegion] = {}
    for item in found:
        key = (item.region.label, item.region.index)
        if key not in best or item.region.score > best[key].region.score:
            best[key] = item
    unique = [item for item in found if best[(item.region.label, item.region.index)] is item]
    removed = len(found) - len(unique)

    keep = [True] * len(unique)
    by_label: dict[str | None, list[int]] = {}
    for position, item in enumerate(unique):
        by_label.setdefault(item.region.label, []).append(position)
    for positions in by_label.values():
        if len(positions) < 2:
            continue
        iou = pairwise_iou([unique[p].region.box for p in positions], [unique[p].region.box for p in positions])
        # Highest score first; ties keep the earlier answer.
        order = sorted(range(len(positions)), key=lambda k: -unique[positions[k]].region.score)
        kept: list[int] = []
        for k in order:
            chunk = unique[positions[k]].chunk
            if any(unique[positions[j]].chunk != chunk and iou[k, j] >= dedupe_iou for j in kept):
                keep[positions[k]] = False
                removed += 1
            else:
                kept.append(k)
    return [item.region for item, kept_it in zip(unique, keep) if kept_it], removed
