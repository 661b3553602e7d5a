"""adaptrix execution backend on llama.cpp: GGUF models at CPU speed, the same LoRA adapters.

- :mod:`.backend`: the ``llamacpp`` backend, its runner and adapter manager.
- :mod:`.runtime`: :class:`~.runtime.LlamaRuntime`, one model + context on llama-cpp-python's low-level API.
- :mod:`.codec`: :class:`~.codec.LlamaTextCodec`, the tokenizer subset the engine uses, from the GGUF.
- :mod:`.gguf_arch`, :mod:`.gguf_index`: each GGUF architecture's LoRA targets; a GGUF model's layers from its header.
- :mod:`.convert`, :mod:`.lora_cache`: PEFT <-> GGUF LoRA, converted once and cached by content.
- :mod:`.plugin`: the hook implementations the entry point registers (re-exported here).

Importing this package imports nothing heavy; the modules import llama_cpp (or
huggingface_hub, numpy, gguf) when used. Nothing here imports torch or transformers.
"""

from .plugin import adapter_converters, backends, caches  # noqa: F401  (hookimpls the entry point registers)
