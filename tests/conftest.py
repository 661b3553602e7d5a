"""Shared fixtures: tiny models of every architecture, built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO.parent / "shared" / "fixtures"


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """``../shared/fixtures``; tests using it skip cleanly when it is absent."""
    if not FIXTURES.is_dir():
        pytest.skip(f"shared fixtures not found at {FIXTURES}")
    return FIXTURES


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """``tiny_model("qwen3") -> Path``: a saved tiny random model, cached per session."""
    from support.tiny import build_tiny_model

    cache: dict[str, Path] = {}

    def make(model_type: str) -> Path:
        if model_type not in cache:
            cache[model_type] = build_tiny_model(model_type, tmp_path_factory.mktemp(f"tiny-{model_type}"))
        return cache[model_type]

    return make
