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
core's standard behaviour in :mod:`adaptrix.fallbacks`. ``families()`` is
optional: when present it declares ownership up front (for ``--family`` and
diagnostics). Two plugins claiming one family (by ``families()`` or by
detection) is a conflict: the one whose entry-point name sorts first owns it,
the other's answers for that family are skipped, and both records say so.

Plugins that implement no family hook at all (e.g. an execution backend) are
welcome as long as they implement some adaptrix hook.
"""

from __future__ import annotations

import os
import threading
import warnings
from importlib import metadata
from typing import Any, Iterable

import attrs
import pluggy

from . import hookspecs
from .errors import AdaptrixError, PluginConfigError, PluginError, PluginUnavailableError

ENTRY_POINT_GROUP = "adaptrix"
STATUSES = ("ok", "failed", "blocked", "disabled")
#: Hooks whose first argument is a family name; only that family's owner answers.
FAMILY_HOOKS = ("load_model", "default_generation_config", "target_modules", "family_options", "chat_behaviour")
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
            families = self._families_of(plugin)
        except Exception as exc:
            self.pm.unregister(plugin, name=name)
            self._fail(base, exc, "failed validation")
            return self._records[name]
        fallback = _fallback_hooks(hooks, families)
        record = PluginRecord(
            status="ok", families=tuple(families), hooks=tuple(hooks), fallback_hooks=fallback, **base
        )
        self._records[name] = record
        self._objects[name] = plugin
        self._resolve_owners()
        return self._records[name]

    def _validate(self, plugin: object, name: str) -> list[str]:
        hooks = []
        for caller in self.pm.get_hookcallers(plugin) or []:
            if not caller.has_spec():
                raise PluginError(
                    f"plugin {name!r} implements unknown hook {caller.name!r}; "
                    f"adaptrix hooks are: {', '.join(sorted(_spec_names()))}"
                )
            hooks.append(caller.name)
        if not hooks:
            raise PluginError(f"plugin {name!r} implements no adaptrix hook (use @adaptrix.hookimpl)")
        return sorted(hooks)

    def _families_of(self, plugin: object) -> list[str]:
        impl = getattr(plugin, "families", None)
        if impl is None or not hasattr(impl, "adaptrix_impl"):
            return []
        result = impl()
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
    def call_first(self, hook: str, exclude: Iterable[str] = (), **kwargs: Any) -> tuple[Any, str | None]:
        """Call ``hook`` in pluggy's order and return ``(first non-None result, plugin name)``."""
        skip = set(exclude)
        for impl in reversed(getattr(self.pm.hook, hook).get_hookimpls()):
            if impl.plugin_name in skip:
                continue
            result = _call_impl(impl, hook, kwargs)
            if result is not None:
                return result, impl.plugin_name
        return None, None

    def call_all(self, hook: str, **kwargs: Any) -> list[tuple[str, Any]]:
        """Call ``hook`` on every plugin in pluggy's order: ``[(plugin name, result), ...]``, ``None`` skipped.

        A plugin that raises is skipped with a :class:`PluginWarning` (an error
        in strict mode): one broken plugin never hides the others' answers.
        """
        answers = []
        for impl in reversed(getattr(self.pm.hook, hook).get_hookimpls()):
            try:
                result = _call_impl(impl, hook, kwargs)
            except PluginError as exc:
                if self.strict:
                    raise
                warnings.warn(f"{exc}; its answer is skipped", PluginWarning, stacklevel=2)
                continue
            if result is not None:
                answers.append((impl.plugin_name, result))
        return answers

    def detect(self, model_id: str, config: dict[str, Any] | None) -> tuple[str | None, str | None]:
        """Ask ``detect_family`` in pluggy's order; the plugin that answers owns the family.

        An answer naming a family another plugin already owns (a conflict it
        loses) is skipped, noted on both records, and the next plugin is asked.
        """
        for impl in reversed(self.pm.hook.detect_family.get_hookimpls()):
            plugin = impl.plugin_name
            family = _call_impl(impl, "detect_family", {"model_id": model_id, "config": config})
            if family is None:
                continue
            if not isinstance(family, str) or not family:
                raise PluginError(
                    f"plugin {plugin!r}: detect_family must return a family name or None, got {family!r}"
                )
            with self._lock:
                owner = self._owners.get(family)
                if owner is not None and owner != plugin:
                    self._note_conflict(family, plugin, owner)
                    continue
                if owner is None:
                    self._detected[family] = plugin
                    self._resolve_owners()
            return family, plugin
        return None, None

    def _note_conflict(self, family: str, loser: str, owner: str) -> None:
        note = f"family {family!r} also claimed by {loser}; {owner!r} wins (it owned the family first)"
        for name in (loser, owner):
            rec = self._records[name]
            if note not in rec.conflicts:
                self._records[name] = attrs.evolve(rec, conflicts=rec.conflicts + (note,))

    def call_family(self, hook: str, family: str, **kwargs: Any) -> tuple[Any, str]:
        """Call a family-keyed hook on the family's owner only; return ``(result, owner)``.

        When the owner leaves the hook out or answers ``None``, the core's
        standard behaviour (:mod:`adaptrix.fallbacks`) answers instead.
        """
        from . import fallbacks

        if hook not in FAMILY_HOOKS:
            raise PluginError(f"{hook!r} is not a family hook; family hooks are: {', '.join(FAMILY_HOOKS)}")
        owner = self.owner(family)
        impls = [i for i in getattr(self.pm.hook, hook).get_hookimpls() if i.plugin_name == owner]
        result = _call_impl(impls[0], hook, dict(kwargs, family=family)) if impls else None
        if result is None:
            result = getattr(fallbacks, hook)(family=family, **kwargs)
        return result, owner

    def fallback_hooks(self, family: str) -> tuple[str, ...]:
        """The family hooks the core answers for ``family`` because its owner leaves them out."""
        return self._records[self.owner(family)].fallback_hooks


def _call_impl(impl: Any, hook: str, kwargs: dict[str, Any]) -> Any:
    args = {k: kwargs[k] for k in impl.argnames}
    try:
        return impl.function(**args)
    except AdaptrixError:
        raise
    except Exception as exc:
        raise PluginError(
            f"plugin {impl.plugin_name!r} raised in hook {hook}: {type(exc).__name__}: {exc}"
        ) from exc


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

