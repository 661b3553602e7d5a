"""Where a model comes from and where it runs.

Resolving a model name or path (:mod:`.source`), reading configs and GGUF
headers without loading weights (:mod:`.modelconfig`, :mod:`.lm_classes`),
GGUF files from the Hub and their local cache (:mod:`.gguf_hub`,
:mod:`.gguf_cache`), the embedded default model (:mod:`.default_model`),
loading a transformers causal LM (:mod:`.loading`), and choosing the device
and dtype a model fits (:mod:`.devices`, :mod:`.memory`).
"""
