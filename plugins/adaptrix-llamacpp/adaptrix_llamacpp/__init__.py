"""adaptrix execution backend on llama.cpp: GGUF models at CPU speed, the same LoRA adapters.

- :mod:`.runtime`: :class:`~.runtime.LlamaRuntime`, one model + context on llama-cpp-python's low-level API.
- :mod:`.codec`: :class:`~.codec.LlamaTextCodec`, the tokenizer subset the engine uses, from the GGUF.
- :mod:`.hub`: GGUF sources (local file, ``owner/repo-GGUF:Q4_K_M``, ``owner/repo-GGUF/file.gguf``).

Importing this package imports nothing heavy; the modules import llama_cpp (or
huggingface_hub) when used. Nothing here imports torch or transformers.
"""
