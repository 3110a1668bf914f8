"""Training data: FO1 records -> model inputs, with proposals attached the way FO1 is trained (SPEC §3).

Two kinds of record sources meet here:

* **records with proposals** (ShapeWorld, upstream-style files): `bbox_list` already holds the boxes
  the region tokens stand for and the answers already name them. They are used as they are
  (optionally with the region order shuffled, answers rewritten to match).
* **records with ground-truth boxes** (what the converters in `vlmfo1.training.converters` write from
  COCO, RefCOCO, region-caption data): `bbox_list` holds the image's annotated boxes and the answers
  name them (`<regionK>` = ground-truth box K). With a proposal source configured, each record gets
  the image's proposals: every ground-truth box is matched one-to-one to a proposal (greedy by IoU,
  IoU >= `iou_threshold`, 0.5 by default) and a box no proposal covers is mixed into the list itself;
  the list keeps every matched or mixed-in box and fills up with the best-scored other proposals to
  `max_regions` (100); it is shuffled (otherwise mixed-in boxes would sit at a telltale place) and
  every `<regionK>` in every turn is rewritten to the box's new index. Unmatched proposals that
  overlap an object stay in the list as negatives: at inference the proposer makes duplicates too,
  and the model must learn to name only the best one.

Every random choice of a sample comes from a generator seeded by (seed, sample index, epoch), so a
resumed run sees exactly the samples an uninterrupted run would have seen.
"""
from __future__ import annotations

import os
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any, Callable, Iterator, Protocol, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from vlmfo1 import prompts
from vlmfo1.data.records import GPT, HUMAN, FO1Record, read_records, regions_in_order, with_regions
from vlmfo1.evaluation.box_ops import pairwise_iou
from vlmfo1.processing.image_processing import load_image


_REGION_RE = re.compile(r"<region(\d+)>")
_ROLES = {HUMAN: "user", GPT: "assistant"}


# ---------------------------------------------------------------------------------------------
# Region lists: matching ground truth to proposals, shuffling, rewriting answers
# ---------------------------------------------------------------------------------------------


@dataclass
class MatchResult:
    """Where each ground-truth box ended up: `gt_to_region[k]` is its index in the new list."""

    boxes: list[list[float]]
    scores: list[float]
    gt_to_region: list[int]
    matched: int  # ground-truth boxes covered by a proposal
    mixed_in: int  # ground-truth boxes added to the list because no proposal covered them


def match_ground_truth(
    gt_boxes: Sequence[Sequence[float]],
    proposal_boxes: Sequence[Sequence[float]],
    proposal_scores: Sequence[float] | None,
    rng: np.random.Generator,
    iou_threshold: float = 0.5,
    max_regions: int = prompts.MAX_REGIONS,
    shuffle: bool = True,
) -> MatchResult:
    """The region list of one sample: proposals (best `max_regions` by score) with every ground-truth
    box matched to one of them or mixed in, then shuffled. See the module docstring."""
    if not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    num_gt = len(gt_boxes)
    if num_gt > max_regions:
        raise ValueError(f"{num_gt} ground-truth boxes do not fit in {max_regions} regions")
    scores = np.ones(len(proposal_boxes)) if proposal_scores is None else np.asarray(proposal_scores, dtype=np.float64)
    if len(scores) != len(proposal_boxes):
        raise ValueError(f"{len(scores)} proposal scores for {len(proposal_boxes)} proposals")
    # The model only ever sees the top max_regions proposals (as at inference), so match among those.
    order = np.argsort(-scores, kind="stable")[:max_regions]
    proposals = np.asarray(proposal_boxes, dtype=np.float64).reshape(-1, 4)[order]
    scores = scores[order]

    gt_to_proposal = [-1] * num_gt
    if num_gt and len(proposals):
        iou = pairwise_iou(gt_boxes, proposals)
        # Greedy one-to-one matching, highest IoU first: a proposal stands for at most one object.
        pairs = np.argwhere(iou >= iou_threshold)
        pairs = pairs[np.argsort(-iou[pairs[:, 0], pairs[:, 1]], kind="stable")]
        used: set[int] = set()
        for gt, proposal in pairs.tolist():
            if gt_to_proposal[gt] == -1 and proposal not in used:
                gt_to_proposal[gt] = proposal
                used.add(proposal)
    unmatched_gt = [k for k in range(num_gt) if gt_to_proposal[k] == -1]
    matched_proposals = {p for p in gt_to_proposal if p >= 0}
    # Room for the mixed-in boxes is made by dropping the lowest-scored proposals nobody matched.
    spare = [p for p in range(len(proposals)) if p not in matched_proposals]
    keep_spare = spare[: max(0, max_regions - len(matched_proposals) - len(unmatched_gt))]
    kept = sorted(matched_proposals) + keep_spare

    entries: list[tuple[list[float], float]] = [(proposals[p].tolist(), float(scores[p])) for p in kept]
    position_of_proposal = {p: i for i, p in enumerate(kept)}
    gt_position = [position_of_proposal[p] if p >= 0 else -1 for p in gt_to_proposal]
    for k in unmatched_gt:
        gt_position[k] = len(entries)
        entries.append(([float(v) for v in gt_boxes[k]], 1.0))

    permutation = rng.permutation(len(entries)) if shuffle else np.arange(len(entries))
    new_index = np.empty(len(entries), dtype=np.int64)
    new_index[permutation] = np.arange(len(entries))
    return MatchResult(
        boxes=[entries[i][0] for i in permutation],
        scores=[entries[i][1] for i in permutation],
        gt_to_region=[int(new_index[p]) for p in gt_position],
        matched=num_gt - len(unmatched_gt),
        mixed_in=len(unmatched_gt),
    )


def attach_proposals(
    record: FO1Record,
    proposal_boxes: Sequence[Sequence[float]],
    proposal_scores: Sequence[float] | None,
    rng: np.random.Generator,
    iou_threshold: float = 0.5,
    max_regions: int = prompts.MAX_REGIONS,
) -> tuple[FO1Record, MatchResult]:
    """`record` (ground-truth boxes in `bbox_list`) with the proposals as its regions; answers rewritten."""
    if record.region_text:
        raise ValueError(f"record {record.id!r} has region_text, the words of its own boxes: it cannot take proposals")
    result = match_ground_truth(record.bbox_list, proposal_boxes, proposal_scores, rng, iou_threshold, max_regions)
    return with_regions(record, result.boxes, result.scores, result.gt_to_region), result


def keep_regions(record: FO1Record, n: int, rng: np.random.Generator) -> FO1Record:
    """The record with at most `n` regions: every region its conversation names (these may exceed
    `n`), then randomly chosen others; kept boxes keep their order and the answers are rewritten.
    Fewer unnamed regions make a retrieval question easier (a curriculum knob): the answers stay
    right because a region that fits the question is always named by the answer."""
    total = len(record.bbox_list)
    if total <= n:
        return record
    named = {int(k) for turn in record.conversations for k in _REGION_RE.findall(turn["value"])}
    others = [k for k in range(total) if k not in named]
    extra = rng.choice(others, size=max(0, n - len(named)), replace=False).tolist() if others else []
    return regions_in_order(record, sorted([*named, *extra]))


def shuffle_regions(record: FO1Record, rng: np.random.Generator) -> FO1Record:
    """The same record with its boxes (scores, region texts) in a random order and every `<regionK>`
    rewritten to follow."""
    return regions_in_order(record, rng.permutation(len(record.bbox_list)).tolist())


# ---------------------------------------------------------------------------------------------
# Proposal sources
# ---------------------------------------------------------------------------------------------


class Proposer(Protocol):
    """Anything that proposes boxes for an image: `proposer(image)` returns an object with
    `boxes` ([N, 4] xyxy pixels) and `scores` ([N]) — `vlmfo1.proposals`' proposers do — or a
    `{"boxes", "scores"}` dict, or a `(boxes, scores)` pair."""

    def __call__(self, image: Any) -> Any: ...


class ProposalSource:
    """Proposals of a record's image: `source(record, image) -> (boxes, scores)`."""

    def __call__(self, record: FO1Record, image) -> tuple[list[list[float]], list[float] | None]:
        raise NotImplementedError


class ProposalFile(ProposalSource):
    """Precomputed proposals, one entry per image: upstream's JSONL format (`{"id", "image", "bbox_list",
    "score_list"}`), looked up by the record's `meta["image_id"]`, then by image path, then file name."""

    def __init__(self, path: str | os.PathLike):
        from vlmfo1.evaluation.adapters.proposals import load_proposal_file

        self.path = str(path)
        entries = load_proposal_file(path)
        self.by_id = entries
        self.by_image = {entry.image: entry for entry in entries.values()}
        self.by_name: dict[str, Any] = {}
        for entry in entries.values():
            self.by_name.setdefault(PurePath(entry.image).name, entry)

    def __call__(self, record: FO1Record, image) -> tuple[list[list[float]], list[float] | None]:
        key = record.meta.get("image_id")
        entry = (self.by_id.get(str(key)) if key is not None else None) or self.by_image.get(record.image)
        entry = entry or self.by_name.get(PurePath(record.image).name)
        if entry is None:
            raise KeyError(f"record {record.id!r}: no proposals for image {record.image!r} in {self.path}")
        return entry.boxes, entry.scores


class ProposerSource(ProposalSource):
    """Proposals made on the fly by a proposer, cached per image (records of one image share them)."""

    def __init__(self, proposer: Proposer | Callable, cache_size: int = 256):
        self.proposer = proposer
        self.cache_size = cache_size
        self._cache: OrderedDict[str, tuple[list[list[float]], list[float] | None]] = OrderedDict()

    def __call__(self, record: FO1Record, image) -> tuple[list[list[float]], list[float] | None]:
        if record.image in self._cache:
            self._cache.move_to_end(record.image)
            return self._cache[record.image]
        proposals = self.proposer(image)
        boxes = np.asarray(_get(proposals, "boxes"), dtype=np.float64).reshape(-1, 4).tolist()
        scores = _get(proposals, "scores", None)
        scores = None if scores is None else np.asarray(scores, dtype=np.float64).reshape(-1).tolist()
        self._cache[record.image] = (boxes, scores)
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return boxes, scores


def _get(obj: Any, name: str, *default):
    """A field of a proposer's result, whichever of the `Proposer` forms it has."""
    if isinstance(obj, dict):
        return obj[name] if not default else obj.get(name, default[0])
    if isinstance(obj, (tuple, list)) and len(obj) == 2:
        return obj[0] if name == "boxes" else obj[1]
    return getattr(obj, name, *default)


def make_proposal_source(spec: Any, base_dir: str | os.PathLike | None = None) -> ProposalSource | None:
    """From a data config's `proposals:` entry: None, `{"file": path}`, `{"proposer": name, ...options}`,
    a `ProposalSource`, or a proposer object."""
    if spec is None or spec is False:
        return None
    if isinstance(spec, ProposalSource):
        return spec
    if isinstance(spec, dict):
        if set(spec) == {"file"}:
            return ProposalFile(_resolve(spec["file"], base_dir))
        if "proposer" in spec:
            options = {k: v for k, v in spec.items() if k != "proposer"}
            return ProposerSource(_build_proposer(spec["proposer"], options))
        raise ValueError(f"proposals must be {{file: PATH}} or {{proposer: NAME, ...options}}, got {spec!r}")
    if callable(spec):
        return ProposerSource(spec)
    raise ValueError(f"proposals must be null, {{file: PATH}} or {{proposer: NAME}}, got {spec!r}")


def _build_proposer(name: str, options: dict[str, Any]):
    """A proposer from the `vlmfo1.proposals` registry (imported only when a config asks for one)."""
    from vlmfo1.proposals import build_proposer

    return build_proposer(name, **options)


def _resolve(path: str | os.PathLike, base_dir: str | os.PathLike | None) -> Path:
    path = Path(path).expanduser()
    return path if path.is_absolute() or base_dir is None else Path(base_dir) / path


# ---------------------------------------------------------------------------------------------
# Dataset
# ---------------------------------------------------------------------------------------------


@dataclass
class RecordSource:
    """One entry of a data mix: a records file, where its images are, how its regions are made."""

    records: list[FO1Record]
    image_root: Path
    proposals: ProposalSource | None = None  # None: use `bbox_list` as the regions
    repeat: float = 1.0  # 2.0 = every record twice per epoch; 0.5 = a fixed half of them
    name: str = ""


def load_source(
    records: str | os.PathLike | Sequence[FO1Record],
    images: str | os.PathLike | None = None,
    proposals: Any = None,
    repeat: float = 1.0,
    base_dir: str | os.PathLike | None = None,
    name: str | None = None,
) -> RecordSource:
    """A `RecordSource` from a records file (images relative to `images`, default the file's folder)."""
    if isinstance(records, (str, os.PathLike)):
        path = _resolve(records, base_dir)
        loaded = list(read_records(path))
        image_root = _resolve(images, base_dir) if images is not None else path.parent
        name = name or path.name
    else:
        loaded = list(records)
        if images is None:
            raise ValueError("records given as objects need `images` (the folder their image paths are relative to)")
        image_root = _resolve(images, base_dir)
        name = name or "records"
    if not loaded:
        raise ValueError(f"{name}: no records")
    if repeat <= 0:
        raise ValueError(f"{name}: repeat must be positive, got {repeat}")
    return RecordSource(loaded, image_root, make_proposal_source(proposals, base_dir), float(repeat), name)


def record_messages(record: FO1Record) -> list[dict[str, str]]:
    """The record's turns as chat messages for `FO1Processor` (the image tag marks the image)."""
    return [{"role": _ROLES[turn["from"]], "content": turn["value"]} for turn in record.conversations]


class SampleError(RuntimeError):
    """A sample that cannot be made (missing image, no proposals for it, too long, ...); the message
    names the source and the record, and the original error is its cause."""


class FO1TrainingDataset(Dataset):
    """Samples of one or more record sources, ready for `FO1Collator`.

    Index `k` is sample `k % len(self)` in epoch `k // len(self)` (`EpochSampler` yields such
    indexes), so per-epoch randomness (region order, proposal mixing) survives DataLoader workers.
    A sample is a dict of `input_ids`, `labels` (1-D), `pixel_values`, `image_grid_thw`,
    `aux_pixel_values` and `region_boxes` ([R, 4], normalised xyxy).
    """

    def __init__(
        self,
        sources: Sequence[RecordSource],
        processor,
        seed: int = 0,
        iou_threshold: float = 0.5,
        max_regions: int = prompts.MAX_REGIONS,
        shuffle_regions: bool = False,
        max_length: int | None = None,
        regions_per_sample: int | None = None,
    ):
        if not sources:
            raise ValueError("no record sources")
        self.sources = list(sources)
        self.processor = processor
        self.seed = int(seed)
        self.iou_threshold = float(iou_threshold)
        self.max_regions = min(int(max_regions), processor.max_regions)
        self.shuffle_regions = bool(shuffle_regions)
        self.max_length = max_length
        if regions_per_sample is not None and int(regions_per_sample) < 1:
            raise ValueError(f"regions_per_sample must be at least 1, got {regions_per_sample}")
        self.regions_per_sample = None if regions_per_sample is None else int(regions_per_sample)
        self.index: list[tuple[int, int]] = list(_source_index(self.sources, self.seed))

    def __len__(self) -> int:
        return len(self.index)

    def record(self, k: int) -> tuple[FO1Record, RecordSource, np.random.Generator]:
        """The record behind index `k` as the model will see it (proposals attached, regions shuffled)."""
        epoch, position = divmod(int(k), len(self.index))
        s, i = self.index[position]
        source = self.sources[s]
        record = source.records[i]
        rng = np.random.default_rng([self.seed, position, epoch])
        return record, source, rng

    def prepared(self, k: int) -> tuple[FO1Record, Any]:
        record, source, rng = self.record(k)
        if record.image is None:  # text-only (language data): no image, no regions
            return record, None
        image = load_image(source.image_root / record.image)
        if source.proposals is not None:
            boxes, scores = source.proposals(record, image)
            record, _ = attach_proposals(record, boxes, scores, rng, self.iou_threshold, self.max_regions)
        if self.regions_per_sample is not None:
            record = keep_regions(record, self.regions_per_sample, rng)
        if source.proposals is None and self.shuffle_regions and record.bbox_list:
            record = shuffle_regions(record, rng)
        if len(record.bbox_list) > self.max_regions:
            raise ValueError(f"record {record.id!r}: {len(record.bbox_list)} boxes, the model holds {self.max_regions}")
        return record, image

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        try:
            record, image = self.prepared(k)
            return encode_record(record, image, self.processor, self.max_length)
        except (OSError, ValueError, KeyError) as error:
            original, source, _ = self.record(k)
            raise SampleError(f"{source.name}: record {original.id!r}: {error}") from error


def _repeated(n: int, repeat: float, rng: np.random.Generator) -> list[int]:
    whole, fraction = int(repeat), repeat - int(repeat)
    indexes = list(range(n)) * whole
    if fraction > 0:
        indexes += sorted(rng.choice(n, size=int(round(fraction * n)), replace=False).tolist())
    return indexes


def _source_index(sources: Sequence[RecordSource], seed: int) -> Iterator[tuple[int, int]]:
    """(source, record) pairs of one epoch, each source's records repeated as it asks."""
    for s, source in enumerate(sources):
        for i in _repeated(len(source.records), source.repeat, np.random.default_rng([seed, s])):
            yield s, i


def encode_record(record: FO1Record, image, processor, max_length: int | None = None) -> dict[str, torch.Tensor]:
    """Token ids, labels (assistant tokens only) and pixel inputs of one record."""
    boxes = record.bbox_list if record.bbox_list else None
    messages = record_messages(record)
    if record.region_text and record.image is None:
        # Word-filled region slots sit where image regions would: at the start of the first user turn
        # (an image record's region_text fills the slots its boxes make).
        messages[0] = {**messages[0], "content": processor.region_prefix(len(record.region_text)) + "\n" + messages[0]["content"]}
    features = processor(images=image, boxes=boxes, messages=messages, add_generation_prompt=False)
    input_ids = features["input_ids"][0]
    labels = features["labels"][0] if "labels" in features else torch.full_like(input_ids, -100)
    if max_length is not None and input_ids.shape[0] > max_length:
        # Only text after the image and regions may be cut: those come first in the first user turn.
        visual = (input_ids == processor.image_token_id) | (input_ids == processor.region_token_id)
        last_visual = int(visual.nonzero().max()) if visual.any() else -1
        if last_visual >= max_length:
            raise ValueError(f"{input_ids.shape[0]} tokens, and the image and regions alone exceed max_length={max_length}")
        input_ids, labels = input_ids[:max_length], labels[:max_length]
    sample = {"input_ids": input_ids, "labels": labels}
    for key in ("pixel_values", "image_grid_thw", "aux_pixel_values"):
        if key in features:
            sample[key] = features[key]
    sample["region_boxes"] = features["region_boxes"][0]
    if record.region_text:
        sample["region_text_ids"] = [torch.tensor(region_text_token_ids(processor.tokenizer, text))
                                     for text in record.region_text]
    return sample


def region_text_token_ids(tokenizer, text: str) -> list[int]:
    """The token ids whose embeddings fill a word-filled region slot holding `text`."""
    # A leading space: the words as they appear inside a sentence, where the LLM meets them.
    return tokenizer(" " + text, add_special_tokens=False)["input_ids"]


class EpochSampler(Sampler[int]):
    """A seeded random order per epoch, yielding `epoch * n + i` so the dataset knows the epoch.

    The Trainer calls `set_epoch` and, on resume, replays the interrupted epoch's order and skips
    the batches already trained, so the same samples come in the same order.
    """

    def __init__(self, num_samples: int, seed: int = 0, shuffle: bool = True):
        self.num_samples = num_samples
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        order = (
            np.random.default_rng([self.seed, self.epoch, 7]).permutation(self.num_samples)
            if self.shuffle
            else np.arange(self.num_samples)
        )
        offset = self.epoch * self.num_samples
        return iter((offset + order).tolist())
