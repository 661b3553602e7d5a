"""adaptrix execution backend on llama.cpp: GGUF models at CPU speed, the same LoRA adapters.

Nothing here imports torch or transformers. The entry point names this
package; its hook implementations live in :mod:`adaptrix_llamacpp.plugin`.
"""

from .plugin import adapter_converters  # noqa: F401  (hookimpls the entry point registers)
