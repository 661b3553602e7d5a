"""LoRA adapters: read, validate, load, switch, compose and batch them."""
