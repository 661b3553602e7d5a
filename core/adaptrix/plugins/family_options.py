"""Family options: the extra ``Engine(...)`` keyword arguments plugins declare (``family_options`` hook).

A name no installed plugin declares is refused when the engine is built
(a typo such as ``devcie=`` must not be silently ignored); a declared name the
detected family does not take is refused at ``initialize()``.
"""

from __future__ import annotations

import difflib
from typing import Iterable

from adaptrix.errors import PluginError, UnknownOptionError


def declared(host, family: str) -> dict[str, str]:
    """Option name -> description for ``family`` (empty when its plugin declares none)."""
    answer, plugin = host.call_family("family_options", family)
    if answer is None:
        return {}
    if not isinstance(answer, dict) or not all(isinstance(k, str) and k for k in answer):
        raise PluginError(
            f"plugin {plugin!r}: hook family_options({family!r}) must return a dict of option name -> "
            f"description, got {answer!r}"
        )
    return {k: str(v) for k, v in answer.items()}


def all_declared(host) -> dict[str, dict[str, str]]:
    """Family -> its declared options, for every installed family that declares some."""
    out = {}
    for family in host.families():
        options = declared(host, family)
        if options:
            out[family] = options
    return out


def check_known(names: Iterable[str], host, engine_arguments: Iterable[str]) -> None:
    """Refuse option names no installed plugin declares, naming them and listing what is valid."""
    names = sorted(names)
    if not names:
        return
    by_family = all_declared(host)
    known = {n for options in by_family.values() for n in options}
    unknown = [n for n in names if n not in known]
    if not unknown:
        return
    valid = sorted(engine_arguments)
    hints = []
    for n in unknown:
        close = difflib.get_close_matches(n, valid + sorted(known), n=1)
        if close:
            hints.append(f"{n!r}: did you mean {close[0]!r}?")
    families = "; ".join(
        f"{family}: " + ", ".join(f"{k} ({v})" for k, v in sorted(options.items()))
        for family, options in sorted(by_family.items())
    )
    raise UnknownOptionError(
        f"Engine() got unknown keyword argument(s) {', '.join(map(repr, unknown))}. "
        + (" ".join(hints) + " " if hints else "")
        + f"Engine arguments are: {', '.join(valid)}; family options of the installed plugins: "
        + (families or "(none)")
    )


def check_family(names: Iterable[str], host, family: str) -> None:
    """Refuse options the detected ``family`` does not take (another family's option, e.g.)."""
    names = sorted(names)
    if not names:
        return
    options = declared(host, family)
    foreign = [n for n in names if n not in options]
    if foreign:
        takes = ", ".join(sorted(options)) or "none"
        raise UnknownOptionError(
            f"option(s) {', '.join(map(repr, foreign))} do not apply to this model: its family {family!r} "
            f"takes family options: {takes}; remove them from Engine(...)"
        )
