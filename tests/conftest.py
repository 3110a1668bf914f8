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
