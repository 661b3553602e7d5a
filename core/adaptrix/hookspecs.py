"""The hooks a family plugin implements.

A plugin is a module (or any object) with functions decorated by
:data:`hookimpl`, registered under the ``adaptrix`` entry-point group::

    [project.entry-points.adaptrix]
    myfamily = "adaptrix_myfamily"

Every hook below is ``firstresult`` unless it says otherwise: pluggy calls the
implementations in order (``tryfirst`` ones, then the rest, ``trylast`` ones
last) and stops at the first one that returns something other than ``None``.
A plugin answers ``None`` for families it does not own. See
``docs/writing-a-plugin.md`` for the ordering and conflict rules.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from .types import GenerationConfig, LoadedModel, LoadOptions

PROJECT = "adaptrix"

hookspec = pluggy.HookspecMarker(PROJECT)
#: Decorator for plugin functions: ``@adaptrix.hookimpl``.
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def families() -> list[str]:
    """List the family names this plugin provides (diagnostics, conflicts).

    Receives nothing. Returns a list of family names such as ``["qwen"]``.
    Not ``firstresult``: every plugin answers, and two plugins listing the
    same family are reported as a conflict by ``adaptrix plugins list``.
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
    ``firstresult``: the first non-``None`` answer wins.
    """


@hookspec(firstresult=True)
def load_model(family: str, model_id: str, options: "LoadOptions") -> "LoadedModel | None":
    """Load the model and its tokenizer for a family you own.

    ``family`` is what detection returned, ``model_id`` a Hub id or local
    folder, ``options`` the device, dtype, revision and ``trust_remote_code``
    the user asked for. Return a :class:`~adaptrix.types.LoadedModel` with the
    model in eval mode on the requested device and the family's tokenizer fixes
    applied (pad token, padding side, chat-template quirks), or ``None`` when
    ``family`` is not yours. ``firstresult``.
    """


@hookspec(firstresult=True)
def default_generation_config(family: str, config: dict[str, Any] | None) -> "GenerationConfig | None":
    """Return the family's recommended sampling defaults, or ``None``.

    ``config`` is the model's ``config.json`` as a dict (or ``None``). The
    returned :class:`~adaptrix.types.GenerationConfig` should carry
    ``context_length`` read from that config (see
    :func:`adaptrix.modelconfig.context_length`), not a constant.
    ``firstresult``.
    """


@hookspec(firstresult=True)
def target_modules(family: str, config: dict[str, Any] | None) -> list[str] | None:
    """Return the LoRA target module names for a family you own, or ``None``.

    Names are the leaf names of ``nn.Linear`` modules as they appear in the
    loaded model (``q_proj``, ``qkv_proj``, ...), the form PEFT's
    ``target_modules`` takes. ``config`` may change the answer (e.g. phi-2 vs
    phi-3). ``firstresult``.
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
