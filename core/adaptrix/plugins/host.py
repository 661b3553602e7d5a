"""Find, validate and call family plugins.

Plugins are registered under the ``adaptrix`` entry-point group. Each one is
loaded on its own: a plugin that fails to import or fails validation is
recorded (status ``failed``) with its error and skipped, and the others load.

Environment:

- ``ADAPTRIX_STRICT_PLUGINS=1``: a failing plugin raises instead (tests, CI).
- ``ADAPTRIX_DISABLE_PLUGINS=a,b``: never load these (status ``blocked``).
- ``ADAPTRIX_LOAD_PLUGINS=a,b``: load only these (others ``disabled``); an
  empty value loads none. Unknown names in either are an error.

Ownership: the plugin whose ``detect_family`` answered a family owns it; only
the owner's family-keyed hooks (``FAMILY_HOOKS``) are called for that family,
and a hook the owner leaves out (or answers ``None`` to) falls back to the
core's standard behaviour in :mod:`adaptrix.plugins.fallbacks`. ``families()`` is
optional: when present it declares ownership up front (for ``--family`` and
diagnostics). Two plugins claiming one family (by ``families()`` or by
detection) is a conflict: the one whose entry-point name sorts first owns it,
the other's answers for that family are skipped, and both records say so.

Plugins that implement no family hook at all (e.g. an execution backend) are
welcome as long as they implement some adaptrix hook.

Calling: pluggy calls every hook (``pm.hook.X`` for the all-plugins hooks, a
``pm.subset_hook_caller`` without the other plugins' implementations for
owner-restricted and excluding calls), so the hookspecs' ``firstresult``,
``tryfirst``/``trylast``, hookwrappers (``@hookimpl(wrapper=True)``, which
wrap owner-restricted calls too) and pluggy's tracing and
``add_hookcall_monitoring`` all apply. The host guards each implementation it
registers: an exception names the plugin and the hook (a
:class:`~adaptrix.errors.PluginError`), ``call_all`` skips a plugin that
raises, and the guard notes which plugin gave each answer.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os
import threading
import warnings
from importlib import metadata
from typing import Any, Iterable, Iterator

import attrs
import pluggy

from adaptrix.errors import AdaptrixError, PluginConfigError, PluginError, PluginUnavailableError
from adaptrix.plugins import fallbacks, hookspecs

ENTRY_POINT_GROUP = "adaptrix"
STATUSES = ("ok", "failed", "blocked", "disabled")
#: Hooks whose first argument is a family name; only that family's owner answers.
FAMILY_HOOKS = ("load_model", "default_generation_config", "target_modules", "family_options", "chat_behaviour",
                "tool_format")
#: Family hooks whose absence ``plugins list`` reports as answered by the core's standard behaviour
#: (``family_options`` left out simply means the family takes no options, ``chat_behaviour`` that its models
#: chat the generic way).
REPORTED_FALLBACKS = ("load_model", "default_generation_config", "target_modules")
#: Hooks that make a plugin a family plugin (as does a non-empty ``families()``).
FAMILY_PLUGIN_HOOKS = ("detect_family",) + FAMILY_HOOKS


class PluginWarning(UserWarning):
    """A plugin failed and was skipped (strict mode off)."""


@attrs.frozen
class PluginRecord:
    """One plugin as ``adaptrix plugins list`` shows it."""

    name: str
    distribution: str | None
    version: str | None
    entry_point: str | None
    status: str
    error: str | None = None
    families: tuple[str, ...] = ()
    hooks: tuple[str, ...] = ()
    conflicts: tuple[str, ...] = ()
    #: Family hooks this family plugin leaves to the core's standard behaviour.
    fallback_hooks: tuple[str, ...] = ()
    exception: BaseException | None = attrs.field(default=None, eq=False, repr=False)

    def as_dict(self) -> dict[str, Any]:
        d = attrs.asdict(self, filter=lambda a, v: a.name != "exception")
        for key in ("families", "hooks", "conflicts", "fallback_hooks"):
            d[key] = list(d[key])
        return d


def _env_list(environ: dict[str, str], key: str) -> list[str] | None:
    raw = environ.get(key)
    if raw is None:
        return None
    return [part.strip() for part in raw.split(",") if part.strip()]


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


class PluginHost:
    """A pluggy manager plus the bookkeeping adaptrix needs around it."""

    def __init__(self, environ: dict[str, str] | None = None, strict: bool | None = None):
        self.environ = dict(os.environ if environ is None else environ)
        self.strict = _truthy(self.environ.get("ADAPTRIX_STRICT_PLUGINS")) if strict is None else strict
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self._records: dict[str, PluginRecord] = {}
        self._objects: dict[str, object] = {}
        self._owners: dict[str, str] = {}
        self._detected: dict[str, str] = {}
        self._lock = threading.RLock()  # detection records owners; engines may detect from threads

    # -- loading -----------------------------------------------------------
    def load_entry_points(self, entry_points: Iterable[metadata.EntryPoint] | None = None) -> None:
        """Load every plugin of the ``adaptrix`` entry-point group, one at a time."""
        eps = list(metadata.entry_points(group=ENTRY_POINT_GROUP) if entry_points is None else entry_points)
        eps.sort(key=lambda ep: ep.name)
        names = [ep.name for ep in eps]
        disable = _env_list(self.environ, "ADAPTRIX_DISABLE_PLUGINS") or []
        only = _env_list(self.environ, "ADAPTRIX_LOAD_PLUGINS")
        for var, asked in (("ADAPTRIX_DISABLE_PLUGINS", disable), ("ADAPTRIX_LOAD_PLUGINS", only or [])):
            unknown = sorted(set(asked) - set(names))
            if unknown:
                raise PluginConfigError(
                    f"{var} names unknown plugin(s) {', '.join(unknown)}; "
                    f"installed plugins are: {', '.join(names) or '(none)'}"
                )
        # pluggy calls the most recently registered plugin first: register in
        # descending name order so entry-point plugins answer in ascending order.
        for ep in reversed(eps):
            dist_name, version = _dist_info(ep)
            base = dict(name=ep.name, distribution=dist_name, version=version, entry_point=ep.value)
            if ep.name in disable:
                self._records[ep.name] = PluginRecord(status="blocked", error="ADAPTRIX_DISABLE_PLUGINS", **base)
                self.pm.set_blocked(ep.name)
                continue
            if only is not None and ep.name not in only:
                self._records[ep.name] = PluginRecord(
                    status="disabled", error="not in ADAPTRIX_LOAD_PLUGINS", **base
                )
                continue
            try:
                obj = ep.load()
            except Exception as exc:  # a broken plugin must not break the others
                self._fail(base, exc, "failed to import")
                continue
            self.register(obj, ep.name, distribution=dist_name, version=version, entry_point=ep.value)
        self._resolve_owners()

    def register(
        self,
        plugin: object,
        name: str,
        *,
        distribution: str | None = None,
        version: str | None = None,
        entry_point: str | None = None,
    ) -> PluginRecord:
        """Register a plugin object by hand (tests, embedding): validated like any other.

        Hand-registered plugins are called before entry-point ones (pluggy
        calls the most recently registered first).
        """
        base = dict(name=name, distribution=distribution, version=version, entry_point=entry_point)
        if name in self._records and self._records[name].status == "ok":
            raise PluginError(f"a plugin named {name!r} is already registered; pick another name")
        try:
            self.pm.register(plugin, name=name)
        except Exception as exc:
            self._fail(base, exc, "failed validation")
            return self._records[name]
        try:
            hooks = self._validate(plugin, name)
            families = self._families_of(plugin, name)
        except Exception as exc:
            self.pm.unregister(plugin, name=name)
            self._fail(base, exc, "failed validation")
            return self._records[name]
        fallback = _fallback_hooks(self._answered_hooks(plugin), families)
        record = PluginRecord(
            status="ok", families=tuple(families), hooks=tuple(hooks), fallback_hooks=fallback, **base
        )
        self._records[name] = record
        self._objects[name] = plugin
        self._resolve_owners()
        return self._records[name]

    def _validate(self, plugin: object, name: str) -> list[str]:
        """The hooks ``plugin`` implements, each implementation guarded (see :func:`_guard`)."""
        hooks = []
        for caller in self.pm.get_hookcallers(plugin) or []:
            if not caller.has_spec():
                raise PluginError(
                    f"plugin {name!r} implements unknown hook {caller.name!r}; "
                    f"adaptrix hooks are: {', '.join(sorted(_spec_names()))}"
                )
            hooks.append(caller.name)
            for impl in caller.get_hookimpls():
                if impl.plugin is plugin and _answers(impl):
                    _guard(impl, caller.name)
        if not hooks:
            raise PluginError(f"plugin {name!r} implements no adaptrix hook (use @adaptrix.hookimpl)")
        return sorted(hooks)

    def _answered_hooks(self, plugin: object) -> list[str]:
        """The hooks ``plugin`` answers (a hookwrapper alone only wraps the others' answers)."""
        return [c.name for c in self.pm.get_hookcallers(plugin) or [] if any(
            i.plugin is plugin and _answers(i) for i in c.get_hookimpls())]

    def _families_of(self, plugin: object, name: str) -> list[str]:
        if "families" not in self._answered_hooks(plugin):
            return []
        others = [i.plugin_name for i in self.pm.hook.families.get_hookimpls() if i.plugin is not plugin]
        with _calling(isolate=False):
            answers = self.hook_caller("families", exclude=others)()
        result = answers[0] if answers else None
        if not isinstance(result, (list, tuple)) or not all(isinstance(f, str) and f for f in result):
            raise PluginError(f"hook families() must return a list of non-empty strings, got {result!r}")
        return list(result)

    def _fail(self, base: dict, exc: BaseException, what: str) -> None:
        who = base["name"]
        if base.get("distribution"):
            who += f" ({base['distribution']} {base.get('version') or ''})".rstrip(" )") + ")"
        message = f"{type(exc).__name__}: {exc}"
        if self.strict:
            raise PluginError(f"adaptrix plugin {who} {what}: {message}") from exc
        self._records[base["name"]] = PluginRecord(status="failed", error=message, exception=exc, **base)
        warnings.warn(
            f"adaptrix plugin {who} {what}: {message}; skipped, other plugins are unaffected "
            "(ADAPTRIX_STRICT_PLUGINS=1 makes this an error)",
            PluginWarning,
            stacklevel=3,
        )

    def _resolve_owners(self) -> None:
        claims: dict[str, list[str]] = {}
        for name in sorted(self._objects):
            for family in self._records[name].families:
                claims.setdefault(family, []).append(name)
        for family, name in self._detected.items():
            if name in self._objects and name not in claims.get(family, []):
                claims.setdefault(family, []).append(name)
                claims[family].sort()
        self._owners = {family: names[0] for family, names in claims.items()}
        for name in self._objects:
            notes = []
            for family, names in sorted(claims.items()):
                rivals = [n for n in names if n != name]
                if name in names and rivals:
                    notes.append(
                        f"family {family!r} also claimed by {', '.join(rivals)}; {names[0]!r} wins "
                        "(first entry-point name in sort order)"
                    )
            self._records[name] = attrs.evolve(self._records[name], conflicts=tuple(notes))

    # -- queries -----------------------------------------------------------
    def records(self) -> list[PluginRecord]:
        return [self._records[n] for n in sorted(self._records)]

    def record(self, name: str) -> PluginRecord:
        return self._records[name]

    def families(self) -> dict[str, str]:
        """Family name -> owning plugin name (declared by ``families()`` or learnt by detection)."""
        return dict(sorted(self._owners.items()))

    def owner(self, family: str) -> str:
        """The plugin that owns ``family``; raises if none does, carrying any plugin failure."""
        if family in self._owners:
            return self._owners[family]
        for record in self._records.values():
            if record.status != "ok" and (record.name == family or family in record.families):
                raise PluginUnavailableError(
                    f"family {family!r} is provided by plugin {record.name!r}, which is {record.status}: "
                    f"{record.error}",
                    original=record.exception,
                )
        raise PluginUnavailableError(
            f"no installed plugin provides family {family!r}; installed families: "
            f"{', '.join(self._owners) or '(none)'} (pip install adaptrix-{family}?)"
        )

    def unavailable(self) -> list[PluginRecord]:
        return [r for r in self.records() if r.status != "ok"]

    # -- calling -----------------------------------------------------------
    # Every call below goes through pluggy's hook caller (``pm.hook.X`` or a
    # ``pm.subset_hook_caller``), so firstresult, hookwrappers, tracing and
    # ``add_hookcall_monitoring`` apply. What pluggy cannot tell (which plugin
    # answered, and which one raised) the guard around each implementation
    # records in the current call's :class:`_Call` (see :func:`_guard`).
    def hook_caller(self, hook: str, exclude: Iterable[str] = ()) -> pluggy.HookCaller:
        """pluggy's caller for ``hook`` without the implementations of the plugins named in ``exclude``.

        Only the excluded plugins' answering implementations are left out:
        hookwrappers of other plugins still wrap the call.
        """
        hook_caller = getattr(self.pm.hook, hook)
        skip = set(exclude)
        removed = {i.plugin for i in hook_caller.get_hookimpls() if i.plugin_name in skip and _answers(i)}
        return self.pm.subset_hook_caller(hook, remove_plugins=removed) if removed else hook_caller

    def call_first(self, hook: str, exclude: Iterable[str] = (), **kwargs: Any) -> tuple[Any, str | None]:
        """Call the firstresult ``hook`` through pluggy: ``(first non-None result, plugin that gave it)``.

        The plugins named in ``exclude`` are not asked. A hookwrapper may
        change the result; the plugin named is the one whose implementation
        answered (``None`` when none did). An error raised by a plugin names
        the plugin and the hook.
        """
        hook_caller = self.hook_caller(hook, exclude)
        if not (hook_caller.spec and hook_caller.spec.opts.get("firstresult")):
            raise PluginError(f"{hook!r} is not a firstresult hook; call_all asks every plugin")
        with _calling(isolate=False) as call:
            result = hook_caller(**kwargs)
        return result, (call.answers[0][0] if call.answers else None)

    def call_all(self, hook: str, **kwargs: Any) -> list[tuple[str, Any]]:
        """Call ``hook`` on every plugin through pluggy: ``[(plugin name, result), ...]``, ``None`` skipped.

        A plugin that raises is skipped with a :class:`PluginWarning` (an error
        in strict mode): one broken plugin never hides the others' answers.
        Results come in pluggy's order; one a hookwrapper added is named after
        the wrappers of the call.
        """
        hook_caller = getattr(self.pm.hook, hook)
        with _calling(isolate=not self.strict) as call:
            results = hook_caller(**kwargs)
        for error in call.failures:
            warnings.warn(f"{error}; its answer is skipped", PluginWarning, stacklevel=2)
        if not isinstance(results, list):
            raise PluginError(f"hook {hook} returned {results!r:.120}, not a list of answers (a hookwrapper's doing?)")
        wrappers = ", ".join(i.plugin_name for i in hook_caller.get_hookimpls() if not _answers(i)) or None
        unclaimed = list(call.answers)
        named = []
        for result in results:
            found = next((k for k, (_, answer) in enumerate(unclaimed) if answer is result), None)
            named.append((unclaimed.pop(found)[0] if found is not None else wrappers, result))
        return named

    def detect(self, model_id: str, config: dict[str, Any] | None) -> tuple[str | None, str | None]:
        """Ask ``detect_family`` through pluggy (firstresult); the plugin that answers owns the family.

        An answer naming a family another plugin already owns (a conflict it
        loses) is skipped, noted on both records, and the question is asked
        again without that plugin. A family only a hookwrapper answered goes
        to its current owner, if it has one.
        """
        losers: set[str] = set()
        while True:
            family, plugin = self.call_first("detect_family", exclude=losers, model_id=model_id, config=config)
            if family is None:
                return None, None
            if not isinstance(family, str) or not family:
                who = f"plugin {plugin!r}" if plugin else "a hookwrapper"
                raise PluginError(f"{who}: detect_family must return a family name or None, got {family!r}")
            with self._lock:
                owner = self._owners.get(family)
                plugin = plugin or owner
                if owner is not None and owner != plugin:
                    self._note_conflict(family, plugin, owner)
                    losers.add(plugin)
                    continue
                if owner is None and plugin is not None:
                    self._detected[family] = plugin
                    self._resolve_owners()
            return family, plugin

    def _note_conflict(self, family: str, loser: str, owner: str) -> None:
        note = f"family {family!r} also claimed by {loser}; {owner!r} wins (it owned the family first)"
        for name in (loser, owner):
            rec = self._records[name]
            if note not in rec.conflicts:
                self._records[name] = attrs.evolve(rec, conflicts=rec.conflicts + (note,))

    def call_family(self, hook: str, family: str, **kwargs: Any) -> tuple[Any, str]:
        """Call a family-keyed hook on the family's owner only; return ``(result, owner)``.

        pluggy calls it with every other plugin's implementation left out
        (hookwrappers stay). When the owner leaves the hook out or answers
        ``None``, the core's standard behaviour (:mod:`adaptrix.plugins.fallbacks`)
        answers instead.
        """
        if hook not in FAMILY_HOOKS:
            raise PluginError(f"{hook!r} is not a family hook; family hooks are: {', '.join(FAMILY_HOOKS)}")
        owner = self.owner(family)
        others = [i.plugin_name for i in getattr(self.pm.hook, hook).get_hookimpls() if i.plugin_name != owner]
        result, _ = self.call_first(hook, exclude=others, family=family, **kwargs)
        if result is None:
            result = getattr(fallbacks, hook)(family=family, **kwargs)
        return result, owner

    def fallback_hooks(self, family: str) -> tuple[str, ...]:
        """The family hooks the core answers for ``family`` because its owner leaves them out."""
        return self._records[self.owner(family)].fallback_hooks


@attrs.define
class _Call:
    """What the guards saw during one host call: who answered what, and (when isolating) who failed."""
    isolate: bool
    answers: list[tuple[str, Any]] = attrs.Factory(list)
    failures: list[PluginError] = attrs.Factory(list)


_CURRENT: contextvars.ContextVar[_Call | None] = contextvars.ContextVar("adaptrix_plugin_call", default=None)


@contextlib.contextmanager
def _calling(isolate: bool) -> Iterator[_Call]:
    """Make a fresh :class:`_Call` the current one (per thread; a hook calling the host nests its own)."""
    call = _Call(isolate)
    token = _CURRENT.set(call)
    try:
        yield call
    finally:
        _CURRENT.reset(token)


def _answers(impl: pluggy.HookImpl) -> bool:
    """Whether ``impl`` answers the hook (a hookwrapper only wraps the others)."""
    return not (impl.wrapper or impl.hookwrapper)


def _guard(impl: pluggy.HookImpl, hook: str) -> None:
    """Wrap ``impl``'s function, in place, so that its errors name the plugin and the hook.

    pluggy lets an implementation's exception end the whole call and does
    not say whose it was; the guard turns it into a :class:`PluginError`
    naming plugin and hook (adaptrix errors pass unchanged), skips it (returns
    ``None``) inside an isolating call (``call_all``), and notes each
    non-``None`` answer with the plugin that gave it.
    """
    function, plugin = impl.function, impl.plugin_name

    @functools.wraps(function)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        call = _CURRENT.get()
        try:
            result = function(*args, **kwargs)
        except Exception as exc:
            error = exc if isinstance(exc, AdaptrixError) else PluginError(
                f"plugin {plugin!r} raised in hook {hook}: {type(exc).__name__}: {exc}"
            )
            if call is not None and call.isolate and isinstance(error, PluginError):
                call.failures.append(error)
                return None
            if error is exc:
                raise
            raise error from exc
        if call is not None and result is not None:
            call.answers.append((plugin, result))
        return result

    impl.function = guarded  # type: ignore[misc]  # pluggy reads it at each call; argnames stay the original's


def _fallback_hooks(hooks: Iterable[str], families: Iterable[str]) -> tuple[str, ...]:
    """The family hooks a family plugin leaves to the core (none for a plugin that provides no family)."""
    hooks = set(hooks)
    if not (hooks & set(FAMILY_PLUGIN_HOOKS) or list(families)):
        return ()
    return tuple(h for h in REPORTED_FALLBACKS if h not in hooks)


def _spec_names() -> list[str]:
    return [n for n in dir(hookspecs) if hasattr(getattr(hookspecs, n), "adaptrix_spec")]


def _dist_info(ep: metadata.EntryPoint) -> tuple[str | None, str | None]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return None, None
    try:
        return dist.metadata["Name"], dist.version
    except Exception:
        return None, None


_host: PluginHost | None = None


def get_host() -> PluginHost:
    """The process-wide plugin host, loading entry points on first use."""
    global _host
    if _host is None:
        host = PluginHost()
        host.load_entry_points()
        _host = host
    return _host


def set_host(host: PluginHost | None) -> None:
    """Replace (or with ``None``, forget) the process-wide host; for tests and embedding."""
    global _host
    _host = host

