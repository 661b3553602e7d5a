"""``/v1/completions`` and ``/v1/chat/completions``: requests to jobs, jobs' events to OpenAI's answers.

A completions request may hold several prompts (OpenAI's four forms: a string, a list of strings, a list of
token ids, a list of lists of token ids): each becomes its own scheduler job (they decode together where the
backend batches) and its own choice, ``index`` in prompt order. ``echo`` returns the prompt before the
generated text; ``logprobs`` (completions: ``K``; chat: ``true`` with ``top_logprobs: K``) is answered in
OpenAI's shapes (:mod:`adaptrix.serve.logprobs`); ``max_tokens: 0`` with ``echo`` scores the prompt alone.

``n`` choices of one prompt are ``n`` jobs, each with its own sampler: choice ``j`` of a request seeded ``s`` is
seeded ``s + j`` (:func:`~adaptrix.serve.schemas.choice_seeds`), so greedy choices are equal and a seeded
request repeats. Choice ``index`` is ``prompt * n + j`` (OpenAI's order); streamed chunks carry it. ``usage``
counts every choice's tokens and each prompt once.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import attrs

from adaptrix.errors import GenerationError
from adaptrix.generation.defaults import TASK_PRESETS
from adaptrix.generation.settings import check_logit_bias, explicit_settings
from adaptrix.generation.token_ids import check_token_ids, vocabulary_size
from adaptrix.serve.errors import ApiError
from adaptrix.serve.logprobs import chat_logprobs, completion_logprobs
from adaptrix.serve.scheduler import Job
from adaptrix.serve.schemas import CompletionRequest, choice_seeds, parse_completion, split_prompts
from adaptrix.serve.tool_calls import ToolDeltas, chat_message, finish_reason


def json_response(data: Any, status: int = 200):
    """A JSON answer."""
    from starlette.responses import JSONResponse

    return JSONResponse(data, status_code=status)


def parse_requests(server, body: Any, kind: str) -> list[CompletionRequest]:
    """The request's prompts as validated requests, their model resolved; 400 for what cannot be served."""
    presets = tuple(TASK_PRESETS)
    parts = [("messages", None)] if kind == "chat" else split_prompts(body)
    reqs = [server.resolve_model(parse_completion(body if kind == "chat" else {**body, "prompt": prompt}, kind,
                                                  presets, param))
            for param, prompt in parts]
    tokenizer = server.scheduler.tokenizer  # None: the engines are remote and check there
    for (param, _), req in zip(parts, reqs):
        if not isinstance(req.prompt, str) and tokenizer is not None:
            try:  # the vocabulary's size is read-only: no need to wait for the scheduler
                check_token_ids(req.prompt, tokenizer, param)
            except GenerationError as exc:
                raise ApiError(400, str(exc), param=param, code="invalid_value") from None
    if reqs[0].settings.get("logit_bias") and tokenizer is not None:  # remote engines check it there
        try:  # the vocabulary's size is read-only: no need to wait for the scheduler
            check_logit_bias(explicit_settings(logit_bias=reqs[0].settings["logit_bias"]),
                             vocabulary_size(tokenizer))
        except GenerationError as exc:
            raise ApiError(400, str(exc), param="logit_bias", code="invalid_value") from None
    if reqs[0].stream and len(reqs) > 1:
        raise ApiError(400, f"'stream' takes one prompt; this request has {len(reqs)}: send them as separate "
                       "streamed requests, or without 'stream'", param="stream")
    if reqs[0].stream and reqs[0].score_only:
        raise ApiError(400, "'max_tokens': 0 generates nothing to stream; send it without 'stream'",
                       param="max_tokens")
    return reqs


def choices(reqs: list[CompletionRequest]) -> list[CompletionRequest]:
    """Each prompt's ``n`` choices in OpenAI's order (prompt-major), choice ``j`` seeded ``seed + j``."""
    out = []
    for req in reqs:
        for seed in choice_seeds(req.settings.get("seed"), req.n):
            settings = dict(req.settings) if seed is None else {**req.settings, "seed": seed}
            out.append(attrs.evolve(req, settings=settings))
    return out


async def completions(server, request, kind: str):
    reqs = choices(parse_requests(server, await server.read_json(request), kind))
    loop = asyncio.get_running_loop()
    jobs: list[Job] = []
    events: asyncio.Queue = asyncio.Queue()  # (choice index, event) of every job
    try:
        for index, req in enumerate(reqs):
            job = Job(req, lambda event, i=index: loop.call_soon_threadsafe(events.put_nowait, (i, event)))
            server.scheduler.submit(job)
            jobs.append(job)
    except BaseException:
        for job in jobs:
            job.cancelled.set()
        raise
    # The body is read: the next ASGI message is the client's disconnect. Waiting for it cancels the jobs at
    # once, whether queued (never prefilled), running, or streaming (they stop between two steps).
    watch = asyncio.ensure_future(_cancel_on_disconnect(request, jobs))
    rid = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]
    created = int(time.time())
    streaming = False
    try:
        if reqs[0].stream:
            response = await _stream(server, reqs, jobs, events, rid, created, watch)
            streaming = True  # from here on the response's body owns the watch
            return response
        results: dict[int, Any] = {}
        while len(results) < len(jobs):
            index, event = await _next_event(events, watch)
            if event[0] == "error":
                raise event[1]
            if event[0] == "done":
                results[index] = event[1]
        return json_response(_final(reqs, jobs, rid, created, [results[i] for i in range(len(jobs))]))
    except BaseException:
        for job in jobs:
            job.cancelled.set()  # the others need not run for an answer that will not come
        raise
    finally:
        if not streaming:
            watch.cancel()


async def _cancel_on_disconnect(request, jobs) -> None:
    """Set each job's ``cancelled`` when the client goes away (call once the body is read)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            for job in jobs:  # the scheduler drops it (queued) or stops it (running) and frees its slot
                job.cancelled.set()
            return


async def _next_event(events: asyncio.Queue, watch: asyncio.Future) -> tuple:
    """The job's next event; a 499 once its client has gone away (``watch`` is done)."""
    get = asyncio.ensure_future(events.get())
    await asyncio.wait({get, watch}, return_when=asyncio.FIRST_COMPLETED)
    if get.done():
        return get.result()
    get.cancel()
    raise ApiError(499, "the client went away", code="client_disconnected")


def _usage(results, n: int = 1) -> dict:
    """OpenAI's ``usage`` for :class:`~adaptrix.generation.result.GenerationResult` s, ``n`` choices per prompt
    (prompt-major): every choice's tokens, each prompt's once."""
    prompt = sum(r.prompt_tokens for r in results[::n])
    completion = sum(len(r.token_ids) for r in results)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _finish_reason(result) -> str:
    """OpenAI's ``finish_reason``: ``length`` when the token budget ran out, else ``stop`` (a stop string, EOS)."""
    return "length" if result.finish_reason == "length" else "stop"


def _choice(req: CompletionRequest, job, result, index: int) -> dict:
    if req.kind == "chat":
        logprobs = chat_logprobs(result.logprobs or ()) if req.logprobs is not None else None
        return {"index": index, "message": chat_message(result), "logprobs": logprobs,
                "finish_reason": finish_reason(result, _finish_reason(result))}
    text = (job.echo_text or "") + result.text if req.echo else result.text
    logprobs = None
    if req.logprobs is not None:
        logprobs = completion_logprobs(list(job.prompt_logprobs) + list(result.logprobs or ()))
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": _finish_reason(result)}


def _final(reqs: list[CompletionRequest], jobs: list, rid: str, created: int, results: list) -> dict:
    choices = [_choice(req, job, result, i) for i, (req, job, result) in enumerate(zip(reqs, jobs, results))]
    obj = "chat.completion" if reqs[0].kind == "chat" else "text_completion"
    return {"id": rid, "object": obj, "created": created, "model": reqs[0].model, "choices": choices,
            "usage": _usage(results, reqs[0].n)}


async def _stream(server, reqs, jobs, events, rid, created, watch):
    """The SSE answer of one prompt's ``n`` choices, their chunks interleaved as they come, each with its
    ``index``; each choice's last chunk carries its ``finish_reason``, then (``include_usage``) one usage chunk."""
    from starlette.responses import StreamingResponse

    req = reqs[0]
    obj = "chat.completion.chunk" if req.kind == "chat" else "text_completion"
    offsets = [0] * len(jobs)  # completions' text_offset: characters of each answer streamed so far

    def chunk(index: int, delta: str | None, finish: str | None, first=False, tokens=None, extra=None) -> str:
        if req.kind == "chat":
            d: dict[str, Any] = {}
            if first:
                d["role"] = "assistant"
            if delta is not None:
                d["content"] = delta
            d.update(extra or {})
            logprobs = chat_logprobs(tokens) if tokens else None
            choice = {"index": index, "delta": d, "logprobs": logprobs, "finish_reason": finish}
        else:
            logprobs = completion_logprobs(tokens, offsets[index]) if tokens else None
            offsets[index] += len(delta or "")
            choice = {"index": index, "text": delta or "", "logprobs": logprobs, "finish_reason": finish}
        data = {"id": rid, "object": obj, "created": created, "model": req.model, "choices": [choice]}
        if req.include_usage:
            data["usage"] = None
        return "data: " + json.dumps(data) + "\n\n"

    # The first event decides the status: an error before any token is a plain error answer. A client that
    # goes away while its request is queued is dropped before its prefill.
    first = await _next_event(events, watch)
    if first[1][0] == "error":
        raise first[1][1]

    # With tools, the text goes through the family's format: calls come out as tool_calls deltas.
    calls = [ToolDeltas(server.scheduler.tool_format) for _ in jobs] if req.tool_use is not None else None

    async def body():
        index, event = first
        sent_role = [False] * len(jobs)
        echoed = [not req.echo] * len(jobs)
        results: dict[int, Any] = {}
        pending: list[list] = [[] for _ in jobs]  # logprobs of tokens whose text a call holds back: sent next
        try:
            while True:
                if not echoed[index] and event[0] != "error":  # a choice's prompt, once its job has started
                    echoed[index] = True
                    yield chunk(index, jobs[index].echo_text or "", None,
                                tokens=list(jobs[index].prompt_logprobs) or None)
                if event[0] == "delta" and calls is not None:
                    pending[index].extend([event[2]] if len(event) > 2 else [])
                    for d in calls[index].feed(event[1]):
                        yield chunk(index, None, None, first=not sent_role[index], tokens=pending[index] or None,
                                    extra=d)
                        sent_role[index], pending[index] = True, []
                elif event[0] == "delta":
                    yield chunk(index, event[1], None, first=not sent_role[index],
                                tokens=[event[2]] if len(event) > 2 else None)
                    sent_role[index] = True
                elif event[0] == "error":
                    err = server.public(event[1])
                    yield "data: " + json.dumps(err.body()) + "\n\n"
                    break
                else:
                    result = results[index] = event[1]
                    reason = _finish_reason(result)
                    if calls is not None:
                        for d in calls[index].finish():
                            yield chunk(index, None, None, first=not sent_role[index], tokens=pending[index] or None,
                                        extra=d)
                            sent_role[index], pending[index] = True, []
                        if pending[index]:  # tokens after the last call's text (its closing, the EOS): theirs too
                            yield chunk(index, None, None, first=not sent_role[index], tokens=pending[index])
                            sent_role[index], pending[index] = True, []
                        reason = "tool_calls" if calls[index].count else reason
                    if not sent_role[index] and req.kind == "chat":
                        yield chunk(index, "", None, first=True)
                    yield chunk(index, None if req.kind == "chat" else "", reason)
                    if len(results) == len(jobs):
                        if req.include_usage:
                            data = {"id": rid, "object": obj, "created": created, "model": req.model, "choices": [],
                                    "usage": _usage([results[i] for i in range(len(jobs))], req.n)}
                            yield "data: " + json.dumps(data) + "\n\n"
                        break
                index, event = await events.get()
            yield "data: [DONE]\n\n"
        finally:
            for job in jobs:
                job.cancelled.set()  # a client gone mid-stream stops its generation; harmless once finished
            watch.cancel()

    return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
