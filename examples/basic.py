"""The seed's basic example on the embedded default model (SmolLM2-135M-Instruct).

Run with ``make demo`` or ``.venv/bin/python examples/basic.py``. It runs on the
fastest installed backend (``backend="auto"``: llama.cpp for this GGUF file when
``adaptrix-llamacpp`` is installed, which converts nothing; else transformers,
whose first run converts the GGUF once into a cached safetensors folder).

1. "What is machine learning?" on the base model;
2. ``load_adapter("math_specialist")`` and "What is 25 times 8?";
3. the base model again, for contrast;

each answer streamed and labelled with the adapter that produced it, then the
model info, ending with the backend and the tokens per second.
"""

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here is local

from adaptrix import Engine  # noqa: E402

ADAPTERS = Path(__file__).resolve().parent / "adapters"  # math_specialist, pirate_style


def ask(engine: Engine, question: str, adapter) -> None:
    """Stream one greedy answer, labelled with the adapter used (None: the base model)."""
    print(f"[{adapter or 'base model'}] > {question}")
    for piece in engine.stream(question, adapter=adapter, max_new_tokens=200, temperature=0):
        sys.stdout.write(piece)
        sys.stdout.flush()
    print("\n")


def show_speed(engine: Engine) -> None:
    """Which backend ran, and how fast: one timed greedy generation of up to 128 tokens on the base model."""
    start = time.perf_counter()
    result = engine.generate_detailed("Write a short story about a robot.", adapter=None, temperature=0,
                                      max_new_tokens=128)
    seconds = time.perf_counter() - start
    info = engine.get_model_info()
    print(f"backend: {info['backend']} ({info['backend_reason']})")
    print(f"speed: {len(result.token_ids)} tokens in {seconds:.2f} s = {len(result.token_ids) / seconds:.1f} tokens/s")


def show_info(engine: Engine) -> None:
    info = engine.get_model_info()
    print("Model info")
    width = max(len(k) for k in info)
    for key, value in info.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items()) or "-"
        elif isinstance(value, (list, tuple)):
            value = ", ".join(str(v) for v in value) or "-"
        elif isinstance(value, int) and key == "parameters":
            value = f"{value:,}"
        print(f"  {key.ljust(width)}  {value}")


engine = Engine(adapters_dir=ADAPTERS)  # no model_id: the embedded SmolLM2-135M-Instruct
engine.initialize()

ask(engine, "What is machine learning?", None)
engine.load_adapter("math_specialist")
ask(engine, "What is 25 times 8?", "math_specialist")
engine.switch_adapter(None)
ask(engine, "What is 25 times 8?", None)

show_info(engine)
print()
show_speed(engine)
engine.cleanup()
