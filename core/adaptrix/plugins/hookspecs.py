"""The hooks a family plugin implements.

A plugin is a module (or any object) with functions decorated by
:data:`hookimpl`, registered under the ``adaptrix`` entry-point group::

    [project.entry-points.adaptrix]
    myfamily = "adaptrix_myfamily"

Every hook is optional, and an implementation may take any subset of the
spec's arguments (``def detect_family(config)``). The smallest family plugin
implements ``detect_family`` alone. The plugin whose ``detect_family`` answers
a family owns it: the family-keyed hooks (``load_model``,
``default_generation_config``, ``target_modules``, ``family_options``,
``chat_behaviour``, ``tool_format``) are called on the owner
only, so they need no "is this my family?" check, and one the owner leaves out
or answers ``None`` to falls back to the core's standard behaviour
(:mod:`adaptrix.plugins.fallbacks`).

pluggy calls these hooks (through :class:`adaptrix.plugins.host.PluginHost`), so
each spec's options mean what pluggy says: a ``firstresult`` hook stops at the
first non-``None`` answer, ``@hookimpl(tryfirst=True)`` / ``trylast`` order
the answers, and ``@hookimpl(wrapper=True)`` wraps a call (owner-only calls
included) and may change its result. See ``docs/writing-a-plugin.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from adaptrix.adapters.convert import AdapterConverter
    from adaptrix.backends.contract import Backend
    from adaptrix.generation.tools.format import ToolFormat
    from adaptrix.serve.modes import ServeMode
    from adaptrix.storage.caches import CacheKind
    from adaptrix.types import ChatBehaviour, GenerationConfig, LoadedModel, LoadOptions

PROJECT = "adaptrix"

hookspec = pluggy.HookspecMarker(PROJECT)
#: Decorator for plugin functions: ``@adaptrix.hookimpl``.
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def families() -> list[str]:
    """Optionally declare the family names this plugin provides, before any detection.

    Receives nothing. Returns a list of family names such as ``["qwen"]``.
    Used by ``adaptrix plugins list``, ``Engine(family=...)`` and conflict
    reports; ownership otherwise comes from ``detect_family``. Not
    ``firstresult``: every plugin answers, and two plugins listing the same
    family are reported as a conflict.
    """


@hookspec(firstresult=True)
def detect_family(model_id: str, config: dict[str, Any] | None) -> str | None:
    """Say which family a model belongs to, or ``None`` if it is not yours.

    ``model_id`` is the Hub id or local path the user gave; ``config`` is the
    model's ``config.json`` parsed into a plain dict, or ``None`` when it could
    not be read. Decide from ``config["model_type"]`` and
    ``config["architectures"]`` first, and from ``model_id`` only when there is
    no config. Never claim a model that is not a causal LM (an encoder, a
    classification or reward head). Returns the family name or ``None``;
    ``firstresult``: the first non-``None`` answer wins, unless it names a
    family another plugin already owns: then it is skipped and the question
    asked again without your plugin.
    """


@hookspec(firstresult=True)
def load_model(family: str, model_id: str, options: "LoadOptions") -> "LoadedModel | None":
    """Load the model and its tokenizer for a family you own.

    ``family`` is what detection returned, ``model_id`` a Hub id or local
    folder, ``options`` the device, dtype, revision and ``trust_remote_code``
    the user asked for. Return a :class:`~adaptrix.types.LoadedModel` with the
    model in eval mode on the requested device and the family's tokenizer fixes
    applied (pad token, padding side, chat-template quirks); how the model
    chats is ``chat_behaviour``'s, on every backend, not this hook's. Called on the
    family's owner only; left out (or ``None``), the shared loader
    :func:`adaptrix.models.loading.load_causal_lm` loads the model.
    """


@hookspec(firstresult=True)
def default_generation_config(family: str, config: dict[str, Any] | None) -> "GenerationConfig | None":
    """Return the family's recommended sampling defaults, or ``None``.

    ``config`` is the model's ``config.json`` as a dict (or ``None``). The
    returned :class:`~adaptrix.types.GenerationConfig` should carry
    ``context_length`` read from that config (see
    :func:`adaptrix.models.modelconfig.context_length`), not a constant. Called on
    the family's owner only; left out (or ``None``), the global defaults apply.
    """


@hookspec(firstresult=True)
def target_modules(family: str, config: dict[str, Any] | None) -> list[str] | None:
    """Return the LoRA target module names for a family you own, or ``None``.

    Names are the leaf names of Linear-like layers (``nn.Linear``, GPT-2's
    ``Conv1D``; see :func:`adaptrix.adapters.targets.linear_features`) as they appear
    in the loaded model (``q_proj``, ``qkv_proj``, ...), the form PEFT's
    ``target_modules`` takes. ``config`` may change the answer (e.g. phi-2 vs
    phi-3). Called on the family's owner only; left out (or ``None``), the
    answer is ``["all-linear"]``.
    """


@hookspec
def backends() -> "list[Backend]":
    """List the execution backends this plugin provides (see :mod:`adaptrix.backends`).

    Receives nothing. Returns a list of :class:`~adaptrix.backends.contract.Backend`
    instances (or classes, instantiated with no arguments). A backend is how a
    loaded model runs: it tokenizes, generates and applies adapters; the core
    ships the reference ``transformers`` backend. Not ``firstresult``: every
    plugin's list is gathered, and a name already taken is reported as
    shadowed by ``adaptrix plugins list``. Import the backend's engine inside
    its ``load`` method, never at module import.
    """


@hookspec
def adapter_converters() -> "list[AdapterConverter]":
    """List the adapter file formats this plugin converts to and from PEFT folders.

    Receives nothing. Returns a list of
    :class:`~adaptrix.adapters.convert.AdapterConverter` (a format name such as
    ``"gguf-lora"``, its file suffixes, ``from_peft``, ``to_peft`` and
    ``recognizes`` callables); ``adaptrix adapters convert SRC DST`` picks one
    from the paths. Not ``firstresult``: every plugin's list is gathered, and a
    format two plugins provide goes to the first. Import the conversion code
    inside the callables, never at module import.
    """


@hookspec
def caches() -> "list[CacheKind]":
    """List the kinds of on-disk cache this plugin writes under adaptrix's cache root.

    Receives nothing. Returns a list of :class:`~adaptrix.storage.caches.CacheKind` (a
    name, a sub-folder of the cache root, a summary, optionally a size budget
    and which names in the folder are entries); ``adaptrix cache`` shows and
    clears them beside the core's own, and
    :func:`adaptrix.storage.caches.enforce_budget` evicts the least recently used
    entries of a kind with a budget. Not ``firstresult``: every plugin's list
    is gathered, and a name already taken goes to the first. Keep the import
    light: no engine or numerical library at import time.
    """


@hookspec(firstresult=True)
def family_options(family: str) -> "dict[str, str] | None":
    """Declare the family options (extra ``Engine(...)`` keyword arguments) a family you own takes.

    Receives the family name. Returns a dict of option name -> one-line
    description, e.g. ``{"enable_thinking": "start Qwen3 chats with thinking on"}``,
    or ``None``. The engine passes declared options to ``load_model`` as
    ``options.family_options``; it refuses, when constructed, a name no
    installed plugin declares, and at ``initialize()`` one the detected family
    does not declare. ``firstresult``.
    """


@hookspec(firstresult=True)
def chat_behaviour(
    family: str, config: dict[str, Any] | None, template: str | None, family_options: dict[str, Any]
) -> "ChatBehaviour | None":
    """Say how a model of a family you own chats, on whatever backend runs it.

    Receives the family, the model's config as a dict (``None`` when unknown;
    for a GGUF, the config read from its metadata), ``template``, the chat
    template the backend will render (from the tokenizer or the GGUF's
    metadata; ``None`` when the model has none), and ``family_options``, the
    family options the user passed (``Engine(enable_thinking=True)``; ``{}``
    when none). Return an :class:`~adaptrix.types.ChatBehaviour`: whether the
    model thinks and whether chats think by default (the ``enable_thinking``
    template variable), the spans hidden from answers (``("<think>",
    "</think>")``), further template variables, and end-of-turn tokens. Every
    backend asks this hook once per load (:func:`adaptrix.plugins.family_chat.ask`), so
    a model chats the same on each. Called on the family's owner only;
    ``firstresult``; left out (or ``None``), the core's generic behaviour
    answers (:func:`adaptrix.plugins.fallbacks.chat_behaviour`).
    """


@hookspec
def serve_modes() -> "list[ServeMode]":
    """List the other ways of running ``adaptrix serve`` this plugin provides (see :mod:`adaptrix.serve.modes`).

    Receives nothing. Returns a list of :class:`~adaptrix.serve.modes.ServeMode`: each adds its options to
    ``adaptrix serve`` (``--replicas N``) and, when a command line uses them, serves in its own way (replicas
    on a Ray cluster) with the server settings the core parsed, through the same app
    (:func:`adaptrix.serve.app.create_app` with ``make_executor``). Not ``firstresult``: every plugin's list is
    gathered; an option two modes both add goes to the first. Keep the import light: import what the mode
    runs on (``ray``) inside ``run``, never at module import, so ``adaptrix --help`` stays fast.
    """


@hookspec(firstresult=True)
def tool_format(family: str, config: dict[str, Any] | None, template: str | None) -> "ToolFormat | None":
    """Say how a model of a family you own writes tool calls, on whatever backend runs it.

    Receives the family, the model's config as a dict (``None`` when unknown) and ``template``, the chat
    template the backend renders (``None`` when the model has none). Return a
    :class:`~adaptrix.generation.tools.format.ToolFormat`: how tools and tool turns are rendered (through the template
    when it takes ``tools=``, else in the system prompt), how calls are parsed out of an output, the tags a
    stream holds back, and the grammar that forces a call (``tool_choice: "required"`` or a named function).
    Most formats only set fields of the base class (``ToolFormat(name="hermes", open_tag="<tool_call>",
    close_tag="</tool_call>")``); a format whose calls are not tagged JSON subclasses it. The engine asks
    once per load. Called on the family's owner only; ``firstresult``; left out (or ``None``), the core's
    generic JSON format answers (:data:`adaptrix.generation.tools.format.GENERIC`: ``<tool_call>{"name": ...,
    "arguments": {...}}</tool_call>``).
    """
