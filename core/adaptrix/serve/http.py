"""The HTTP server around the app: uvicorn's configuration, its read timeouts, the server's URL.

uvicorn (0.3x and later) bounds how long an idle keep-alive connection stays
open, but not how long a client may take to send a request's headers: a client
that sends a few bytes now and then (slowloris) keeps its connection, and a
file descriptor, for ever. :func:`uvicorn_config` serves HTTP/1.1 through
uvicorn's h11 protocol with a *header deadline*: from the moment a connection
waits for a request (opened, or its previous answer sent) the request's headers
must be complete within ``ServeOptions.header_timeout`` seconds, or the
connection is answered 408 and closed (one log line). The body has its own
deadline in the app (``Server.read_json``: 408, ``body_timeout``).
"""

from __future__ import annotations

import ipaddress
import logging

log = logging.getLogger("adaptrix.serve")


def base_url(host: str, port: int) -> str:
    """``http://host:port/``, an IPv6 address in brackets (``http://[::1]:8000/``)."""
    try:
        if ipaddress.ip_address(host).version == 6:
            host = f"[{host}]"
    except ValueError:
        pass  # a host name
    return f"http://{host}:{port}/"


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only (``localhost``, ``127.x.y.z``, ``::1``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def uvicorn_config(app, host: str, port: int, *, log_level: str = "warning"):
    """uvicorn's ``Config`` for ``app`` (from :func:`adaptrix.serve.app.create_app`), with the read timeouts of
    its options."""
    import uvicorn

    options = app.state.server.options
    return uvicorn.Config(app, host=host, port=port, log_level=log_level, http=timed_protocol(options.header_timeout),
                          timeout_keep_alive=5)


_PROTOCOLS: dict[float, type] = {}


def timed_protocol(header_timeout: float) -> type:
    """uvicorn's h11 protocol with a deadline for each request's headers (see the module docstring)."""
    if header_timeout in _PROTOCOLS:
        return _PROTOCOLS[header_timeout]
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    answer = (f"no complete request headers within {header_timeout:g} s (the server's --header-timeout)\n").encode()
    timeout_response = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
                        b"connection: close\r\ncontent-length: " + str(len(answer)).encode() + b"\r\n\r\n" + answer)

    class TimedH11Protocol(H11Protocol):
        _read_deadline = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._watch()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._watch()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._watch()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _waiting(self) -> bool:
            """Waiting for the client with no one reading: for a request's headers, or for the rest of a body
            the app answered without reading."""
            theirs, ours = self.conn.their_state, self.conn.our_state
            return theirs is h11.IDLE or (theirs is h11.SEND_BODY and ours in (h11.DONE, h11.MUST_CLOSE))

        def _watch(self) -> None:
            if self.transport is None or self.transport.is_closing():
                self._disarm()
            elif not self._waiting():
                self._disarm()
            elif self._read_deadline is None:  # counted from when the wait began, not from the last byte
                self._read_deadline = self.loop.call_later(header_timeout, self._expired)

        def _disarm(self) -> None:
            if self._read_deadline is not None:
                self._read_deadline.cancel()
                self._read_deadline = None

        def _expired(self) -> None:
            self._read_deadline = None
            if self.transport.is_closing():
                return
            partial = bool(self.conn.trailing_data[0]) or self.conn.their_state is not h11.IDLE
            if partial:  # an idle keep-alive connection just closes; a stalled request is worth a line
                client = "%s:%d" % self.client if self.client else "a client"
                log.info("closed the connection of %s: no complete request within %g s (--header-timeout)",
                         client, header_timeout)
                if self.conn.their_state is h11.IDLE and self.conn.our_state is h11.IDLE:
                    self.transport.write(timeout_response)
            self.transport.close()

    _PROTOCOLS[header_timeout] = TimedH11Protocol
    return TimedH11Protocol
