"""Make an engine's backend emit a fixed text, whatever the prompt (random weights do not think on cue).

Each backend's token source is replaced: ``model.generate`` on transformers
(honouring its streamer and stopping criteria), ``runtime.generate_tokens`` on
llama.cpp. What a test then checks is the engine's formatting, end-of-turn
handling, hiding, stop strings and streaming on top of the backend.
"""

from __future__ import annotations


def forced_ids(engine, text: str) -> list[int]:
    """``text`` in the backend's own tokenizer, then the end-of-turn token."""
    tok = engine.tokenizer
    return list(tok(text, add_special_tokens=False)["input_ids"]) + [tok.convert_tokens_to_ids("<|im_end|>")]


def force_output(engine, monkeypatch, text: str) -> list[int]:
    """Make ``engine``'s backend emit ``text`` + end of turn, whatever the prompt; returns those ids."""
    forced = forced_ids(engine, text)
    if engine.runner.backend == "llamacpp":
        runtime = engine.runner.runtime

        def generate_tokens(prompt_ids, *, max_new_tokens, stop_ids=None, cancel=None, **sampling):
            # as the runtime: stops at max_new_tokens or before a token of stop_ids (the runner passes (),
            # keeping the end-of-turn token itself, and ends the row there)
            stops = runtime.special.eog if stop_ids is None else frozenset(stop_ids)
            for token in forced[:max_new_tokens]:
                if token in stops or (cancel is not None and cancel()):
                    return
                yield token

        monkeypatch.setattr(runtime, "generate_tokens", generate_tokens)
        return forced

    import torch

    def generate(input_ids, attention_mask=None, streamer=None, max_new_tokens=None, stopping_criteria=None,
                 eos_token_id=None, **kwargs):
        # as transformers' greedy loop: one token per step, streamed, then the stopping criteria and EOS
        eos = set(eos_token_id or ())
        out = input_ids
        if streamer is not None:
            streamer.put(input_ids)
        for token in forced[:max_new_tokens]:
            out = torch.cat([out, torch.tensor([[token]])], dim=1)
            if streamer is not None:
                streamer.put(torch.tensor([token]))
            if token in eos or (stopping_criteria is not None and bool(stopping_criteria(out, None).all())):
                break
        if streamer is not None:
            streamer.end()
        return out

    monkeypatch.setattr(engine.model, "generate", generate)
    return forced


def engines_per_backend(hf, gguf_path):
    """Yield ``get(backend) -> Engine`` on one tiny model, its HF folder on transformers and its GGUF on
    llama.cpp, each loaded once on first use and cleaned up when the generator is closed (a fixture body)."""
    import pytest

    from adaptrix import Engine

    opened: dict = {}

    def get(backend: str):
        if backend not in opened:
            if backend == "llamacpp":
                pytest.importorskip("adaptrix_llamacpp")
                pytest.importorskip("llama_cpp")
            e = Engine(str(gguf_path if backend == "llamacpp" else hf), backend=backend, threads=1, progress=False)
            e.initialize()
            opened[backend] = e
        return opened[backend]

    try:
        yield get
    finally:
        for e in opened.values():
            e.cleanup()
