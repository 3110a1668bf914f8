"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# CI checks the repository out next to a `shared/` folder that holds the upstream parity fixtures.
UPSTREAM_FIXTURE_DIR = REPO_ROOT.parent / "shared" / "fixtures" / "upstream-tiny"


@pytest.fixture(scope="session")
def upstream_fixture_dir() -> Path:
    """`../shared/fixtures/upstream-tiny` beside the checkout; skips the test when it is absent."""
    if not (UPSTREAM_FIXTURE_DIR / "manifest.json").is_file():
        pytest.skip(
            f"upstream parity fixtures not found at {UPSTREAM_FIXTURE_DIR} "
            "(they live in ../shared/fixtures/upstream-tiny beside the repository checkout)"
        )
    return UPSTREAM_FIXTURE_DIR


@pytest.fixture(scope="module")
def one_torch_thread():
    """For tests of many small ops: with one thread OpenMP never busy-waits. On a loaded 2-core
    machine the training overfit test took 143 s with two busy-waiting threads and 19 s with one."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def small_shapeworld_tokenizer():
    """A 400-token BPE tokenizer trained on ShapeWorld text, with the FO1 tokens."""
    from vlmfo1.training.tiny import shapeworld_corpus, train_small_tokenizer

    return train_small_tokenizer(shapeworld_corpus(30), vocab_size=400)


@pytest.fixture(scope="session")
def serving_model_dir(tmp_path_factory):
    """A tiny random FO1 with the real Qwen tokenizer, saved once per session (the serving tests share it)."""
    from vlmfo1.training.tiny import init_tiny

    path = tmp_path_factory.getbasetemp() / "serving-tiny-fo1"
    init_tiny(path, size="tiny", tokenizer="qwen")
    return path
