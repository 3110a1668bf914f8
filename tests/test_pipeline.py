"""FO1Pipeline tasks on a scripted tiny model: region indexes -> boxes in original pixels, scores,
per-category questions, chunking past 100 regions, serialisation, proposers, pictures."""
from __future__ import annotations

import json
import math

import jsonschema
import numpy as np
import pytest
import torch
from PIL import Image

from pipeline_support import ANSWER, make_processor, random_boxes, scripted_model
from vlmfo1 import prompts
from vlmfo1.evaluation.box_ops import box_iou
from vlmfo1.pipeline import FO1Pipeline, FO1Result, TaskRequest, parse_categories
from vlmfo1.pipeline.chunking import ChunkedRegion, merge_chunk_regions, plan_chunks
from vlmfo1.pipeline.pipeline import BUNDLED_MODELS, resolve_model_path
from vlmfo1.pipeline.results import RESULT_JSON_SCHEMA, ProposalSet, Region, results_to_coco
from vlmfo1.pipeline.scoring import GrammarTokenIds, RegionProbabilities, region_emissions, select_score
from vlmfo1.pipeline.visualize import PALETTE, draw_result

WIDTH, HEIGHT = 640, 480  # larger than the processor's 112x112 working size: boxes must come back in these pixels
RUNNER_UP_GAP = 1.0  # the scripted model emits <region3> with probability ~ 1 / (1 + e^-1)


@pytest.fixture(scope="module")
def processor():
    return make_processor()


@pytest.fixture(scope="module")
def model(processor):
    return scripted_model(processor, region_runner_up={"<region3>": RUNNER_UP_GAP})


@pytest.fixture()
def pipeline(model, processor):
    return FO1Pipeline(model, processor, proposer=None, max_new_tokens=16)


@pytest.fixture(scope="module")
def image():
    return Image.new("RGB", (WIDTH, HEIGHT), (30, 90, 200))


BOXES = random_boxes(6, WIDTH, HEIGHT, 0)
SCORES = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]


def test_detect_returns_the_proposals_boxes_in_original_pixels(pipeline, image):
    result = pipeline.detect(image, "red circle", boxes=BOXES, scores=SCORES)
    assert result.raw_answers == [ANSWER]
    assert [(r.label, r.index) for r in result.detections] == [("red circle", 1), ("red circle", 3)]
    assert [r.box for r in result.detections] == [BOXES[1], BOXES[3]]
    assert [r.score for r in result.detections] == [SCORES[1], SCORES[3]]  # default: proposal score
    assert result.boxes_by_label() == {"red circle": [BOXES[1], BOXES[3]]}
    assert result.image_size == (WIDTH, HEIGHT)
    assert result.queries == [prompts.detection_prompt("red circle")]
    assert result.warnings == []


def test_llm_and_combined_scores(model, processor, image):
    results = {
        mode: FO1Pipeline(model, processor, proposer=None, score=mode, max_new_tokens=16).detect(
            image, "red circle", boxes=BOXES, scores=SCORES
        )
        for mode in ("proposal", "llm", "combined")
    }
    region1, region3 = results["llm"].detections
    # <region1> has no competitor (probability ~1); <region3> has one 1 logit below it.
    assert region1.llm_score > 0.999
    assert region3.llm_score == pytest.approx(1 / (1 + math.exp(-RUNNER_UP_GAP)), abs=2e-3)
    assert [r.score for r in results["llm"].detections] == [region1.llm_score, region3.llm_score]
    combined = results["combined"].detections
    assert [r.score for r in combined] == pytest.approx([SCORES[1] * region1.llm_score, SCORES[3] * region3.llm_score])
    # Every mode keeps all three numbers, only `score` differs.
    assert results["proposal"].detections[1].llm_score == pytest.approx(region3.llm_score)


def test_llm_score_is_the_probability_of_the_region_token_in_a_full_forward(model, processor, image):
    result = FO1Pipeline(model, processor, proposer=None, score="llm").detect(image, "red circle", boxes=BOXES)
    inputs = processor(images=image, boxes=BOXES, text=prompts.detection_prompt("red circle"))
    answer_ids = processor.tokenizer(ANSWER, add_special_tokens=False)["input_ids"]
    full = torch.cat([inputs["input_ids"], torch.tensor([answer_ids])], dim=1)
    with torch.no_grad():
        logits = model(**{**inputs, "input_ids": full, "attention_mask": torch.ones_like(full)}).logits[0]
    start = inputs["input_ids"].shape[1]
    region3 = processor.tokenizer.convert_tokens_to_ids("<region3>")
    step = answer_ids.index(region3)
    expected = logits[start - 1 + step].softmax(-1)[region3].item()
    assert result.detections[1].llm_score == pytest.approx(expected, rel=1e-4)


def test_boxes_without_scores_score_one_and_are_clipped(pipeline, image):
    outside = [list(b) for b in BOXES]
    outside[1] = [-50.0, -20.0, 100.0, 90.0]
    result = pipeline.detect(image, "red circle", boxes=outside)
    assert result.proposals.scores is None
    assert result.detections[0].box == [0.0, 0.0, 100.0, 90.0]
    assert result.detections[0].proposal_score is None and result.detections[0].score == 1.0


def test_per_category_questions_share_the_image_and_take_the_asked_labels(pipeline, image, monkeypatch):
    seen = []
    original = pipeline.generator.generate
    monkeypatch.setattr(pipeline.generator, "generate", lambda calls: seen.extend(calls) or original(calls))
    result = pipeline.detect(image, ["red circle", "blue star"], boxes=BOXES, per_category=True)
    assert [c.messages[0]["content"] for c in seen] == [prompts.detection_prompt("red circle"), prompts.detection_prompt("blue star")]
    assert len({c.share_key for c in seen}) == 1
    assert [(r.label, r.index) for r in result.detections] == [
        ("red circle", 1), ("red circle", 3), ("blue star", 1), ("blue star", 3)
    ]
    # The scripted model says "red circle" to the blue-star question too: kept under the asked label, and said so.
    assert any("'red circle'; kept as the asked 'blue star'" in w for w in result.warnings)


def test_one_prompt_detection_flags_labels_that_were_not_asked(pipeline, image):
    result = pipeline.detect(image, "blue star, green square", boxes=BOXES)
    assert result.queries == [prompts.detection_prompt(["blue star", "green square"])]
    assert [r.label for r in result.detections] == ["red circle", "red circle"]
    assert any("not among the asked categories" in w for w in result.warnings)


def test_250_proposals_are_all_asked_in_chunks_and_merged(pipeline, image, monkeypatch):
    boxes = random_boxes(250, WIDTH, HEIGHT, 1)
    scores = np.linspace(1.0, 0.2, 250).tolist()
    # Proposal 85 (region 1 of the second chunk) nearly repeats proposal 1 (region 1 of the first).
    boxes[85] = [boxes[1][0] + 1, boxes[1][1], boxes[1][2] + 1, boxes[1][3]]
    seen = []
    original = pipeline.generator.generate
    monkeypatch.setattr(pipeline.generator, "generate", lambda calls: seen.extend(calls) or original(calls))
    result = pipeline.detect(image, "red circle", boxes=boxes, scores=scores)

    assert [len(c.boxes) for c in seen] == [84, 83, 83]
    shown = np.concatenate([c.boxes for c in seen])
    np.testing.assert_allclose(shown, np.array(boxes))  # every proposal once, in order
    assert result.num_chunks == 3 and len(result.proposals) == 250
    # Each chunk names its regions 1 and 3: 1, 3 | 85, 87 | 168, 170; 85 duplicates 1 (lower score).
    assert box_iou(boxes[1], boxes[85]) > 0.9
    assert [r.index for r in result.detections] == [1, 3, 87, 168, 170]
    assert all(r.box == boxes[r.index] for r in result.detections)
    assert any("merged" in w for w in result.warnings)
    assert any("3 chunks" in w for w in result.warnings)


def test_count_over_chunks_counts_merged_regions(pipeline, image):
    result = pipeline.count(image, "red circles", boxes=random_boxes(150, WIDTH, HEIGHT, 2))
    assert result.num_chunks == 2
    assert result.count == len(result.detections) == 4
    assert any("number of merged regions" in w for w in result.warnings)


def test_free_text_tasks_refuse_more_regions_than_the_model_holds(pipeline, image):
    with pytest.raises(ValueError, match="at most that many boxes"):
        pipeline.ask(image, "What is this?", boxes=random_boxes(101, WIDTH, HEIGHT, 3))
    with pytest.raises(ValueError, match="holds 100"):
        pipeline.grounded_caption(image, boxes=random_boxes(120, WIDTH, HEIGHT, 3))


def test_caption_asks_about_every_box_on_one_encoded_image(pipeline, image, monkeypatch):
    seen = []
    original = pipeline.generator.generate
    monkeypatch.setattr(pipeline.generator, "generate", lambda calls: seen.extend(calls) or original(calls))
    result = pipeline.caption(image, BOXES[:3])
    assert [c.messages[0]["content"] for c in seen] == [prompts.brief_caption_prompt([k]) for k in range(3)]
    assert len({c.share_key for c in seen}) == 1
    assert [(a.index, a.box) for a in result.region_answers] == [(k, BOXES[k]) for k in range(3)]
    assert all(a.text == "red circle" for a in result.region_answers)
    detailed = pipeline.caption(image, BOXES[:1], detailed=True)
    assert detailed.queries == [prompts.detailed_caption_prompt([0])]
    assert pipeline.ocr(image, BOXES[:2]).queries == [prompts.ocr_prompt([0]), prompts.ocr_prompt([1])]


def test_caption_of_more_than_100_boxes_asks_each_in_its_chunk(pipeline, image, monkeypatch):
    boxes = random_boxes(130, WIDTH, HEIGHT, 4)
    seen = []
    original = pipeline.generator.generate
    monkeypatch.setattr(pipeline.generator, "generate", lambda calls: seen.extend(calls) or original(calls))
    result = pipeline.caption(image, boxes)
    assert [a.index for a in result.region_answers] == list(range(130))
    # Box 100 is the 35th of the second chunk (65 + 65).
    assert seen[100].messages[0]["content"] == prompts.brief_caption_prompt([35])
    np.testing.assert_allclose(seen[100].boxes[35], boxes[100])


def test_detect_like_puts_the_reference_first_in_every_chunk(pipeline, image, monkeypatch):
    reference = [10.0, 20.0, 110.0, 140.0]
    boxes = random_boxes(150, WIDTH, HEIGHT, 5)
    seen = []
    original = pipeline.generator.generate
    monkeypatch.setattr(pipeline.generator, "generate", lambda calls: seen.extend(calls) or original(calls))
    result = pipeline.detect_like(image, reference, boxes=boxes)
    assert result.proposals.boxes[0] == reference and result.proposals.boxes[1:] == boxes
    assert all(np.allclose(c.boxes[0], reference) for c in seen) and len(seen) == 2
    assert result.queries[0] == prompts.visual_prompt_detection_prompt([0])
    assert [r.index for r in result.detections] == [1, 3, seen_index(seen, 1, 1), seen_index(seen, 1, 3)]


def seen_index(calls, chunk, local):
    """The index in the whole list (reference first) of a chunk's local region."""
    return 1 + sum(len(c.boxes) - 1 for c in calls[:chunk]) + local - 1


def test_ask_reason_grounded_caption_and_chat(model, processor, image):
    mention_model = scripted_model(processor, answer="Look at<region2> now")
    pipeline = FO1Pipeline(mention_model, processor, proposer=None, max_new_tokens=24)
    result = pipeline.reason(image, "How many?", boxes=BOXES)
    assert result.raw_answers == ["Look at<region2> now"] and result.count is None
    assert [(r.index, r.box, r.label) for r in result.mentions] == [(2, BOXES[2], None)]
    assert result.queries == [prompts.reasoning_prompt("How many?")]
    asked = pipeline.ask(image, "What is <region2>?", BOXES)
    assert asked.queries == ["What is <region2>?"] and asked.mentions[0].index == 2
    chat = pipeline.chat([{"role": "user", "content": "Hello <image> there"}], image=image, boxes=BOXES[:3])
    assert chat.mentions[0].box == BOXES[2]
    text_only = pipeline.chat([{"role": "user", "content": "Hello"}])
    assert text_only.proposals.boxes == [] and text_only.image_size == (0, 0)
    grounded = FO1Pipeline(model, processor, proposer=None).grounded_caption(image, boxes=BOXES)
    assert grounded.queries == [prompts.grounded_caption_prompt()]
    assert [r.index for r in grounded.detections] == [1, 3]


def test_run_batches_requests_on_different_images(pipeline):
    images = [Image.new("RGB", (200 + 40 * k, 150), (40 * k, 100, 50)) for k in range(3)]
    requests = [TaskRequest("detect", img, {"categories": "red circle", "boxes": random_boxes(4 + k, img.width, img.height, k)})
                for k, img in enumerate(images)]
    results = pipeline.run(requests)
    for request, result in zip(requests, results):
        assert result.image_size == request.image.size
        assert [r.box for r in result.detections] == [request.args["boxes"][1], request.args["boxes"][3]]


def test_requests_on_one_image_share_its_encoding(pipeline, image, model, monkeypatch):
    encodings = []
    original = model.encode_images
    # Counts the images the ViT encodes (a batch encodes several in one call).
    monkeypatch.setattr(model, "encode_images", lambda pixels, grid: encodings.append(len(grid)) or original(pixels, grid))
    detect, count = pipeline.run([
        TaskRequest("detect", image, {"categories": "red circle", "boxes": BOXES}),
        TaskRequest("count", image.copy(), {"category": "red circles", "boxes": BOXES}),  # same pixels, another object
    ])
    assert sum(encodings) == 1
    assert [r.index for r in detect.detections] == [r.index for r in count.detections] == [1, 3]
    encodings.clear()
    pipeline.run([
        TaskRequest("detect", image, {"categories": "red circle", "boxes": BOXES}),
        TaskRequest("detect", image, {"categories": "red circle", "boxes": BOXES[:5]}),  # other regions: no sharing
    ])
    assert sum(encodings) == 2


def test_proposer_callable_and_registry_spec(model, processor, image, tmp_path):
    class FixedProposer:
        def __call__(self, img):
            return ProposalSet(BOXES, SCORES, source="fixed")

    result = FO1Pipeline(model, processor, proposer=FixedProposer()).detect(image, "red circle")
    assert [r.index for r in result.detections] == [1, 3] and result.proposals.source == "fixed"
    # A registered proposer by spec: the user-boxes proposer looks the boxes up by the image's path.
    path = tmp_path / "picture.png"
    image.save(path)
    (tmp_path / "boxes.json").write_text(json.dumps({"picture.png": {"boxes": BOXES, "scores": SCORES}}))
    by_spec = FO1Pipeline(model, processor, proposer=f"user:{tmp_path / 'boxes.json'}").detect(str(path), "red circle")
    assert by_spec.detections[1].box == pytest.approx(BOXES[3], abs=1e-3)
    assert by_spec.detections[1].proposal_score == pytest.approx(SCORES[3])


def test_bad_inputs_are_clear_errors(pipeline, image, model, processor):
    with pytest.raises(ValueError, match="no proposer"):
        pipeline.detect(image, "red circle")
    with pytest.raises(ValueError, match="3 scores given for 6 boxes"):
        pipeline.detect(image, "red circle", boxes=BOXES, scores=[1, 2, 3])
    with pytest.raises(ValueError, match="NaN"):
        pipeline.detect(image, "red circle", boxes=[[0, 0, float("nan"), 4]])
    with pytest.raises(ValueError, match="no category names"):
        pipeline.detect(image, " , ", boxes=BOXES)
    with pytest.raises(ValueError, match="unknown score mode"):
        FO1Pipeline(model, processor, proposer=None, score="best")
    with pytest.raises(ValueError, match="unknown task"):
        pipeline.run([TaskRequest("segment", image)])
    with pytest.raises(ValueError, match=r"missing \['categories'\]"):
        pipeline.run([TaskRequest("detect", image, {"boxes": BOXES})])
    with pytest.raises(ValueError, match=r"unknown \['per_categroy'\]"):
        pipeline.run([TaskRequest("detect", image, {"categories": "a", "per_categroy": True, "boxes": BOXES})])
    with pytest.raises(ValueError, match="needs at least one box"):
        pipeline.caption(image, [])
    with pytest.raises(FileNotFoundError, match="no model at"):
        resolve_model_path("/nonexistent/model")


def test_a_missing_bundled_model_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(BUNDLED_MODELS, "shapeworld", tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="bundled 'shapeworld' model is not in this installation"):
        FO1Pipeline.from_pretrained("shapeworld", proposer=None)


def test_device_auto_takes_the_gpu_when_there_is_one(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    pipeline = FO1Pipeline.from_pretrained("shapeworld", proposer=None, device="auto")
    assert pipeline.model.device.type == "cpu"
    moved = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, device, *a, **k: moved.append(device) or self)
    FO1Pipeline.from_pretrained("shapeworld", proposer=None, device="auto")
    assert moved == ["cuda"]


def test_parse_categories():
    assert parse_categories("red circle, blue star;green square") == ["red circle", "blue star", "green square"]
    assert parse_categories(["a", " b "]) == ["a", "b"]


def test_json_round_trip_schema_and_coco(pipeline, image):
    result = pipeline.detect(image, "red circle", boxes=BOXES, scores=SCORES)
    data = json.loads(result.to_json())
    jsonschema.validate(data, RESULT_JSON_SCHEMA)
    again = FO1Result.from_dict(data)
    assert again == result
    rows, unknown = result.to_coco(image_id=7, category_ids={"red circle": 3})
    assert unknown == []
    x1, y1, x2, y2 = BOXES[1]
    assert rows[0] == {"image_id": 7, "category_id": 3, "bbox": pytest.approx([x1, y1, x2 - x1, y2 - y1]), "score": SCORES[1]}
    assert result.to_coco(7, {"blue star": 1}) == ([], ["red circle"])
    many, _ = results_to_coco([(1, result), (2, result)], {"red circle": 3})
    assert [row["image_id"] for row in many] == [1, 1, 2, 2]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**data, "score_mode": "best"}, RESULT_JSON_SCHEMA)


def test_plan_chunks():
    assert plan_chunks(5, 100) == [[0, 1, 2, 3, 4]]
    chunks = plan_chunks(250, 100)
    assert [len(c) for c in chunks] == [84, 83, 83] and sum(chunks, []) == list(range(250))
    pinned = plan_chunks(200, 100, pinned=[0])
    assert all(c[0] == 0 for c in pinned) and all(len(c) <= 100 for c in pinned)
    assert sorted(set(sum(pinned, []))) == list(range(200))
    with pytest.raises(ValueError, match="no room"):
        plan_chunks(10, 1, pinned=[0])


def region(index, box, score, label="a"):
    return Region(index, box, label, score, score, None)


def test_merge_removes_cross_chunk_duplicates_only():
    a = region(0, [0, 0, 10, 10], 0.9)
    a_twin_same_chunk = region(1, [0, 0, 10, 11], 0.5)
    a_twin_other_chunk = region(5, [0, 0, 11, 10], 0.8)
    other_label = region(6, [0, 0, 10, 10], 0.7, label="b")
    merged, removed = merge_chunk_regions([
        ChunkedRegion(a, 0), ChunkedRegion(a_twin_same_chunk, 0), ChunkedRegion(a_twin_other_chunk, 1), ChunkedRegion(other_label, 1),
    ])
    assert merged == [a, a_twin_same_chunk, other_label] and removed == 1
    # A lower-scoring earlier chunk loses to a better duplicate from a later chunk.
    low = region(0, [0, 0, 10, 10], 0.1)
    merged, _ = merge_chunk_regions([ChunkedRegion(low, 0), ChunkedRegion(a_twin_other_chunk, 1)])
    assert merged == [a_twin_other_chunk]
    # The same region named by two chunks (a pinned one) is kept once, with its best score.
    merged, removed = merge_chunk_regions([ChunkedRegion(region(0, [0, 0, 5, 5], 0.3), 0), ChunkedRegion(region(0, [0, 0, 5, 5], 0.6), 1)])
    assert [r.score for r in merged] == [0.6] and removed == 1


def test_region_emissions_follow_the_grouping(processor):
    tokenizer = processor.tokenizer
    text = "<ground>red circle</ground><objects><region4><region2></objects> and <region7><ground>star</ground><objects><region4></objects>"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    probabilities = [0.01 * (k + 1) for k in range(len(ids))]
    emissions = region_emissions(ids, probabilities, tokenizer, GrammarTokenIds.from_tokenizer(tokenizer))
    tokens = tokenizer.convert_ids_to_tokens(ids)
    where = {(e.label, e.index): probabilities[k] for k, e in zip([i for i, t in enumerate(tokens) if t.startswith("<region")], emissions)}
    assert [(e.label, e.index) for e in emissions] == [("red circle", 4), ("red circle", 2), (None, 7), ("star", 4)]
    lookup = RegionProbabilities(emissions)
    assert lookup.of(4, "star") == where[("star", 4)]
    assert lookup.of(4, "red circle") == where[("red circle", 4)]
    assert lookup.of(4, "renamed") == max(where[("star", 4)], where[("red circle", 4)])
    assert lookup.of(9) is None
    assert select_score("combined", 0.5, 0.4) == pytest.approx(0.2)
    assert select_score("proposal", None, 0.4) == 1.0


def test_draw_result_marks_boxes_masks_and_proposals(pipeline, image):
    masks = np.zeros((len(BOXES), HEIGHT, WIDTH), dtype=bool)
    masks[1, 200:260, 300:360] = True  # region 1's mask, away from every drawn box edge
    inside_mask = (330, 230)

    class MaskProposer:
        def __call__(self, img):
            return ProposalSet(BOXES, SCORES, masks=masks, source="masks")

    pipeline.proposer = MaskProposer()
    result = pipeline.detect(image, "red circle")
    picture = draw_result(image, result, show_answer=False)
    assert picture.size == (WIDTH, HEIGHT)  # already 640 wide: not enlarged
    x1, y1, x2, y2 = (round(v) for v in result.detections[0].box)
    bottom_edge = picture.getpixel(((x1 + x2) // 2, y2 - 1))
    assert bottom_edge == PALETTE[0]  # the label's colour on the box outline
    assert picture.getpixel(inside_mask) != image.getpixel(inside_mask)
    plain = draw_result(image, result, show_answer=False, show_masks=False)
    assert plain.getpixel(inside_mask) == image.getpixel(inside_mask)
    with_answer = draw_result(image, result)
    assert with_answer.width == WIDTH and with_answer.height > HEIGHT  # the answer is written below
    small = draw_result(image.resize((160, 120)), _resized(result, 0.25))
    assert small.width == 640  # small images are enlarged for legible tags
    with pytest.raises(ValueError, match="result is for a 640x480 image"):
        draw_result(image.resize((100, 100)), result)


def _resized(result: FO1Result, factor: float) -> FO1Result:
    data = result.to_dict()
    data["image_size"] = [round(v * factor) for v in data["image_size"]]
    for r in data["detections"]:
        r["box"] = [v * factor for v in r["box"]]
    data["proposals"]["boxes"] = [[v * factor for v in b] for b in data["proposals"]["boxes"]]
    return FO1Result.from_dict(data)
