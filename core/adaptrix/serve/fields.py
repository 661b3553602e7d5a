"""Every top-level request field of ``/v1/chat/completions`` and ``/v1/completions``, and what the server does
with it: the one owner of that answer (``docs/serve.md`` lists the same table; ``tests/test_serve_fields.py``
walks the openai SDK's fields against it).

- served: the field changes the answer as OpenAI documents it;
- refused: :data:`adaptrix.serve.schemas.UNSERVED` answers 400 naming it, unless it holds its neutral value;
- metadata: accepted and unused; it cannot change an answer (:data:`METADATA` says why);
- anything else (a typo, another server's extension) is refused with a 400 naming it: nothing a client sends
  is silently ignored.
"""

from __future__ import annotations

#: Fields both endpoints serve.
SERVED_BOTH = frozenset({
    "model", "max_tokens", "max_completion_tokens", "temperature", "top_p", "stop", "seed", "stream", "stream_options",
    "n", "logprobs",
    "logit_bias", "presence_penalty", "frequency_penalty", "response_format",
})
#: Served by one endpoint only.
SERVED = {
    "chat": SERVED_BOTH | {"messages", "top_logprobs", "tools", "tool_choice", "parallel_tool_calls"},
    "completion": SERVED_BOTH | {"prompt", "echo"},
}
#: adaptrix's own fields, and vLLM's names of two engine settings (``extra_body`` in the openai client).
EXTRAS = frozenset({"task_type", "adapters", "top_k", "repetition_penalty"})
#: Accepted and unused: none of them can change an answer.
METADATA = {
    "user": "an end-user id for the provider's abuse monitoring",
    "safety_identifier": "an end-user id for the provider's abuse monitoring",
    "metadata": "tags for the provider's stored-completions dashboard",
    "store": "whether the provider stores the completion for its dashboard; adaptrix stores nothing",
    "service_tier": "the provider's processing tier; adaptrix has one",
    "prompt_cache_key": "a routing hint for the provider's prompt cache; adaptrix's prompt cache needs none",
    "prompt_cache_retention": "how long the provider keeps a cached prompt",
    "prompt_cache_options": "how long the provider keeps a cached prompt",
    "prediction": "predicted output, a latency hint: the answer is the model's either way",
}


def known(kind: str) -> frozenset[str]:
    """The field names a ``kind`` (``chat`` or ``completion``) request may hold; refusal of unserved ones is
    :data:`~adaptrix.serve.schemas.UNSERVED`'s."""
    return frozenset(SERVED[kind] | EXTRAS | set(METADATA))
