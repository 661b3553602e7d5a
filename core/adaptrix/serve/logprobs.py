"""Log-probabilities in OpenAI's shapes, and what the scheduler computes for them.

- :func:`echo_job` (before the generation: the prompt's text and, with ``logprobs``, its tokens' logprobs)
  and :func:`score_job` (after it: the generated tokens' logprobs), each one
  :meth:`adaptrix.Engine.token_logprobs` pass with the adapter (or composition) that serves the request. The logprobs are the raw model's (before temperature and
  penalties), as vLLM's and OpenAI's are.
- :func:`replay`: the text each generated token released through the request's text pipeline, so a streamed
  answer with logprobs carries one token per chunk, each with its logprob, where no step decoder sent them as
  they were generated (a backend without one: scored after the generation).
- :func:`completion_logprobs` / :func:`chat_logprobs`: OpenAI's completions shape (``tokens``,
  ``token_logprobs``, ``top_logprobs``, ``text_offset``) and chat shape (``content: [{token, logprob, bytes,
  top_logprobs}]``).
"""

from __future__ import annotations

from typing import Any, Sequence

import attrs

from adaptrix.generation.result import GenerationResult, PreparedRequest
from adaptrix.generation.scoring import TokenLogprob
from adaptrix.generation.text import IncrementalDecoder


def echo_job(engine, job, adapter: str | None, prepared: PreparedRequest) -> None:
    """With ``echo``: set ``job.echo_text`` (the prompt as given, or its token ids' text) and, with
    ``logprobs``, ``job.prompt_logprobs`` (the first token's is ``None``). Before the generation starts."""
    req = job.request
    if not req.echo:
        return
    prompt = list(prepared.input_ids)
    job.echo_text = req.prompt if isinstance(req.prompt, str) else engine.tokenizer.decode(
        prompt, skip_special_tokens=False)
    if req.logprobs is not None:
        job.prompt_logprobs = tuple(engine.token_logprobs(prompt, start=0, adapter=adapter, top=req.logprobs))


def score_job(engine, job, adapter: str | None, prepared: PreparedRequest, result: GenerationResult) -> GenerationResult:
    """``result`` with its generated tokens' ``logprobs`` when the request asks for them, scored after the
    prompt with the adapter that served it (``adapter``: the held name), unless the generation recorded them
    already (a step decoder's, from each step's raw logits). Runs on the scheduler thread."""
    req = job.request
    if result.logprobs is not None:  # a step decoder recorded them as it generated
        return result
    if req.logprobs is None or not result.token_ids:
        return result if req.logprobs is None else attrs.evolve(result, logprobs=())
    ids = list(prepared.input_ids) + list(result.token_ids)
    tokens = engine.token_logprobs(ids, start=len(prepared.input_ids), adapter=adapter, top=req.logprobs)
    return attrs.evolve(result, logprobs=tuple(tokens))


def score_only(engine, prepared: PreparedRequest) -> GenerationResult:
    """The result of ``max_tokens: 0``: nothing generated."""
    return GenerationResult(text="", token_ids=(), prompt_tokens=len(prepared.input_ids), finish_reason="length",
                            settings=prepared.settings, raw_text="")


def replay(prepared: PreparedRequest, token_ids: Sequence[int], tokenizer) -> list[str]:
    """Per generated token, the text it released through ``prepared``'s pipeline (as the row streamed it; the
    pipeline's held-back tail goes with the last token)."""
    decoder = IncrementalDecoder(tokenizer, prepared.decode_context)
    pipeline = prepared.pipeline()
    out = [pipeline.feed(decoder.add([t])) for t in token_ids]
    tail = pipeline.feed(decoder.finish()) + pipeline.flush()
    if out:
        out[-1] += tail
    return out


def _top_dict(t: TokenLogprob) -> dict[str, float] | None:
    """A token's alternatives as completions' ``{text: logprob}``, the token itself included (as vLLM does,
    so that ``max(top.values())`` is the best logprob and equals the token's exactly when it is greedy)."""
    if t.logprob is None:
        return None
    top = {text: lp for _, text, lp in t.top}
    top.setdefault(t.text, t.logprob)
    return top


def completion_logprobs(tokens: Sequence[TokenLogprob], offset: int = 0) -> dict[str, Any]:
    """OpenAI's completions ``logprobs`` object; ``text_offset`` counts characters of the returned text from
    ``offset`` (each token's own text, one after the other)."""
    offsets = []
    for t in tokens:
        offsets.append(offset)
        offset += len(t.text)
    return {"tokens": [t.text for t in tokens], "token_logprobs": [t.logprob for t in tokens],
            "top_logprobs": [_top_dict(t) for t in tokens], "text_offset": offsets}


def _entry(text: str, logprob: float) -> dict[str, Any]:
    return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}


def chat_logprobs(tokens: Sequence[TokenLogprob]) -> dict[str, Any]:
    """OpenAI's chat ``logprobs`` object: ``content`` with each token, its logprob, bytes and alternatives."""
    content = []
    for t in tokens:
        entry = _entry(t.text, t.logprob if t.logprob is not None else 0.0)
        entry["top_logprobs"] = [_entry(text, lp) for _, text, lp in t.top]
        content.append(entry)
    return {"content": content, "refusal": None}
