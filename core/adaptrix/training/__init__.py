"""Train LoRA adapters: ``adaptrix train`` and :func:`train` as a library call.

Importing this package is cheap; torch, transformers and peft load when a
run starts.
"""

from __future__ import annotations

from adaptrix.training.data import Sample, load_jsonl
from adaptrix.training.trainer import TrainConfig, TrainResult, train

__all__ = ["Sample", "TrainConfig", "TrainResult", "load_jsonl", "train"]
