"""adaptrix execution backend on llama.cpp: GGUF models at CPU speed, the same LoRA adapters.

From the engine's side down:

- :mod:`.plugin`: the hook implementations the entry point registers (re-exported here).
- :mod:`.backend`: the ``llamacpp`` backend, its runner and adapter manager.
- :mod:`.steps`: :class:`~.steps.LlamaStepDecoder`, a server's requests as parallel sequences of one context.
- :mod:`.codec`: :class:`~.codec.LlamaTextCodec`, the tokenizer subset the engine uses, from the GGUF.
- :mod:`.runtime`: :class:`~.runtime.LlamaRuntime`, one model + context on llama-cpp-python's low-level
  API: decoding, generation, parallel sequences, logits. Its parts:

  - :mod:`.vocab`: :class:`~.vocab.Vocabulary`, tokenize, detokenize, token pieces, special and control tokens;
  - :mod:`.loras`: :class:`~.loras.LoraAdapters`, GGUF LoRAs loaded on the model and the active set with scales;
  - :mod:`.sampling`: a request's settings -> a llama.cpp sampler chain (:class:`~.sampling.SamplerChain`);
  - :mod:`.prompt_cache`: which prompt sequence 0 holds, so the next one decodes only what differs;
  - :mod:`.model_meta`: the loaded GGUF's metadata (:class:`~.model_meta.GGUFInfo`);
  - :mod:`.llama_lib`: the ``llama_cpp`` module, initialised once, its log and errors.
- :mod:`.convert`, :mod:`.lora_cache`: PEFT <-> GGUF LoRA, converted once and cached by content.
- :mod:`.gguf_arch`, :mod:`.gguf_index`: each GGUF architecture's LoRA targets; a GGUF model's layers from its header.

Importing this package (as discovery does) imports neither llama_cpp, numpy nor gguf: llama_cpp is
imported by :func:`.llama_lib.load_llama`, numpy by :mod:`.convert` and the runtime's ``logits``, gguf
when a LoRA is written or read. Nothing here imports torch or transformers.
"""

from .plugin import adapter_converters, backends, caches  # noqa: F401  (hookimpls the entry point registers)
