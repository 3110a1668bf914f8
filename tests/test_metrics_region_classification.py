"""Region classification SS / S-IoU with Osprey's answer cleaning."""
import numpy as np
import pytest

from vlmfo1.evaluation.metrics.region_classification import (
    clean_answer,
    clean_category_name,
    minilm_embedder,
    minilm_model_dir,
    region_classification_scores,
    semantic_iou,
    semantic_similarity,
)


@pytest.mark.parametrize(
    "answer, cleaned",
    [
        ("dog", "dog"),
        ("  Dog.\n", "Dog "),
        ("Category: hot dog.", " hot dog "),
        ("a:b:c", "b"),  # Osprey keeps what lies between the first and second colon
        ("red, round", "red  round"),
        ("mug<|im_end|>", "mug"),
    ],
)
def test_clean_answer(answer, cleaned):
    assert clean_answer(answer) == cleaned


def test_clean_category_name():
    assert clean_category_name("dog:leg") == "dog leg"
    assert clean_category_name("hot_dog") == "hot dog"


def test_semantic_iou_hand_values():
    assert semantic_iou("red car", "car") == pytest.approx(1 / 2)
    assert semantic_iou("Car", "car") == 1.0  # lower-cased
    assert semantic_iou("a b c", "c d") == pytest.approx(1 / 4)
    assert semantic_iou("", "car") == 0.0
    with pytest.raises(ValueError):
        semantic_iou("", "  ")


def test_minilm_is_loaded_once_per_process():
    assert minilm_embedder() is minilm_embedder()


def test_semantic_similarity_matches_sentence_transformers():
    sentence_transformers = pytest.importorskip("sentence_transformers")
    texts = ["dog", "hot dog", "person leg", "a red mug on a table", ""]
    reference = sentence_transformers.SentenceTransformer(str(minilm_model_dir()), device="cpu").encode(texts)
    ours = minilm_embedder().encode(texts)
    assert np.abs(ours - reference).max() < 1e-5


def test_perfect_answers_score_one_and_shuffled_answers_lower():
    categories = ["dog", "bicycle", "dog:leg", "traffic_light", "umbrella"]
    perfect = [clean_category_name(c) for c in categories]
    scores = region_classification_scores(perfect, categories)
    assert scores["semantic_similarity"] == pytest.approx(1.0, abs=1e-5)
    assert scores["semantic_iou"] == 1.0
    shuffled = perfect[1:] + perfect[:1]
    shuffled_scores = region_classification_scores(shuffled, categories)
    assert shuffled_scores["semantic_similarity"] < 0.5
    assert shuffled_scores["semantic_iou"] == 0.0  # no shifted pair shares a word


def test_similar_words_score_higher_than_unrelated_ones():
    similarity = semantic_similarity(["puppy", "spoon"], ["dog", "dog"])
    assert similarity[0] > similarity[1]


def test_missing_answers_score_zero():
    scores = region_classification_scores(["dog", None], ["dog", "cat"])
    assert scores["semantic_iou"] == pytest.approx(0.5)
    assert scores["semantic_similarity"] == pytest.approx(0.5, abs=1e-5)
