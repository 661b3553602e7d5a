"""The server's settings (``adaptrix serve`` flags) and the one check of each.

:class:`ServeOptions` refuses a value that would make a useless or unsafe
server (a queue of 0 answers 429 to everything, an empty API key turns
authentication off); ``adaptrix serve`` turns the same checks into usage errors
that name the flag (:func:`flag_type`).
"""

from __future__ import annotations

import math
from typing import Any, Callable
from urllib.parse import urlsplit

import attrs

#: What each whole-number setting must be at least, and what a smaller value would do.
_AT_LEAST = {
    "max_batch": (1, "no request could ever run"),
    "max_queue": (1, "every request would be answered 429"),
    "max_body_bytes": (1, "every request would be answered 413"),
}
#: Read timeouts, seconds.
_TIMEOUTS = ("header_timeout", "body_timeout")


def check_api_key(key: Any) -> str | None:
    """``None`` (no key: no authentication) or a key clients can send: printable ASCII, no spaces.

    HTTP header values are bytes that clients encode as ASCII (``httpx``, the
    ``openai`` client) or latin-1: a non-ASCII key could never be sent back
    as it was set, and an empty one (``--api-key "$UNSET"``) would turn
    authentication off without a word.
    """
    if key is None:
        return None
    if not isinstance(key, str) or not key:
        raise ValueError("the API key is empty (an unset environment variable?); give a key, or leave the option "
                         "out to serve without authentication")
    for i, char in enumerate(key):
        if not "!" <= char <= "~":
            kind = ("a space" if char.isspace() else "a non-ASCII character" if ord(char) > 127
                    else "a control character")
            raise ValueError(f"the API key holds {kind} at character {i}: use printable ASCII characters without "
                             "spaces (letters, digits, punctuation), which every HTTP client can send in "
                             "'Authorization: Bearer KEY'")
    return key


def check_origin(origin: Any) -> str:
    """A CORS origin as browsers send it (``https://chat.example.com``, ``http://localhost:3000``) or ``*``."""
    if origin == "*":
        return origin
    parts = urlsplit(origin) if isinstance(origin, str) else None
    if (parts is None or parts.scheme not in ("http", "https") or not parts.hostname or parts.path
            or parts.query or parts.fragment or parts.username or parts.password):
        raise ValueError(f"{origin!r} is not an origin: give scheme://host[:port] with no path and no trailing "
                         "slash (e.g. http://localhost:3000), or * for any origin")
    return origin


def check_option(name: str, value: Any) -> Any:
    """``value`` if it is a sound value of the setting ``name``; else :class:`ValueError` saying why."""
    if name in _AT_LEAST:
        least, why = _AT_LEAST[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"must be a whole number of at least {least}, got {value!r} ({why})")
    elif name in _TIMEOUTS:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"must be a number of seconds above 0, got {value!r}")
    elif name == "api_key":
        return check_api_key(value)
    elif name == "cors_origin":
        return check_origin(value)
    elif name == "cors_origins":
        return tuple(check_origin(o) for o in value)
    return value


def _checked(instance, attribute, value) -> None:
    try:
        check_option(attribute.name, value)
    except ValueError as exc:
        raise ValueError(f"ServeOptions.{attribute.name}: {exc}") from None


@attrs.frozen
class ServeOptions:
    """Server settings (``adaptrix serve`` flags); unsound values raise :class:`ValueError` naming the field."""

    adapters_dir: str | None = "adapters"
    api_key: str | None = attrs.field(default=None, validator=_checked)
    max_batch: int = attrs.field(default=8, validator=_checked)
    max_queue: int = attrs.field(default=64, validator=_checked)
    enable_adapter_loading: bool = False
    allowed_dirs: tuple[str, ...] = ()
    max_body_bytes: int = attrs.field(default=1 << 20, validator=_checked)
    #: ``auto``: iteration-level batching where the model supports it; ``off``: one request at a time.
    batching: str = "auto"
    model_name: str | None = None
    #: Seconds a connection may take to send a request's headers (slow or stalled clients are closed).
    header_timeout: float = attrs.field(default=10.0, validator=_checked)
    #: Seconds a request may take to send its body once its headers are in (then 408).
    body_timeout: float = attrs.field(default=30.0, validator=_checked)
    #: Origins browsers may call the API from (CORS); empty: no CORS headers.
    cors_origins: tuple[str, ...] = attrs.field(default=(), converter=tuple, validator=_checked)
    #: Each batched request computed exactly as if alone (``Engine.step_decoder(batch_invariant=True)``).
    batch_invariant: bool = False


def flag_type(name: str, convert: Callable[[str], Any] = int) -> Callable[[str], Any]:
    """An argparse ``type=`` for the flag of setting ``name`` (``cors_origin``: one origin): converts, then
    :func:`check_option`, so a bad value is a usage error naming the flag (argparse prints it) instead of a
    server that refuses everything."""
    import argparse

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {'whole number' if convert is int else 'number'}")
        try:
            return check_option(name, value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = name  # argparse names the type in some messages
    return parse
