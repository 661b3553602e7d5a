"""adaptrix execution backend on llama.cpp: GGUF models at CPU speed, the same LoRA adapters.

Nothing here imports torch or transformers.
"""
