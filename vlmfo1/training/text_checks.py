"""Teacher-forced checks of the language skills a model trained from scratch must learn first.

A curriculum step is only worth building on once it has formed, and whether it forms is not
dependable at this scale (docs/training.md, session 4), so the demo recipe measures each language
stage instead of assuming it:

* `copy`: on held-out repeat questions, the share of answer tokens predicted right, region index
  tokens and other tokens apart (copying `<regionK>` is the hard part);
* `lookup{N}`: on held-out slot look-ups over at most N items, the share of the answers' region
  tokens predicted right, next to `chance` (a uniform guess among the listed items).

`teacher_forced_accuracy` also takes image records (with `image_root`): on detection records it
measures the same look-up over regions from pixels, the step after the language stages.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch

from vlmfo1 import prompts
from vlmfo1.data.records import FO1Record


def region_token_ids(tokenizer) -> torch.Tensor:
    return torch.tensor(tokenizer.convert_tokens_to_ids(prompts.region_tokens()))


@torch.no_grad()
def teacher_forced_accuracy(model, processor, records: Sequence[FO1Record], batch_size: int = 16,
                            image_root: str | os.PathLike | None = None) -> dict[str, float]:
    """Answer tokens predicted right with the true prefix given: `region` (region index tokens),
    `word` (every other answer token, `<|im_end|>` included), `region_chance` (a uniform guess among
    each record's regions, word-filled slots or boxes, for records that have them) and the token
    counts. Records with an image (e.g. ShapeWorld detection records) read it from `image_root`:
    the same check then measures whether a look-up carries over to image regions."""
    from vlmfo1.processing.image_processing import load_image
    from vlmfo1.training.collator import FO1Collator
    from vlmfo1.training.data import encode_record

    def image_of(record: FO1Record):
        if record.image is None:
            return None
        if image_root is None:
            raise ValueError(f"record {record.id!r} has an image: pass image_root")
        return load_image(Path(image_root) / record.image)

    collate = FO1Collator(processor.tokenizer.pad_token_id)
    region_ids = region_token_ids(processor.tokenizer)
    right = {"region": 0, "word": 0}
    total = {"region": 0, "word": 0}
    chance = 0.0
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    for start in range(0, len(records), batch_size):
        chunk = records[start:start + batch_size]
        batch = collate([encode_record(r, image_of(r), processor) for r in chunk])
        labels = batch.pop("labels")[:, 1:]
        predicted = model(**{k: v.to(device) for k, v in batch.items()}).logits[:, :-1].argmax(-1).cpu()
        answer = labels >= 0
        is_region = answer & torch.isin(labels, region_ids)
        for kind, where in (("region", is_region), ("word", answer & ~is_region)):
            right[kind] += int((predicted[where] == labels[where]).sum())
            total[kind] += int(where.sum())
        for record, n in zip(chunk, is_region.sum(-1).tolist()):
            regions = len(record.region_text) or len(record.bbox_list)
            if n and regions:
                chance += n / regions
    model.train(was_training)
    return {
        "region": round(right["region"] / max(total["region"], 1), 3),
        "word": round(right["word"] / max(total["word"], 1), 3),
        "region_chance": round(chance / max(total["region"], 1), 3),
        "region_tokens": total["region"],
        "word_tokens": total["word"],
    }


def language_checks(model, processor, lookup_items: Sequence[int] = (2, 4, 6), n: int = 200, seed: int = 12) -> dict:
    """`copy` and `lookup{N}` (module docstring) on `n` held-out questions each."""
    from vlmfo1.data.shapeworld.text_tasks import lookup_records, repeat_records

    report = {"copy": teacher_forced_accuracy(model, processor, repeat_records(n, seed=seed, split="check"))}
    for items in lookup_items:
        records = lookup_records(n, seed=seed, split="check", max_items=items, max_queries=1, keys="slots")
        report[f"lookup{items}"] = teacher_forced_accuracy(model, processor, records)
    return report
