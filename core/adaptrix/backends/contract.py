"""The backend contract: what a :class:`Backend` loads and what a :class:`Runner` does.

A backend turns a resolved model source into a :class:`Runner`, the object
that tokenizes, generates (batched or streamed, with stop checks) and applies
LoRA adapters. The core ships one backend, ``transformers``, the reference:
every adapter operation and training run on it. Plugins add others through
the ``backends`` hook (e.g. one that runs GGUF files at CPU speed); the
core names no backend but its own.

Nothing here imports torch: a backend imports its engine inside ``load``.
"""

from __future__ import annotations

import importlib.util
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterator, Sequence

from adaptrix.errors import BackendError

if TYPE_CHECKING:  # pragma: no cover
    import threading

    from adaptrix.generation.grammar import Grammar
    from adaptrix.generation.lease import ModelLease
    from adaptrix.generation.matcher import TokenVocabulary
    from adaptrix.generation.scoring import TokenLogprob
    from adaptrix.generation.steps import StepDecoder
    from adaptrix.types import GenerationConfig, LoadedModel, LoadOptions

REFERENCE = "transformers"
AUTO = "auto"

#: ``stop(new_ids) -> bool``: True once a row's visible text reached a stop string.
StopCheck = Callable[[Sequence[int]], bool]


class Runner(ABC):
    """A model loaded on one backend, as the engine drives it.

    ``loaded`` carries the backend's model handle, its tokenizer (the subset
    of a transformers tokenizer the engine uses: ``__call__``, ``decode``,
    ``chat_template``, ``apply_chat_template``, ``convert_tokens_to_ids``) and
    the family's chat settings. ``adapters`` is the backend's adapter manager.
    """

    backend: str
    #: The resolved source as this backend loaded it (``adaptrix.models.source.ModelSource``).
    source: Any
    loaded: "LoadedModel"
    eos_ids: tuple[int, ...] = ()
    pad_id: int | None = None
    #: The context window when the backend knows it better than the config (``None``: the config's).
    context_length: int | None = None
    #: What the engine asks of this backend beyond generation, read by :meth:`adaptrix.Engine.step_decoder`:
    #: ``"step_decode"``: :meth:`step_decoder` returns a decoder (``adaptrix serve`` batches requests; without
    #: it the server runs one request at a time); ``"batch_invariant"``: that decoder can compute each row
    #: exactly as alone (``adaptrix serve --batch-invariant``; refused by name without it). Adapter
    #: operations are the adapter manager's to declare (``COMPOSE_METHODS``, ``CAN_MERGE``). ``"grammar"``:
    #: :meth:`generate` and :meth:`stream_tokens` enforce a :class:`~adaptrix.generation.grammar.Grammar` per row
    #: (``grammars=``), and so does the step decoder (``PreparedRequest.grammar``); without it a constrained
    #: request is refused by name.
    capabilities: ClassVar[frozenset[str]] = frozenset()

    @abstractmethod
    def generate(
        self,
        rows: Sequence[Sequence[int]],
        cfg: "GenerationConfig",
        *,
        adapters: Sequence[str | None] | None = None,
        stop: Callable[[int, Sequence[int]], bool] | None = None,
        on_tokens: Callable[[list[int]], None] | None = None,
        cancel: "threading.Event | None" = None,
        grammars: "Sequence[Grammar | None] | None" = None,
    ) -> list[list[int]]:
        """New token ids for each prompt row (EOS included when it ended the row).

        ``adapters`` names an adapter per row (``None``: the base model); when
        not given, the active adapters apply. ``stop(row, new_ids)`` ends a row
        early; ``on_tokens`` receives each step's new ids (one row only);
        ``cancel`` ends every row at the next step. ``grammars`` (runners with
        the ``"grammar"`` capability; the engine passes it only when a row has
        one): a grammar per row (``None``: free), enforced with
        :func:`adaptrix.generation.matcher.row_matchers`' token masks.
        """

    def stream_tokens(
        self,
        ids: Sequence[int],
        cfg: "GenerationConfig",
        *,
        stop: Callable[[int, Sequence[int]], bool] | None = None,
        grammar: "Grammar | None" = None,
    ) -> Iterator[int]:
        """One prompt's new token ids, made as the caller pulls them (active adapters apply).

        Closing the iterator stops the generation; the model is free again once
        it has returned or been closed. The default runs :meth:`generate` in a
        worker thread and hands its tokens over; a backend whose engine can
        step on demand (llama.cpp) overrides this to generate in the pulling
        thread, with no thread between the model and the reader. ``grammar``: as
        :meth:`generate`'s ``grammars`` for this one row.
        """
        import queue
        import threading

        tokens: queue.SimpleQueue = queue.SimpleQueue()
        end = object()
        cancel = threading.Event()
        failure: list[BaseException] = []

        def work() -> None:
            try:
                extra = {} if grammar is None else {"grammars": [grammar]}
                self.generate([ids], cfg, stop=stop, on_tokens=lambda new: [tokens.put(t) for t in new],
                              cancel=cancel, **extra)
            except BaseException as exc:  # re-raised in the pulling thread
                failure.append(exc)
            finally:
                tokens.put(end)

        worker = threading.Thread(target=work, name="adaptrix-generate", daemon=True)
        worker.start()
        try:
            while (item := tokens.get()) is not end:
                yield item
            if failure:
                raise failure[0]
        finally:
            cancel.set()
            worker.join()  # within one step: the model is free when this returns

    def token_vocabulary(self) -> "TokenVocabulary":
        """The model's vocabulary as the grammar engine reads it (runners with the ``"grammar"`` capability)."""
        raise BackendError(f"the {self.backend} backend cannot constrain its output to a grammar")

    def token_logprobs(
        self,
        rows: Sequence[Sequence[int]],
        starts: Sequence[int],
        *,
        adapters: Sequence[str | None] | None = None,
        top: int = 0,
    ) -> list[list["TokenLogprob"]]:
        """Per row, a :class:`~adaptrix.generation.scoring.TokenLogprob` for each of ``row[start:]`` given
        the ids before it (``row[0]``, when ``start`` is 0, has no logprob).

        Raw model logits (no temperature or penalty), ``top`` alternatives per
        token, built with :func:`adaptrix.generation.scoring.logprob_rows`.
        ``adapters`` names an adapter per row (``None``: the base model); when
        not given, the active adapters apply. One forward pass per batch where
        the backend can.
        """
        raise BackendError(
            f"the {self.backend} backend cannot score tokens (logprobs); use a backend that can, e.g. "
            f"backend={REFERENCE!r}"
        )

    def step_decoder(self, *, lease: "ModelLease", max_rows: int = 8,
                     batch_invariant: bool = False) -> "StepDecoder | None":
        """A step-level decoder for iteration-level batching (``adaptrix serve``), or ``None`` when this
        model has none (requests are then served one at a time). Called only when ``capabilities`` holds
        ``"step_decode"`` (and ``"batch_invariant"`` when ``batch_invariant`` is asked).

        The runner builds it from what it owns (its model, tokenizer, adapter manager); ``lease`` is the
        engine's model lease (the ``lock`` its adapter manager was given), which the decoder holds while it
        touches the model. The decoder satisfies :class:`adaptrix.generation.steps.StepDecoder`: rows of up
        to ``max_rows`` requests, each with its own adapter, one token per row per step, its rows
        :class:`adaptrix.generation.steps.Row`, ended by the shared ``row_finish``, ``row_tail`` and
        ``finish_row``. Greedy rows get what ``generate`` gives them alone, up to floating-point effects of
        computing rows together; with ``batch_invariant=True`` each row must be computed exactly as
        ``generate`` computes the request alone, so its greedy tokens are ``generate``'s whatever runs
        beside it.
        """
        return None

    @abstractmethod
    def info(self) -> dict[str, Any]:
        """``dtype``, ``device``, ``parameters`` and anything else worth showing."""

    @abstractmethod
    def adapter_manager(self, adapters_dir, **options):
        """The backend's :class:`~adaptrix.adapters.manager.AdapterManager` for this model (built once).

        ``options``: ``max_loaded_adapters``, ``max_adapter_bytes``, ``merge``, ``lock``.
        """

    def close(self) -> None:
        """Release the model (the engine drops its reference right after)."""


class Backend(ABC):
    """A way to run models; registered by plugins through the ``backends`` hook."""

    name: ClassVar[str]
    #: One line for ``adaptrix plugins list`` and errors.
    summary: ClassVar[str] = ""
    #: ``auto`` prefers the highest priority among backends that prefer a source.
    priority: ClassVar[int] = 0
    #: Modules that must be importable (checked without importing them).
    requires: ClassVar[tuple[str, ...]] = ()
    #: What to run to install what ``requires`` names.
    install_hint: ClassVar[str] = ""

    def missing(self) -> str | None:
        """``None`` when usable here, else what is missing and how to install it (imports nothing)."""
        absent = [m for m in self.requires if importlib.util.find_spec(m) is None]
        if not absent:
            return None
        hint = f"; install it: {self.install_hint}" if self.install_hint else ""
        return f"module(s) {', '.join(absent)} not installed{hint}"

    def prefers(self, source) -> bool:
        """Whether ``auto`` should pick this backend for ``source`` (a resolved model source)."""
        return False

    def refuses(self, source) -> str | None:
        """``None`` when this backend can run ``source``, else why not and what to do."""
        return None

    @abstractmethod
    def load(self, source, options: "LoadOptions", host: Any) -> Runner:
        """Load ``source`` and return a :class:`Runner`; errors are adaptrix errors.

        ``host`` is the engine's plugin host (:class:`adaptrix.plugins.host.PluginHost`), for the family hooks.
        """
