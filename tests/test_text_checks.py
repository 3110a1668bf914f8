"""Teacher-forced language checks of the demo recipe (`vlmfo1.training.text_checks`)."""
from __future__ import annotations

import types

import pytest
import torch

from vlmfo1.data.shapeworld.text_tasks import lookup_records, repeat_records
from vlmfo1.processing.image_processing import FO1ImageProcessor
from vlmfo1.processing.processing_fo1 import FO1Processor
from vlmfo1.training.text_checks import language_checks, region_token_ids, teacher_forced_accuracy


@pytest.fixture(scope="module")
def processor(small_shapeworld_tokenizer):
    return FO1Processor(FO1ImageProcessor(min_pixels=56 * 56, max_pixels=112 * 112, aux_image_size=64),
                        small_shapeworld_tokenizer)


class NextTokenModel(torch.nn.Module):
    """Predicts, at each position, `rule(next input token)`: the oracle when `rule` is the identity."""

    def __init__(self, vocab: int, rule=lambda ids: ids):
        super().__init__()
        self.vocab, self.rule = vocab, rule
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, **_):
        following = torch.cat([input_ids[:, 1:], input_ids[:, -1:]], dim=1)
        return types.SimpleNamespace(logits=torch.nn.functional.one_hot(self.rule(following), self.vocab).float())


def test_an_oracle_scores_one_and_a_constant_guess_scores_its_share(processor):
    vocab = len(processor.tokenizer)
    records = lookup_records(40, seed=1, max_items=3, max_queries=1, keys="slots")
    oracle = teacher_forced_accuracy(NextTokenModel(vocab), processor, records, batch_size=7)
    assert oracle["region"] == oracle["word"] == 1.0 and oracle["region_tokens"] > 10
    region0 = processor.tokenizer.convert_tokens_to_ids("<region0>")
    regions = region_token_ids(processor.tokenizer)

    def always_region0(ids):
        return torch.where(torch.isin(ids, regions), torch.full_like(ids, region0), ids)

    guess = teacher_forced_accuracy(NextTokenModel(vocab, always_region0), processor, records)
    answers = " ".join(r.answer for r in records)
    assert guess["region"] == round(answers.count("<region0>") / oracle["region_tokens"], 3) < 1.0
    assert guess["word"] == 1.0
    # Chance: a uniform guess among each record's slots, per region token.
    expected = sum(r.answer.count("<region") / len(r.region_text) for r in records) / oracle["region_tokens"]
    assert guess["region_chance"] == round(expected, 3)


def test_language_checks_report_copy_and_each_list_length(processor):
    model = NextTokenModel(len(processor.tokenizer))
    report = language_checks(model, processor, lookup_items=(2, 5), n=12)
    assert set(report) == {"copy", "lookup2", "lookup5"}
    assert report["copy"]["word"] == report["copy"]["region"] == 1.0
    assert report["copy"]["region_chance"] == 0.0  # repeats have no slots
    copied = sum(r.answer.count("<region") for r in repeat_records(12, seed=12, split="check"))
    assert report["copy"]["region_tokens"] == copied > 0


def test_image_records_read_their_images_and_count_their_boxes(processor, tmp_path):
    """The same check on ShapeWorld detection records (regions from pixels): the images are read
    from `image_root`, chance is a uniform guess among each record's boxes."""
    from vlmfo1.data.records import read_records
    from vlmfo1.data.shapeworld import ShapeWorldConfig, write_dataset

    config = ShapeWorldConfig.train(objects_per_image=(2, 3), image_size=(64, 64), task_counts={"detection": 2})
    write_dataset(tmp_path, n=3, seed=0, split="val", config=config, coordinates=False)
    records = [r for r in read_records(tmp_path / "val.fo1.jsonl") if "<region" in r.answer]
    assert records
    vocab = len(processor.tokenizer)
    oracle = teacher_forced_accuracy(NextTokenModel(vocab), processor, records, image_root=tmp_path)
    assert oracle["region"] == oracle["word"] == 1.0
    expected = sum(r.answer.count("<region") / len(r.bbox_list) for r in records) / oracle["region_tokens"]
    assert oracle["region_chance"] == round(expected, 3)
    with pytest.raises(ValueError, match="image_root"):
        teacher_forced_accuracy(NextTokenModel(vocab), processor, records)
