"""Execution backends: how a loaded model runs.

A backend turns a resolved model source into a :class:`Runner`, the object
that tokenizes, generates (batched or streamed, with stop checks) and applies
LoRA adapters. The core ships one backend, ``transformers``, the reference:
every adapter operation and training run on it. Plugins add others through
the ``backends`` hook (e.g. one that runs GGUF files at CPU speed); the
core names no backend but its own.

Choosing (``Engine(backend=...)``, ``--backend``):

- a name picks that backend; it must be installed and able to run the source,
  or the error says what to install or use instead;
- ``auto`` takes, among the installed backends that prefer the source (a GGUF
  file for llama.cpp), the one with the highest ``priority``; when none
  does, the reference backend. :class:`Choice` says which and why.

Nothing here imports torch: a backend imports its engine inside ``load``.
"""

from __future__ import annotations

import importlib.util
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterator, Sequence

import attrs

from ..errors import BackendError

if TYPE_CHECKING:  # pragma: no cover
    import threading

    from ..plugins import PluginHost
    from ..types import GenerationConfig, LoadedModel, LoadOptions

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
    #: The resolved source as this backend loaded it (``adaptrix.source.ModelSource``).
    source: Any
    loaded: "LoadedModel"
    eos_ids: tuple[int, ...] = ()
    pad_id: int | None = None
    #: The context window when the backend knows it better than the config (``None``: the config's).
    context_length: int | None = None
    #: Operations this backend supports beyond generation ("train", "compose", "merge", "mixed_batch",
    #: "step_decode": :meth:`step_decoder` returns a decoder).
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
    ) -> list[list[int]]:
        """New token ids for each prompt row (EOS included when it ended the row).

        ``adapters`` names an adapter per row (``None``: the base model); when
        not given, the active adapters apply. ``stop(row, new_ids)`` ends a row
        early; ``on_tokens`` receives each step's new ids (one row only);
        ``cancel`` ends every row at the next step.
        """

    def stream_tokens(
        self,
        ids: Sequence[int],
        cfg: "GenerationConfig",
        *,
        stop: Callable[[int, Sequence[int]], bool] | None = None,
    ) -> Iterator[int]:
        """One prompt's new token ids, made as the caller pulls them (active adapters apply).

        Closing the iterator stops the generation; the model is free again once
        it has returned or been closed. The default runs :meth:`generate` in a
        worker thread and hands its tokens over; a backend whose engine can
        step on demand (llama.cpp) overrides this to generate in the pulling
        thread, with no thread between the model and the reader.
        """
        import queue
        import threading

        tokens: queue.SimpleQueue = queue.SimpleQueue()
        end = object()
        cancel = threading.Event()
        failure: list[BaseException] = []

        def work() -> None:
            try:
                self.generate([ids], cfg, stop=stop, on_tokens=lambda new: [tokens.put(t) for t in new],
                              cancel=cancel)
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

    def step_decoder(self, engine, *, max_rows: int = 8, batch_invariant: bool = False):
        """A step-level decoder for iteration-level batching (``adaptrix serve``), or ``None`` when this
        backend or model has none (requests are then served one at a time).

        The decoder runs rows of up to ``max_rows`` requests, each with its own
        adapter, one token per row per step: ``add(key, prepared, adapter) ->
        (row, text)`` prefills a :class:`~adaptrix.generation.PreparedRequest`
        (from ``engine.prepare_request``) and may raise
        :class:`~adaptrix.errors.BatchFullError` to be retried later;
        ``add_many([(key, prepared, adapter), ...])`` adds several at once
        (prefilled together where the backend can), returning per item
        ``(row, text)`` or the exception it raised
        (:func:`adaptrix.generation.add_each` adds them one by one); ``step()
        -> [(row, text)]``; ``remove(row)``; ``tail(row)`` (text held back
        until the end); ``finish(row)`` (the
        :class:`~adaptrix.generation.GenerationResult` ``generate`` returns).
        Rows have ``adapter`` and ``finish_reason`` (``eos``, ``stop``,
        ``length``). Greedy rows get what ``generate`` gives them alone, up to
        floating-point effects of computing rows together; with
        ``batch_invariant=True`` each row must be computed exactly as
        ``generate`` computes the request alone (the engine passes it only when
        asked), so its greedy tokens are ``generate``'s whatever runs beside it.
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
    def load(self, source, options: "LoadOptions", host: "PluginHost") -> Runner:
        """Load ``source`` and return a :class:`Runner`; errors are adaptrix errors."""


@attrs.frozen
class BackendRecord:
    """One backend as ``adaptrix plugins list`` shows it."""

    name: str
    plugin: str
    summary: str
    status: str  # "ok", "missing" (a dependency is not installed), "shadowed" (the name is taken)
    error: str | None = None
    backend: Backend | None = attrs.field(default=None, eq=False, repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in attrs.asdict(self, recurse=False).items() if k != "backend"}


@attrs.frozen
class Choice:
    """Which backend runs a model, and why."""

    name: str
    reason: str
    backend: Backend = attrs.field(eq=False, repr=False)


def backend_records(host: "PluginHost") -> list[BackendRecord]:
    """The reference backend, then every plugin's, in the host's order; duplicates marked ``shadowed``."""
    from .transformers import TransformersBackend

    found: list[tuple[str, Backend]] = [("adaptrix", TransformersBackend())]
    for plugin, items in host.call_all("backends"):
        for item in items or ():
            found.append((plugin, item() if isinstance(item, type) else item))
    records: list[BackendRecord] = []
    taken: dict[str, str] = {}
    for plugin, backend in found:
        name = getattr(backend, "name", None)
        if not isinstance(name, str) or not name or not isinstance(backend, Backend):
            raise BackendError(
                f"plugin {plugin!r} returned {backend!r} from its backends hook; return adaptrix.backends.Backend "
                "instances (or classes) with a non-empty name"
            )
        if name in taken:
            records.append(BackendRecord(name, plugin, backend.summary, "shadowed",
                                         f"backend name {name!r} is already provided by {taken[name]!r}", backend))
            continue
        taken[name] = plugin
        missing = backend.missing()
        records.append(BackendRecord(name, plugin, backend.summary, "missing" if missing else "ok", missing, backend))
    return records


def choose_backend(source, requested: str | None, host: "PluginHost") -> Choice:
    """Pick the backend for ``source``: a named one, or ``auto`` (see the module docstring)."""
    requested = (requested or AUTO).strip().lower()
    records = [r for r in backend_records(host) if r.status != "shadowed"]
    by_name = {r.name: r for r in records}
    if requested != AUTO:
        record = by_name.get(requested)
        if record is None:
            names = ", ".join([AUTO, *by_name])
            raise BackendError(
                f"backend {requested!r} is not installed; installed backends: {names}"
                + _install_hint(requested)
            )
        if record.status != "ok":
            raise BackendError(f"backend {requested!r} cannot run here: {record.error}")
        why_not = record.backend.refuses(source)
        if why_not:
            raise BackendError(f"backend {requested!r} cannot run {_name(source)}: {why_not}")
        return Choice(requested, "asked for", record.backend)
    usable = [r for r in records if r.status == "ok" and not r.backend.refuses(source)]
    preferring = sorted((r for r in usable if r.backend.prefers(source)), key=lambda r: -r.backend.priority)
    if preferring:
        best = preferring[0]
        return Choice(best.name, f"auto: the {best.name} backend is installed and prefers this source", best.backend)
    reference = by_name[REFERENCE]
    others = [r.name for r in records if r.name != REFERENCE]
    reason = "auto: the reference backend" + (
        f" (no other installed backend prefers this source: {', '.join(others)})" if others else
        " (no other backend installed)"
    )
    return Choice(REFERENCE, reason, reference.backend)


def _name(source) -> str:
    return str(getattr(source, "model_id", source))


def _install_hint(name: str) -> str:
    return f"; pip install adaptrix-{name}?" if name.isidentifier() else ""
