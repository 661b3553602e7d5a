"""From a request to the :class:`PreparedRequest` it runs as: settings resolved, prompt formatted.

One :class:`RequestPreparer` per loaded model (the engine builds it in
``initialize()``): it knows the model's tokenizer, chat settings, context
window and family defaults, and applies the settings resolution order
(explicit > task > family > global, the task preset chosen by the request's
adapter when it declares one), the chat template with a conversation's
history trimmed to fit, and the text pipeline's stop strings and hidden spans.
It generates nothing and holds no lock: callers hold the model lease.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence

import attrs

from adaptrix.errors import ContextOverflowError, GenerationError
from adaptrix.generation.conversation import Conversation, Prompt, build_prompt, template_source
from adaptrix.generation.defaults import TASK_PRESETS
from adaptrix.generation.matcher import check_grammar
from adaptrix.generation.request import GenerationRequest
from adaptrix.generation.result import PreparedRequest
from adaptrix.generation.settings import check_logit_bias, resolve_settings
from adaptrix.generation.text import open_span, stop_check
from adaptrix.generation.token_ids import check_token_ids, vocabulary_size
from adaptrix.generation.tools.format import GENERIC, ToolFormat
from adaptrix.types import UNSET, GenerationConfig, LoadedModel


class AdapterTasks(Protocol):
    """What the preparer needs of the adapter manager: the active adapters and an adapter's declared task."""

    @property
    def active(self) -> str | tuple[str, ...] | None: ...

    def info(self, name: str) -> Any: ...


class RequestPreparer:
    """Resolves settings and formats prompts for one loaded model (see the module docstring)."""

    def __init__(self, loaded: LoadedModel, *, eos_ids: Sequence[int], pad_id: int | None,
                 family_defaults: GenerationConfig, context_length: int | None, model_name: str,
                 manager: AdapterTasks, tool_format: ToolFormat = GENERIC):
        self.loaded = loaded
        self.eos_ids = tuple(eos_ids)
        self.pad_id = pad_id
        self.family_defaults = family_defaults
        self.context_length = context_length
        #: How error messages name the model (its source's id).
        self.model_name = model_name
        self.manager = manager
        #: How the family's models write tool calls (the ``tool_format`` hook's answer).
        self.tool_format = tool_format

    # -- settings ----------------------------------------------------------------
    def resolve(self, explicit: GenerationConfig, task: str | None) -> GenerationConfig:
        """The settings of a call: ``explicit`` over the task preset, the family's defaults and the global ones."""
        cfg = resolve_settings(explicit, task, self.family_defaults)
        ctx = self.context_length
        cfg = attrs.evolve(cfg, context_length=ctx)
        if ctx is not None:
            if explicit.max_new_tokens is not None and explicit.max_new_tokens >= ctx:
                raise GenerationError(
                    f"max_new_tokens={explicit.max_new_tokens} does not fit in the context of "
                    f"{self.model_name} ({ctx} tokens); ask for fewer new tokens"
                )
            if explicit.max_new_tokens is None and cfg.max_new_tokens >= ctx // 2:
                # a default larger than half the window would leave almost no room for the prompt
                cfg = attrs.evolve(cfg, max_new_tokens=max(1, ctx // 2))
        return cfg

    def adapter_task_type(self, adapter: Any = UNSET) -> str | None:
        """The task preset declared by the adapter's adaptrix.json, if it names one.

        ``adapter``: a name, :data:`UNSET` for the active one; a list or ``None`` selects nothing. A task
        type adaptrix has no preset for (an adapter's own label such as "style") selects nothing rather
        than failing the generation.
        """
        if adapter is None:
            return None
        if adapter is UNSET:
            adapter = self.manager.active
        if not isinstance(adapter, str):
            return None
        try:
            task = self.manager.info(adapter).task_type
        except Exception:
            return None
        return task if task in TASK_PRESETS else None

    # -- prompt formatting ---------------------------------------------------------
    def prepare(self, req: GenerationRequest, conv: Conversation | None) -> PreparedRequest:
        """Resolve ``req``'s settings and format its prompt (with ``conv``'s history) as it will run."""
        loaded = self.loaded
        if req.grammar is not None:
            check_grammar(req.grammar)  # a keyword the engine cannot enforce is refused before any work
        task = req.task_type if req.task_type is not None else self.adapter_task_type(req.adapter)
        cfg = self.resolve(req.settings, task)
        check_logit_bias(cfg, vocabulary_size(loaded.tokenizer))
        template_kwargs = dict(loaded.chat_template_kwargs)
        template_kwargs.update(req.chat_template_kwargs)
        if req.enable_thinking is not None:
            template_kwargs["enable_thinking"] = bool(req.enable_thinking)
        try:
            formatted = self.format(req.prompt, cfg.max_new_tokens, conv, req.system, template_kwargs, req.raw,
                                    req)
        except ContextOverflowError:
            if req.settings.max_new_tokens is not None or self.context_length is None:
                raise
            # No max_new_tokens was asked for and the default does not fit beside this prompt: answer with
            # what the context leaves after the prompt (older turns dropped first, the answer matters more).
            formatted = self.format(req.prompt, None, conv, req.system, template_kwargs, req.raw, req)
            cfg = attrs.evolve(cfg, max_new_tokens=self.context_length - len(formatted.input_ids))
        spans = () if req.show_thinking else tuple(loaded.hidden_spans)
        grammar = self.tool_grammar(req, open_span(formatted.text, tuple(loaded.hidden_spans)))
        return PreparedRequest(
            prompt=formatted,
            settings=cfg,
            stops=tuple(cfg.stop or ()) + formatted.stops,
            spans=spans,
            inside=open_span(formatted.text, spans),
            eos_ids=self.eos_ids,
            pad_id=self.pad_id,
            trim=req.trim,
            grammar=grammar,
            tool_format=self.tool_format if req.tool_use is not None and not req.raw else None,
            logprobs=req.logprobs,
        )

    def tool_grammar(self, req: GenerationRequest, inside: str | None = None):
        """The request's grammar: its own, or the family format's forced call (``tool_choice`` required or a
        named function); ``inside``: the closing tag of a thought the prompt opened, written first."""
        use = req.tool_use
        if use is None or not use.forced or req.raw:
            return req.grammar
        if req.grammar is not None:
            raise GenerationError(f"tool_choice={use.function or use.choice!r} forces a tool call, which is a "
                                  "grammar of its own; drop grammar= (or response_format), or let tool_choice be "
                                  "'auto'")
        tokenizer = self.loaded.tokenizer
        ids = {}
        for tag in (*self.tool_format.tags(), *((inside,) if inside else ())):
            tag_ids = list(tokenizer(tag, add_special_tokens=False)["input_ids"])
            if len(tag_ids) == 1:
                ids[tag] = tag_ids[0]
        return self.tool_format.grammar(use, ids, prefix=inside or "")

    def format(self, prompt: str | Sequence[int], max_new_tokens: int | None, conv: Conversation | None, system: str | None,
               template_kwargs: dict[str, Any], raw: bool, req: GenerationRequest | None = None) -> Prompt:
        """The prompt formatted to leave ``max_new_tokens`` of the context; ``None``: at least one token,
        without history (the overflow error then names the prompt and the context only). ``req``'s tools and
        tool turns are rendered by the family's tool format."""
        tokenizer = self.loaded.tokenizer
        ctx = self.context_length
        budget = None if ctx is None else ctx - (1 if max_new_tokens is None else max_new_tokens)
        name = self.model_name
        if raw:
            if isinstance(prompt, str):
                ids = list(tokenizer(prompt)["input_ids"])
            else:  # token ids: fed as they are; the text is what they read as (nothing is re-encoded)
                ids = list(check_token_ids(prompt, tokenizer))
                prompt = tokenizer.decode(ids, skip_special_tokens=False)
            if budget is not None and len(ids) > budget:
                raise ContextOverflowError(
                    f"the prompt is {len(ids)} tokens; the context of {name} is {ctx} tokens and "
                    + (f"max_new_tokens={max_new_tokens} leaves room for {budget}: shorten the prompt or "
                       "lower max_new_tokens" if max_new_tokens is not None else
                       "leaves no room for an answer: shorten the prompt")
                )
            return Prompt(prompt, tuple(ids), ({"role": "user", "content": prompt},), 0, False)
        if conv is not None and system is None:
            system = conv.system
        turns = conv.turns() if conv is not None else []
        formatted = build_prompt(
            tokenizer,
            prompt,
            history=turns if max_new_tokens is not None else [],
            system=system,
            template_kwargs=template_kwargs,
            budget=budget,
            model_name=name,
            max_new_tokens=max_new_tokens,
            context_length=ctx,
            prompt_message=req.prompt_message if req is not None else None,
            tools=self._tool_render(req),
        )
        return formatted if max_new_tokens is not None else attrs.evolve(formatted, trimmed_turns=len(turns))

    def _tool_render(self, req: GenerationRequest | None):
        """``messages -> (messages, template variables)`` by the family's tool format (tool turns are written
        the way the template can take them; the request's tools offered)."""
        use = req.tool_use if req is not None else None
        fmt = self.tool_format
        try:
            template = template_source(self.loaded.tokenizer, self.model_name)
        except GenerationError:
            template = None
        return lambda messages: fmt.render(messages, use, template)

    def stop_check(self, prepared: Sequence[PreparedRequest]) -> Callable[[int, Sequence[int]], bool] | None:
        """``stop(row, new_ids)`` for the runner: True once a row's visible text holds one of its stop strings."""
        if not any(p.stops for p in prepared):
            return None
        return stop_check(self.loaded.tokenizer, [(p.spans, p.stops, p.inside) for p in prepared],
                          [p.decode_context for p in prepared])


def remember(conv: Conversation | None, req: GenerationRequest, text: str) -> None:
    """Record ``req``'s turn (and its system prompt, when it set one) in ``conv``, if there is one."""
    if conv is not None:
        if req.system is not None:
            conv.system = req.system
        conv.add_turn(req.prompt, text)
