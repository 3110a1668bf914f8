"""Training data: proposal matching, answer rewriting, labels, collation, converters."""
from __future__ import annotations

import dataclasses
import json
import pickle
import re

import numpy as np
import pytest
import torch
from PIL import Image

from vlmfo1 import prompts
from vlmfo1.data.records import FO1Record, read_records, rewrite_regions, write_records
from vlmfo1.evaluation.box_ops import pairwise_iou
from vlmfo1.processing.image_processing import FO1ImageProcessor
from vlmfo1.processing.processing_fo1 import FO1Processor
from vlmfo1.training.collator import FO1Collator
from vlmfo1.training.converters import (
    coco_to_records,
    llava_to_records,
    refcoco_to_records,
    referring_to_records,
    region_captions_to_records,
)
from vlmfo1.training.data import (
    EpochSampler,
    FO1TrainingDataset,
    ProposalFile,
    ProposerSource,
    attach_proposals,
    encode_record,
    keep_regions,
    load_source,
    match_ground_truth,
    shuffle_regions,
)
from vlmfo1.training.tiny import init_tiny
from vlmfo1.data.shapeworld.text_tasks import lookup_records

REGION = re.compile(r"<region(\d+)>")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tokenizer(small_shapeworld_tokenizer):
    return small_shapeworld_tokenizer


@pytest.fixture(scope="module")
def processor(tokenizer):
    return FO1Processor(FO1ImageProcessor(min_pixels=56 * 56, max_pixels=112 * 112, aux_image_size=64), tokenizer)


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png", "c.png"):
        Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(folder / name)
    return folder


def grounded_record(rid="r0", image="a.png", gt=None, answer=None, extra_turns=()):
    gt = gt if gt is not None else [[10, 10, 40, 40], [60, 20, 100, 70]]
    answer = answer or prompts.format_grounded_answer([("circle", [1]), ("square", [0])])
    record = FO1Record.single_turn(rid, image, prompts.detection_prompt(["circle", "square"]), answer,
                                   bbox_list=gt, score_list=[1.0] * len(gt), task="detection")
    record.conversations += list(extra_turns)
    return record


# ---------------------------------------------------------------------------------------------
# Matching and rewriting
# ---------------------------------------------------------------------------------------------


def test_ground_truth_takes_the_overlapping_proposal_and_uncovered_boxes_are_mixed_in():
    gt = [[10, 10, 50, 50], [100, 100, 140, 150]]
    proposals = [[12, 11, 49, 52], [0, 0, 5, 5], [200, 200, 220, 230]]  # only gt 0 is covered
    result = match_ground_truth(gt, proposals, [0.9, 0.5, 0.4], np.random.default_rng(0))
    assert len(result.boxes) == 4 and (result.matched, result.mixed_in) == (1, 1)
    assert result.boxes[result.gt_to_region[0]] == [12, 11, 49, 52]  # the proposal, not the annotation
    assert result.boxes[result.gt_to_region[1]] == [100, 100, 140, 150]  # mixed in as annotated
    assert sorted(map(tuple, result.boxes)) == sorted(map(tuple, proposals + [gt[1]]))


def test_matching_is_one_to_one_and_the_threshold_is_configurable():
    gt = [[10, 10, 50, 50], [11, 11, 51, 51]]
    proposals = [[10, 10, 50, 50]]
    result = match_ground_truth(gt, proposals, None, np.random.default_rng(0), shuffle=False)
    assert result.matched == 1 and result.mixed_in == 1
    assert result.gt_to_region[0] != result.gt_to_region[1]
    # IoU of [0,0,40,40] with [10,10,50,50] is 900/2300 = 0.39: matched at 0.3, mixed in at 0.5.
    loose = match_ground_truth([[0, 0, 40, 40]], proposals, None, np.random.default_rng(0), iou_threshold=0.3)
    strict = match_ground_truth([[0, 0, 40, 40]], proposals, None, np.random.default_rng(0), iou_threshold=0.5)
    assert (loose.matched, len(loose.boxes)) == (1, 1)
    assert (strict.matched, len(strict.boxes)) == (0, 2)


def test_the_list_is_capped_keeping_every_target_and_the_best_proposals():
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 900, size=(150, 2))
    proposals = np.concatenate([xy, xy + 20], axis=1).tolist()
    scores = rng.uniform(0, 1, size=150).tolist()
    gt = [[2000, 2000, 2050, 2050], [3000, 3000, 3010, 3010], proposals[7]]  # two uncovered, one exact
    result = match_ground_truth(gt, proposals, scores, np.random.default_rng(0), max_regions=100)
    assert len(result.boxes) == 100
    for k, box in enumerate(gt):
        assert result.boxes[result.gt_to_region[k]] == box
    # 100 - 3 targets = 97 other proposals, the best-scored ones.
    others = sorted((s for i, s in enumerate(scores) if i != 7), reverse=True)[:97]
    kept_scores = sorted((s for i, s in enumerate(result.scores) if i not in result.gt_to_region), reverse=True)
    assert kept_scores == pytest.approx(others)


def test_attach_rewrites_every_turn_and_answers_point_at_covering_boxes():
    follow_up = [{"from": "human", "value": "Describe <region1>."}, {"from": "gpt", "value": "It is <region1>."}]
    record = grounded_record(extra_turns=follow_up)
    proposals = [[61, 22, 99, 69], [9, 9, 41, 41], [0, 60, 30, 90]]
    attached, result = attach_proposals(record, proposals, [0.8, 0.7, 0.6], np.random.default_rng(3))
    attached.validate()
    assert result.matched == 2 and len(attached.bbox_list) == 3
    circle = REGION.findall(attached.answer.split("</objects>")[0])
    assert [attached.bbox_list[int(i)] for i in circle] == [[61, 22, 99, 69]]  # gt 1 -> its proposal
    new = result.gt_to_region[1]
    assert attached.conversations[2]["value"] == f"Describe <region{new}>."
    assert attached.conversations[3]["value"] == f"It is <region{new}>."


def test_rewrite_is_a_single_pass_and_rejects_unknown_indexes():
    assert rewrite_regions("<region1><region2>", [0, 2, 1]) == "<region2><region1>"
    with pytest.raises(ValueError, match="region5"):
        rewrite_regions("<region5>", [0, 1])


def test_shuffled_regions_keep_naming_the_same_boxes():
    record = grounded_record(gt=[[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50], [60, 60, 70, 70]],
                             answer=prompts.format_grounded_answer([("circle", [3, 1])]))
    named = lambda r: sorted(tuple(r.bbox_list[int(i)]) for i in REGION.findall(r.answer))
    orders = set()
    for seed in range(5):
        shuffled = shuffle_regions(record, np.random.default_rng(seed))
        assert named(shuffled) == named(record)
        orders.add(tuple(map(tuple, shuffled.bbox_list)))
    assert len(orders) > 1


def test_region_texts_move_with_their_boxes():
    boxes = [[10 * k, 0, 10 * k + 5, 5] for k in range(6)]
    record = dataclasses.replace(grounded_record(gt=boxes, answer=prompts.format_grounded_answer([("circle", [4, 1])])),
                                 region_text=[f"word{k}" for k in range(6)])
    text_of = lambda r: {tuple(b): t for b, t in zip(r.bbox_list, r.region_text)}
    for changed in (shuffle_regions(record, np.random.default_rng(1)), keep_regions(record, 3, np.random.default_rng(1))):
        assert changed.bbox_list != record.bbox_list
        assert text_of(changed).items() <= text_of(record).items() and len(changed.region_text) == len(changed.bbox_list)
        changed.validate()
    # Proposals replace the boxes, and the words belong to the old ones: refused, not mismatched.
    with pytest.raises(ValueError, match="has region_text, the words of its own boxes"):
        attach_proposals(record, boxes, None, np.random.default_rng(0))


def test_keep_regions_keeps_every_named_region_and_fills_up_with_others(tmp_path, processor, image_dir):
    boxes = [[10 * k, 0, 10 * k + 5, 5] for k in range(8)]
    record = grounded_record(gt=boxes, answer=prompts.format_grounded_answer([("circle", [6, 2])]))
    named = lambda r: sorted(tuple(r.bbox_list[int(i)]) for i in REGION.findall(r.answer))
    kept_sets = set()
    for seed in range(6):
        kept = keep_regions(record, 3, np.random.default_rng(seed))
        assert len(kept.bbox_list) == len(kept.score_list) == 3 and named(kept) == named(record)
        assert [b for b in boxes if b in kept.bbox_list] == kept.bbox_list  # order kept
        kept_sets.add(tuple(map(tuple, kept.bbox_list)))
    assert len(kept_sets) > 1
    # Named regions are never dropped, even past n; a short list is left alone.
    assert named(keep_regions(record, 1, np.random.default_rng(0))) == named(record)
    assert keep_regions(record, 8, np.random.default_rng(0)) == record
    # Through the dataset (`data.regions_per_sample`), before the shuffle.
    write_records(tmp_path / "r.jsonl", [record])
    dataset = FO1TrainingDataset([load_source(tmp_path / "r.jsonl", images=image_dir)], processor,
                                 shuffle_regions=True, regions_per_sample=4)
    prepared, _ = dataset.prepared(0)
    assert len(prepared.bbox_list) == 4 and named(prepared) == named(record)
    with pytest.raises(ValueError, match="at least 1"):
        FO1TrainingDataset([load_source(tmp_path / "r.jsonl", images=image_dir)], processor, regions_per_sample=0)


# ---------------------------------------------------------------------------------------------
# Proposal sources
# ---------------------------------------------------------------------------------------------


def test_proposal_file_is_looked_up_by_image_id_then_file_name(tmp_path):
    rows = [{"id": 7, "image": "x/a.png", "bbox_list": [[1, 1, 5, 5]], "score_list": [0.5]},
            {"id": 8, "image": "b.png", "bbox_list": [[2, 2, 6, 6]], "score_list": [0.4]}]
    path = tmp_path / "props.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    source = ProposalFile(path)
    by_id = grounded_record(image="elsewhere.png")
    by_id.meta["image_id"] = 7
    assert source(by_id, None) == ([[1.0, 1.0, 5.0, 5.0]], [0.5])
    assert source(grounded_record(image="images/b.png"), None) == ([[2.0, 2.0, 6.0, 6.0]], [0.4])
    with pytest.raises(KeyError, match="c.png"):
        source(grounded_record(image="c.png"), None)


def test_proposer_runs_once_per_image():
    calls = []

    class FakeProposals:
        def __init__(self):
            self.boxes = np.array([[1.0, 2.0, 30.0, 40.0]])
            self.scores = np.array([0.9])

    def proposer(image):
        calls.append(image)
        return FakeProposals()

    source = ProposerSource(proposer)
    first = source(grounded_record(rid="1", image="a.png"), "pixels-a")
    again = source(grounded_record(rid="2", image="a.png"), "pixels-a")
    source(grounded_record(rid="3", image="b.png"), "pixels-b")
    assert first == again == ([[1.0, 2.0, 30.0, 40.0]], [0.9])
    assert calls == ["pixels-a", "pixels-b"]


# ---------------------------------------------------------------------------------------------
# Samples, labels and batches
# ---------------------------------------------------------------------------------------------


def test_labels_cover_assistant_tokens_only(processor, image_dir):
    record = grounded_record(extra_turns=[{"from": "human", "value": "And <region0>?"},
                                          {"from": "gpt", "value": "A small red circle"}])
    sample = encode_record(record, Image.open(image_dir / "a.png"), processor)
    ids, labels = sample["input_ids"], sample["labels"]
    trained = ids[labels != -100]
    text = processor.tokenizer.decode(trained)
    assert text == record.answer + "<|im_end|>" + "A small red circle<|im_end|>"
    for token in ("<|image_pad|>", "<regionfeat>"):
        token_id = processor.tokenizer.convert_tokens_to_ids(token)
        assert (ids == token_id).any() and not (labels == token_id).any()
    assert (ids == processor.region_token_id).sum() == len(record.bbox_list) == sample["region_boxes"].shape[0]


def test_too_long_samples_are_cut_after_the_image_or_refused(processor, image_dir):
    record = grounded_record()
    image = Image.open(image_dir / "a.png")
    full = encode_record(record, image, processor)
    cut = encode_record(record, image, processor, max_length=full["input_ids"].shape[0] - 3)
    assert torch.equal(cut["input_ids"], full["input_ids"][:-3])
    with pytest.raises(ValueError, match="max_length"):
        encode_record(record, image, processor, max_length=10)


@pytest.fixture(scope="module")
def tiny_model(tokenizer):
    model, _ = init_tiny(None, size="tiny", tokenizer=tokenizer, max_pixels=112 * 112, aux_image_size=64)
    return model.eval()


def test_a_padded_batch_gives_each_sample_its_own_loss(processor, image_dir, tiny_model):
    records = [
        FO1Record.single_turn("q", "b.png", "Is there a red circle in this image?", "Yes", task="image_qa"),
        grounded_record(rid="d3", image="a.png", gt=[[0, 0, 30, 30], [40, 10, 90, 60], [5, 50, 60, 90]],
                        answer=prompts.format_grounded_answer([("circle", [2, 0])])),
        grounded_record(rid="d2", image="c.png"),
    ]
    samples = [encode_record(r, Image.open(image_dir / r.image), processor) for r in records]
    batch = FO1Collator(processor.tokenizer.pad_token_id)(samples)
    assert batch["region_boxes"].shape == (3, 3, 4) and batch["image_grid_thw"].shape[0] == 3
    assert batch["attention_mask"].sum(1).tolist() == [s["input_ids"].shape[0] for s in samples]
    with torch.no_grad():
        batch_loss = tiny_model(**batch).loss
        total, count = 0.0, 0
        for sample in samples:
            single = FO1Collator(processor.tokenizer.pad_token_id)([sample])
            n = int((sample["labels"][1:] != -100).sum())
            total += tiny_model(**single).loss * n
            count += n
    torch.testing.assert_close(batch_loss, total / count, atol=1e-5, rtol=1e-5)


def test_dataset_attaches_proposals_per_epoch_and_the_sampler_says_which(tmp_path, processor, image_dir):
    records = [grounded_record(rid=f"r{i}", image=name) for i, name in enumerate(["a.png", "b.png", "c.png"])]
    write_records(tmp_path / "recs.jsonl", records)
    props = [{"id": i, "image": name, "bbox_list": [[9, 9, 41, 41], [0, 0, 20, 90], [59, 19, 101, 71], [70, 0, 120, 30]],
              "score_list": [0.9, 0.8, 0.7, 0.6]} for i, name in enumerate(["a.png", "b.png", "c.png"])]
    (tmp_path / "props.jsonl").write_text("".join(json.dumps(p) + "\n" for p in props))
    source = load_source(tmp_path / "recs.jsonl", images=image_dir, proposals={"file": str(tmp_path / "props.jsonl")})
    dataset = FO1TrainingDataset([source], processor, seed=0)
    assert len(dataset) == 3
    epoch0, _ = dataset.prepared(1)
    epoch1, _ = dataset.prepared(1 + len(dataset))
    assert epoch0.bbox_list != epoch1.bbox_list or epoch0.answer != epoch1.answer  # a new shuffle each epoch
    again, _ = dataset.prepared(1)
    assert again.to_dict() == epoch0.to_dict()  # and the same one every time it is asked
    for record in (epoch0, epoch1):
        circle = [record.bbox_list[int(i)] for i in REGION.findall(record.answer.split("</objects>")[0])]
        assert pairwise_iou(circle, [[60, 20, 100, 70]])[0, 0] >= 0.5
    sampler = EpochSampler(3, seed=5)
    first = list(sampler)
    sampler.set_epoch(1)
    second = list(sampler)
    assert sorted(first) == [0, 1, 2] and sorted(second) == [3, 4, 5]
    assert first == list(EpochSampler(3, seed=5))


def test_sources_mix_with_repeats(tmp_path, processor, image_dir):
    write_records(tmp_path / "one.jsonl", [grounded_record(rid=f"a{i}") for i in range(4)])
    write_records(tmp_path / "two.jsonl", [grounded_record(rid=f"b{i}") for i in range(10)])
    dataset = FO1TrainingDataset(
        [load_source(tmp_path / "one.jsonl", images=image_dir, repeat=2),
         load_source(tmp_path / "two.jsonl", images=image_dir, repeat=0.5)], processor)
    ids = [dataset.record(k)[0].id for k in range(len(dataset))]
    assert len(ids) == 13
    assert all(ids.count(f"a{i}") == 2 for i in range(4)) and len({i for i in ids if i.startswith("b")}) == 5


# ---------------------------------------------------------------------------------------------
# Converters
# ---------------------------------------------------------------------------------------------


def coco_file(num_images=300):
    rng = np.random.default_rng(0)
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(["cat", "dog", "bird", "car", "bus"])]
    images, annotations = [], []
    for image_id in range(num_images):
        images.append({"id": image_id, "file_name": f"{image_id:06d}.jpg", "width": 200, "height": 200})
        for _ in range(int(rng.integers(1, 4))):
            x, y = rng.uniform(0, 150, 2)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(rng.integers(1, 4)),
                                "bbox": [float(x), float(y), 30.0, 20.0], "iscrowd": 0})
    annotations.append({"id": len(annotations) + 1, "image_id": 0, "category_id": 1, "bbox": [0, 0, 200, 200], "iscrowd": 1})
    return {"images": images, "annotations": annotations, "categories": categories}


def test_coco_records_answer_present_categories_and_reject_at_the_asked_share():
    coco = coco_file()
    conversion = coco_to_records(coco, rejection_share=0.2, seed=0)
    assert conversion.skipped["crowd annotation"] == 1 and len(conversion.records) == 300
    rejections = [r for r in conversion.records if r.task == "rejection"]
    assert 0.14 < len(rejections) / 300 < 0.26  # binomial(300, 0.2): 4 standard deviations
    names = {c["id"]: c["name"] for c in coco["categories"]}
    for record in conversion.records:
        present = {names[a["category_id"]] for a in coco["annotations"]
                   if a["image_id"] == record.meta["image_id"] and not a["iscrowd"]}
        asked = set(record.prompt.removeprefix("Please detect ").split(" in this image")[0].split(", "))
        if record.task == "rejection":
            assert record.answer == prompts.NO_OBJECT_ANSWER and not asked & present
            continue
        assert present <= asked
        for label, indexes in re.findall(r"<ground>(.*?)</ground><objects>(.*?)</objects>", record.answer):
            named = [record.meta["labels"][int(i)] for i in REGION.findall(indexes)]
            assert named == [label] * record.meta["labels"].count(label)
    assert coco_to_records(coco, rejection_share=0.0).counts["rejection"] == 0


def test_refcoco_referring_region_caption_and_llava_converters(tmp_path):
    refs = [{"ref_id": 1, "ann_id": 11, "image_id": 5, "split": "train", "sentences": [{"sent_id": 3, "sent": "left dog"}]},
            {"ref_id": 2, "ann_id": 12, "image_id": 5, "split": "val", "sentences": [{"sent_id": 4, "sent": "cat"}]}]
    (tmp_path / "refs(unc).p").write_bytes(pickle.dumps(refs))
    (tmp_path / "instances.json").write_text(json.dumps({
        "images": [{"id": 5, "file_name": "five.jpg"}],
        "annotations": [{"id": 11, "bbox": [10, 20, 30, 40]}, {"id": 12, "bbox": [0, 0, 5, 5]}]}))
    rec = refcoco_to_records(tmp_path, "train").records
    assert len(rec) == 1 and rec[0].bbox_list == [[10.0, 20.0, 40.0, 60.0]]
    assert rec[0].answer == "<ground>left dog</ground><objects><region0></objects>"

    rows = [{"image_name": "h.jpg", "referring": "man in red", "answer_boxes": [[0, 0, 10, 10], [20, 0, 30, 10]],
             "candidate_boxes": [[0, 0, 10, 10], [50, 50, 60, 60]]},
            {"image": "h.jpg", "expression": "a giraffe", "boxes": []},
            {"image": "h.jpg", "expression": "broken", "boxes": [[5, 5, 5, 9]]}]
    (tmp_path / "ref.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    conversion = referring_to_records(tmp_path / "ref.jsonl")
    multi, rejection = conversion.records
    assert len(multi.bbox_list) == 3 and multi.answer.endswith("<region0><region1></objects>")
    assert rejection.task == "rejection" and rejection.answer == "None"
    assert conversion.skipped["degenerate target box"] == 1

    captions = [{"image": "c.jpg", "regions": [{"bbox": [0, 0, 10, 10], "caption": "a dog"},
                                               {"bbox": [5, 5, 50, 50], "caption": "a long red bus", "detailed": True}]},
                {"image": "c.jpg", "bbox": [1, 1, 2, 2], "caption": ""}]
    (tmp_path / "cap.json").write_text(json.dumps(captions))
    conversion = region_captions_to_records(tmp_path / "cap.json")
    assert [r.prompt for r in conversion.records] == [prompts.brief_caption_prompt([0]), prompts.detailed_caption_prompt([1])]
    assert all(len(r.bbox_list) == 2 for r in conversion.records) and conversion.skipped["empty caption"] == 1

    llava = [{"id": "a", "image": "x.jpg", "conversations": [{"from": "human", "value": "What is it?\n<image>"},
                                                              {"from": "gpt", "value": "A cat."}]},
             {"id": "b", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}]
    (tmp_path / "llava.json").write_text(json.dumps(llava))
    conversion = llava_to_records(tmp_path / "llava.json")
    assert conversion.records[0].conversations[0]["value"] == "<image>\nWhat is it?"
    assert conversion.skipped["text-only row"] == 1
    write_records(tmp_path / "out.jsonl", conversion.records)
    assert [r.id for r in read_records(tmp_path / "out.jsonl")] == ["a"]


def test_proposals_from_a_registry_proposer_on_the_fly(tmp_path, processor):
    pytest.importorskip("cv2")
    from vlmfo1.data.shapeworld import ShapeWorldConfig, write_dataset

    config = ShapeWorldConfig.train(objects_per_image=(3, 5), image_size=(128, 128), task_counts={"detection": 1})
    write_dataset(tmp_path, n=2, seed=0, split="train", config=config, coordinates=False)
    # Treat the records' own boxes as "ground truth" and let the contour proposer supply the regions.
    source = load_source(tmp_path / "train.fo1.jsonl", proposals={"proposer": "contours"})
    dataset = FO1TrainingDataset([source], processor, seed=0)
    for k in range(len(dataset)):
        original, _, _ = dataset.record(k)
        record, _ = dataset.prepared(k)
        named = lambda r: [r.bbox_list[int(i)] for i in REGION.findall(r.answer)]
        targets, found = named(original), named(record)
        assert len(found) == len(targets)
        if targets:
            # One-to-one matching: every target has its own named box, the same or overlapping >= 0.5.
            iou = pairwise_iou(targets, found)
            assert all(iou[i].max() >= 0.5 for i in range(len(targets)))
        assert dataset[k]["region_boxes"].shape[0] == len(record.bbox_list)


def test_a_sample_that_cannot_be_made_names_its_record(tmp_path, processor, image_dir):
    from vlmfo1.training.data import SampleError

    write_records(tmp_path / "recs.jsonl", [grounded_record(rid="fine", image="a.png"),
                                            grounded_record(rid="lost", image="missing.png")])
    dataset = FO1TrainingDataset([load_source(tmp_path / "recs.jsonl", images=image_dir)], processor)
    assert dataset[0]["input_ids"].ndim == 1
    with pytest.raises(SampleError, match=r"recs.jsonl: record 'lost': image file not found"):
        dataset[1]


def test_text_only_records_train_alone_and_in_a_batch_with_images(processor, image_dir, tiny_model):
    text = FO1Record.single_turn("t", None, "Items: (A) red circle (B) blue star. Find stars.", "star: (B)")
    with_image = grounded_record(rid="d2", image="c.png")
    text_sample = encode_record(text, None, processor)
    assert "pixel_values" not in text_sample and text_sample["region_boxes"].shape == (0, 4)
    assert processor.tokenizer.decode(text_sample["input_ids"][text_sample["labels"] != -100]) == "star: (B)<|im_end|>"
    image_sample = encode_record(with_image, Image.open(image_dir / "c.png"), processor)
    collate = FO1Collator(processor.tokenizer.pad_token_id)
    with torch.no_grad():
        # An image batch first leaves a rope delta behind; a text-only batch must not reuse it.
        image_alone = tiny_model(**collate([image_sample])).loss
        text_alone = tiny_model(**collate([text_sample])).loss
        text_twice = tiny_model(**collate([text_sample, text_sample])).loss
        mixed = tiny_model(**collate([text_sample, image_sample]))
    torch.testing.assert_close(text_twice, text_alone)
    n_text = int((text_sample["labels"][1:] != -100).sum())
    n_image = int((image_sample["labels"][1:] != -100).sum())
    torch.testing.assert_close(mixed.loss, (text_alone * n_text + image_alone * n_image) / (n_text + n_image),
                               atol=1e-5, rtol=1e-5)


def test_text_only_dataset_records_skip_image_loading(tmp_path, processor):
    records = lookup_records(3, seed=0)
    write_records(tmp_path / "text.jsonl", records)
    dataset = FO1TrainingDataset([load_source(tmp_path / "text.jsonl")], processor, seed=0)
    sample = dataset[0]
    assert "pixel_values" not in sample and processor.tokenizer.decode(sample["input_ids"]).count("Items:") == 1


def test_region_text_slots_hold_word_embedding_sums_beside_image_regions(processor, image_dir, tiny_model):
    slots = lookup_records(1, seed=3, max_items=3, keys="slots", split="t")[0]
    slots_sample = encode_record(slots, None, processor)
    n = len(slots.region_text)
    ids = slots_sample["input_ids"]
    assert int((ids == processor.region_token_id).sum()) == n
    assert processor.tokenizer.decode(ids).count("<region0><regionfeat>") == 1
    assert [processor.tokenizer.decode(t).strip() for t in slots_sample["region_text_ids"]] == slots.region_text
    image_sample = encode_record(grounded_record(rid="d2", image="c.png"), Image.open(image_dir / "c.png"), processor)
    collate = FO1Collator(processor.tokenizer.pad_token_id)
    mixed, image_alone = collate([image_sample, slots_sample]), collate([image_sample])
    assert mixed["region_text_ids"].shape[:2] == (2, n) and bool((mixed["region_text_ids"][0] == -1).all())
    embed = tiny_model.get_input_embeddings()
    with torch.no_grad():
        keys = ("input_ids", "pixel_values", "image_grid_thw", "aux_pixel_values", "region_boxes", "region_text_ids")
        mixed_embeds = tiny_model.embed_inputs(*(mixed[k] for k in keys))
        alone_embeds = tiny_model.embed_inputs(*(image_alone.get(k) for k in keys))
        row = mixed["input_ids"][1] == processor.region_token_id
        expected = torch.stack([embed(t).sum(0) for t in slots_sample["region_text_ids"]])
        torch.testing.assert_close(mixed_embeds[1][row], expected)
        length = image_sample["input_ids"].shape[0]
        torch.testing.assert_close(mixed_embeds[0, :length], alone_embeds[0])  # image regions untouched
        assert torch.isfinite(tiny_model(**mixed).loss)
        # Text-only batches need no image at all.
        assert torch.isfinite(tiny_model(**collate([slots_sample])).loss)
        broken = dict(mixed, region_text_ids=mixed["region_text_ids"][:, :-1])
        with pytest.raises(ValueError, match="region slots .* and region texts .* differ"):
            tiny_model(**broken)
    # The slots train the embeddings they are made of: a word that is nowhere else in the text.
    batch = collate([slots_sample])
    word = next(t for t in range(10, embed.num_embeddings) if t not in batch["input_ids"])
    batch["region_text_ids"][0, 0] = -1
    batch["region_text_ids"][0, 0, 0] = word
    tiny_model.zero_grad()
    tiny_model(**batch).loss.backward()
    assert embed.weight.grad[word].abs().sum() > 0
    tiny_model.zero_grad()


def test_an_image_records_region_text_fills_its_own_slots_and_keeps_the_image(processor, image_dir, tiny_model):
    plain = grounded_record(rid="w1", image="c.png")
    words = dataclasses.replace(plain, region_text=[f"red shape{k}" for k in range(len(plain.bbox_list))])
    image = Image.open(image_dir / "c.png")
    plain_sample, words_sample = encode_record(plain, image, processor), encode_record(words, image, processor)
    # The same prompt: the words go into the slots the boxes make, no second list of slots.
    assert torch.equal(plain_sample["input_ids"], words_sample["input_ids"])
    collate = FO1Collator(processor.tokenizer.pad_token_id)
    keys = ("input_ids", "pixel_values", "image_grid_thw", "aux_pixel_values", "region_boxes", "region_text_ids")
    with torch.no_grad():
        plain_embeds = tiny_model.embed_inputs(*(collate([plain_sample]).get(k) for k in keys))[0]
        words_embeds = tiny_model.embed_inputs(*(collate([words_sample]).get(k) for k in keys))[0]
    ids = words_sample["input_ids"]
    slots = ids == processor.region_token_id
    embed = tiny_model.get_input_embeddings()
    torch.testing.assert_close(words_embeds[slots], torch.stack([embed(t).sum(0) for t in words_sample["region_text_ids"]]))
    torch.testing.assert_close(words_embeds[~slots], plain_embeds[~slots])  # image features and text as before
    assert not torch.allclose(words_embeds[slots], plain_embeds[slots])
