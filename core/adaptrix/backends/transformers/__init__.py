"""The reference backend: transformers + peft (:mod:`.runner`), with step-level batching
for a server (:mod:`.batching`)."""
