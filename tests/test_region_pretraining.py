import hashlib
import json

import pytest
import torch

from vlmfo1.data.shapeworld import ShapeWorldConfig, write_dataset
from vlmfo1.training.region_pretraining import ALIGNMENT_GROUPS, ENCODER_GROUPS, pretrain_region_features
from vlmfo1.training.stages import group_of_parameters
from vlmfo1.training.tiny import init_tiny

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scenes")
    config = ShapeWorldConfig.train(objects_per_image=(2, 3), image_size=(96, 96), task_counts={"detection": 1})
    write_dataset(folder, n=3, seed=0, split="train", config=config, coordinates=False)
    return folder


def digest(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.detach().contiguous().float().numpy().tobytes()).hexdigest()


def test_only_the_encoders_learn_and_the_objects_get_classified(small_shapeworld_tokenizer, scenes):
    model, processor = init_tiny(None, size="tiny", tokenizer=small_shapeworld_tokenizer, max_pixels=112 * 112,
                                 aux_image_size=64)
    before = {name: digest(p) for name, p in model.named_parameters()}
    model.language_model.requires_grad_(False)  # a caller's own settings come back afterwards
    model.eval()
    # Three scenes, a handful of objects: enough steps to fit them all.
    history = pretrain_region_features(model, processor, scenes / "train.coco.json", scenes, steps=60, batch_size=3,
                                       learning_rate=3e-3, log=lambda line: None)
    assert history["loss"][-1] < 0.25 * history["loss"][0]
    assert history["accuracy_category"][-1] == 1.0 and history["accuracy_colour"][-1] == 1.0
    groups = group_of_parameters(model)
    for name, parameter in model.named_parameters():
        changed = digest(parameter) != before[name]
        if groups[name] in ("llm", "connector", "image_projector"):
            assert not changed, f"{name} ({groups[name]}) changed"
    trained = {groups[name] for name, p in model.named_parameters() if digest(p) != before[name]}
    assert trained == set(ENCODER_GROUPS)
    assert not any(p.requires_grad for p in model.language_model.parameters()) and not model.training
    assert all(p.requires_grad for p in model.aux_encoder.parameters())


def test_bad_coco_files_are_clear_errors(small_shapeworld_tokenizer, scenes, tmp_path):
    model, processor = init_tiny(None, size="tiny", tokenizer=small_shapeworld_tokenizer, aux_image_size=64)
    coco = json.loads((scenes / "train.coco.json").read_text())
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({**coco, "annotations": []}))
    with pytest.raises(ValueError, match="no annotated objects"):
        pretrain_region_features(model, processor, empty, scenes, steps=1)
    with pytest.raises(ValueError, match="attribute 'weight' is missing"):
        pretrain_region_features(model, processor, scenes / "train.coco.json", scenes, steps=1, attributes=("weight",))


def test_alignment_moves_region_tokens_onto_their_labels_word_sums(small_shapeworld_tokenizer, scenes):
    from vlmfo1.training.region_pretraining import align_region_tokens

    model, processor = init_tiny(None, size="tiny", tokenizer=small_shapeworld_tokenizer, max_pixels=112 * 112,
                                 aux_image_size=64)
    before = {name: digest(p) for name, p in model.named_parameters()}
    history = align_region_tokens(model, processor, scenes / "train.coco.json", scenes, steps=80, batch_size=3,
                                  learning_rate=3e-3, log=lambda line: None)
    assert history["loss"][-1] < 0.2 * history["loss"][0]
    assert history["nearest_label"][-1] == 1.0
    assert history["step"] == list(range(10, 81, 10)) and len(history["loss"]) == len(history["step"])
    groups = group_of_parameters(model)
    trained = {groups[name] for name, p in model.named_parameters() if digest(p) != before[name]}
    assert trained == set(ALIGNMENT_GROUPS)  # the LLM, its embeddings included, is untouched


def test_label_embedding_is_what_a_word_filled_slot_holds(small_shapeworld_tokenizer):
    from vlmfo1.data.records import FO1Record
    from vlmfo1.training.collator import FO1Collator
    from vlmfo1.training.data import encode_record
    from vlmfo1.training.region_pretraining import label_embedding

    model, processor = init_tiny(None, size="tiny", tokenizer=small_shapeworld_tokenizer)
    record = FO1Record.single_turn(id="t", image=None, prompt="Please detect star in this image.",
                                   answer="<ground>star</ground><objects><region1></objects>",
                                   region_text=["red circle", "blue star"])
    batch = FO1Collator(processor.tokenizer.pad_token_id)([encode_record(record, None, processor)])
    embeds = model.embed_inputs(batch["input_ids"], region_text_ids=batch["region_text_ids"])
    slots = embeds[0][batch["input_ids"][0] == model.config.region_token_id]
    for slot, label in zip(slots, record.region_text):
        torch.testing.assert_close(slot, label_embedding(model, processor.tokenizer, label))


def test_alignment_trains_only_the_groups_asked(small_shapeworld_tokenizer, scenes):
    from vlmfo1.training.region_pretraining import align_region_tokens

    model, processor = init_tiny(None, size="tiny", tokenizer=small_shapeworld_tokenizer, max_pixels=112 * 112,
                                 aux_image_size=64)
    before = {name: digest(p) for name, p in model.named_parameters()}
    # The paper's frozen primary ViT: the alignment leaves it as it is.
    align_region_tokens(model, processor, scenes / "train.coco.json", scenes, steps=2, batch_size=2,
                        log=lambda line: None, groups=("aux_encoder", "region_encoder", "connector"))
    groups = group_of_parameters(model)
    trained = {groups[name] for name, p in model.named_parameters() if digest(p) != before[name]}
    assert trained == {"aux_encoder", "region_encoder", "connector"}
