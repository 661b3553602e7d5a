"""The seed's basic example on the embedded default model (SmolLM2-135M-Instruct).

Run with ``make demo`` or ``.venv/bin/python examples/basic.py``. The first run
converts the model's GGUF file once into a cached safetensors folder (about a
minute on two CPU cores, with a progress bar); later runs load it in seconds.
"""

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here is local

from adaptrix import Engine  # noqa: E402

engine = Engine()  # no model_id: the embedded SmolLM2-135M-Instruct
engine.initialize()

prompt = "What is machine learning?"
print(f"> {prompt}\n")
for piece in engine.stream(prompt, max_new_tokens=200, temperature=0):
    sys.stdout.write(piece)
    sys.stdout.flush()
print("\n")

info = engine.get_model_info()
print("Model info")
width = max(len(k) for k in info)
for key, value in info.items():
    if isinstance(value, dict):
        value = ", ".join(f"{k}={v}" for k, v in value.items()) or "-"
    elif isinstance(value, list):
        value = ", ".join(str(v) for v in value) or "-"
    elif isinstance(value, int) and key == "parameters":
        value = f"{value:,}"
    print(f"  {key.ljust(width)}  {value}")

engine.cleanup()
