"""Compositions: adapters made from weighted adapters, their rules, and the cache of those built on demand.

- The rules every backend shares: the methods adaptrix knows
  (:data:`COMBINATIONS`), the weight bound (:data:`MAX_COMPOSITION_WEIGHT`,
  :func:`check_composition_weights`), the arguments of a composition
  (:func:`check_composition`) and what its parts must have in common
  (:func:`check_parts`); :func:`composed_info` describes the result.
- The adapter manager owns one :class:`CompositionCache`: the composition for
  some weights (a server request's ``adapters``) is built once, reused while
  it stays cached, and past :data:`MAX_COMPOSITIONS` the least recently used
  one nobody holds is unloaded, so clients sending ever new weights cannot
  fill the memory. An :class:`AdapterHold` keeps an adapter (or a cached
  composition) out of eviction and unloading while a request uses it.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import math
from typing import Any, Callable, Iterable, Protocol, Sequence

from adaptrix.adapters.info import AdapterInfo
from adaptrix.adapters.sources import is_bare_name
from adaptrix.errors import AdapterError

log = logging.getLogger("adaptrix.adapters")

#: Every composition method adaptrix knows (peft's ``add_weighted_adapter`` combination types).
COMBINATIONS = ("linear", "cat", "svd", "ties", "ties_svd", "dare_linear", "dare_ties", "dare_linear_svd",
                "dare_ties_svd", "magnitude_prune", "magnitude_prune_svd")
_SAME_RANK = ("linear", "ties", "dare_linear", "dare_ties", "magnitude_prune")
#: Compositions kept built; past this many the least recently used one no request holds is unloaded.
MAX_COMPOSITIONS = 8
#: How cached compositions combine their parts (every backend that composes can concatenate).
METHOD = "cat"

Weights = tuple[tuple[str, float], ...]


#: The largest composition weight (in magnitude) accepted. A weight scales its adapter's delta: on SmolLM2 with
#: math_specialist (llama.cpp, greedy), 1 and 2 answer "25 x 8 = 20 x 8 + 5 x 8 = 160 + ...", 5 garbles the
#: arithmetic, 10 gives fragments, 20 empty text, 100 and more repeated tokens, 1e6 and 1e308 one token of
#: nothing. 10 leaves room for adapters trained with a small alpha; beyond it a weight can only be a mistake.
MAX_COMPOSITION_WEIGHT = 10.0


def check_composition_weights(weights, who: str = "compose_adapters") -> dict[str, float]:
    """``{adapter: weight}`` checked: finite numbers of magnitude at most :data:`MAX_COMPOSITION_WEIGHT`.

    The one owner of this rule: the engine's ``compose_adapters`` and the server's ``adapters`` field both
    come here. Raises :class:`AdapterError` naming the adapter, the weight and the range.
    """
    if not isinstance(weights, dict) or not weights:
        raise AdapterError(f"{who} needs a dict of adapter name -> weight, got {weights!r}")
    out = {}
    for source, weight in weights.items():
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise AdapterError(f"{who}: the weight of {source!r} must be a finite number, got {weight!r}")
        if abs(weight) > MAX_COMPOSITION_WEIGHT:
            raise AdapterError(
                f"{who}: the weight of {source!r} is {weight!r}; weights lie in [-{MAX_COMPOSITION_WEIGHT:g}, "
                f"{MAX_COMPOSITION_WEIGHT:g}] (a weight scales the adapter's change to the model: past a few times "
                "1 the answers are garbage or empty)"
            )
        out[source] = float(weight)
    return out


def composed_info(name: str, method: str, weights: dict[str, float], infos: Sequence[AdapterInfo], *,
                  rank: int | None, alpha: float | None, target_modules, tensor_bytes: int | None) -> AdapterInfo:
    """The :class:`AdapterInfo` of a composition (no folder: it is never evicted, only unloaded)."""
    return AdapterInfo(
        composed=True,
        name=name,
        path=f"<composed {method}: " + ", ".join(f"{s}*{w}" for s, w in weights.items()) + ">",
        peft_type="LORA", rank=rank, alpha=alpha, target_modules=target_modules,
        modules_to_save=(), base_model=infos[0].base_model, base_family=infos[0].base_family,
        tensor_count=None, tensor_bytes=tensor_bytes, weights_format=None, weights_file=None,
        metadata={"composed_from": dict(weights), "method": method},
    )


def check_composition(method: str, weights, name, *, density: float | None = None,
                      svd_rank: int | None = None) -> None:
    """The arguments of ``compose_adapters(weights, name, method, density=, svd_rank=)``; a bad one raises
    :class:`AdapterError` naming it."""
    if method not in COMBINATIONS:
        raise AdapterError(f"composition method {method!r} is unknown; use one of {', '.join(COMBINATIONS)}")
    check_composition_weights(weights, f"compose_adapters({name!r})")
    if not isinstance(name, str) or not is_bare_name(name) or not name.strip():
        raise AdapterError(f"a composed adapter's name must be a plain name (no path), got {name!r}")
    for key, value in (("density", density), ("svd_rank", svd_rank)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value) or value <= 0):
            raise AdapterError(f"compose_adapters({name!r}): {key} must be a positive number, got {value!r}")


def check_parts(method: str, infos: Sequence[AdapterInfo]) -> None:
    """The loaded parts of a composition can be weighted together by ``method``: LoRA only, and one rank
    for the methods that sum matrices of the same shape; else :class:`AdapterError`."""
    with_save = [i.name for i in infos if i.modules_to_save]
    if with_save:
        raise AdapterError(
            f"cannot compose {with_save}: they carry modules_to_save (full copies of layers), which "
            "cannot be weighted; compose LoRA-only adapters"
        )
    if method in _SAME_RANK and len(infos) > 1:
        ranks = {i.name: _max_rank(i) for i in infos}
        if len(set(ranks.values())) > 1:
            raise AdapterError(
                f"method {method!r} needs adapters of one rank, got ranks "
                f"{', '.join(f'{k}={v}' for k, v in ranks.items())}; use method='cat' or 'svd' "
                "(or the *_svd variants) to combine different ranks"
            )


def _max_rank(info: AdapterInfo) -> int | None:
    pattern = info.config.get("rank_pattern") or {}
    return max([info.rank or 0, *pattern.values()]) if pattern else info.rank


class Composer(Protocol):
    """What the cache needs of its adapter manager (:class:`~.manager.AdapterManager`)."""

    def compose(self, weights: dict[str, float], name: str, method: str = ...) -> Any: ...
    def unload(self, name: str) -> None: ...
    def is_pinned(self, name: str) -> bool: ...
    def loaded_names(self) -> list[str]: ...


def composition_name(weights: Iterable[tuple[str, float]]) -> str:
    """The adapter name of the cached composition of ``weights`` (``(adapter, weight)`` pairs, in order)."""
    return "composed-" + hashlib.sha1(repr(_key(weights)).encode()).hexdigest()[:12]


def _key(weights: Iterable[tuple[str, float]]) -> Weights:
    return tuple((str(a), float(w)) for a, w in weights)


class AdapterHold:
    """An adapter kept out of eviction and unloading until :meth:`release` (idempotent; a context manager)."""

    def __init__(self, name: str | None, release: Callable[[], None]):
        #: The adapter's name (a cached composition's generated name), ``None`` for the base model.
        self.name = name
        self._release: Callable[[], None] | None = release

    def release(self) -> None:
        if self._release is not None:
            release, self._release = self._release, None
            release()

    def __enter__(self) -> "AdapterHold":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class CompositionCache:
    """The manager's compositions built for weights, least recently used first (call with its lock held)."""

    def __init__(self, manager: Composer):
        self._manager = manager
        self._built: collections.OrderedDict[Weights, str] = collections.OrderedDict()

    def names(self) -> list[str]:
        return list(self._built.values())

    def get(self, weights: Weights) -> str:
        """The composition of ``weights``, built (method :data:`METHOD`) or reused; most recently used now."""
        key = _key(weights)
        name = self._built.get(key)
        if name is None:
            name = composition_name(key)
            self._manager.compose(dict(key), name, method=METHOD)
            self._built[key] = name
        self._built.move_to_end(key)
        return name

    def trim(self) -> None:
        """Unload the least recently used past :data:`MAX_COMPOSITIONS`, skipping held ones and the newest."""
        for key, name in list(self._built.items()):
            if len(self._built) <= MAX_COMPOSITIONS:
                return
            if self._manager.is_pinned(name) or key == next(reversed(self._built)):
                continue
            del self._built[key]
            try:
                self._manager.unload(name)
            except Exception as exc:  # keep serving: the composition's memory stays taken, say so
                log.warning("could not unload composition %s: %s", name, exc)

    def forget(self, source: str) -> list[str]:
        """Unload the compositions built from ``source`` (it is being unloaded or replaced); their names."""
        stale = [(k, n) for k, n in self._built.items() if any(a == source for a, _ in k)]
        for key, name in stale:
            del self._built[key]
            if name in self._manager.loaded_names():
                self._manager.unload(name)
        return [n for _, n in stale]

    def discard(self, name: str) -> None:
        """Forget ``name`` if it is a cached composition (it was unloaded directly)."""
        for key, n in list(self._built.items()):
            if n == name:
                del self._built[key]
