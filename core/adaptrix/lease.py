"""Exclusive use of a model, held by a thread or by a token that threads act for.

A ``threading.RLock`` belongs to the thread that took it: a stream that keeps
the model from one ``next()`` to the next, while a thread pool calls ``next()``
from whichever worker is free, cannot hold one. A :class:`ModelLease` is held
by an *owner*: by default the calling thread (re-entrant, like an RLock), or
any hashable token, such as one stream, which several threads may act for in
turn (:meth:`acting_as`). Whoever holds it may take it again; everyone else
waits until it is free.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Hashable, Iterator


class ModelLease:
    """A re-entrant, thread-agnostic lock: a Condition and the current holder."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._holder: Hashable | None = None
        self._depth = 0
        self._local = threading.local()

    def _me(self) -> Hashable:
        stack = getattr(self._local, "owners", None)
        return stack[-1] if stack else ("thread", threading.get_ident())

    @property
    def holder(self) -> Any:
        """The current owner (a token, or ``("thread", ident)``), ``None`` when free."""
        return self._holder

    def held_by_me(self) -> bool:
        return self._holder is not None and self._holder == self._me()

    def acquire(self, owner: Hashable | None = None) -> None:
        """Take the lease for ``owner`` (default: whoever the calling thread acts for); wait while another holds it."""
        me = self._me() if owner is None else owner
        with self._cond:
            if self._holder == me:
                self._depth += 1
                return
            while self._holder is not None:
                self._cond.wait()
            self._holder, self._depth = me, 1

    def release(self, owner: Hashable | None = None) -> None:
        me = self._me() if owner is None else owner
        with self._cond:
            if self._holder != me:
                from .errors import EngineStateError

                raise EngineStateError(f"model lease released by {me!r}, which does not hold it (held by {self._holder!r})")
            self._depth -= 1
            if self._depth == 0:
                self._holder = None
                self._cond.notify_all()

    def __enter__(self) -> "ModelLease":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    @contextlib.contextmanager
    def acting_as(self, owner: Hashable) -> Iterator[None]:
        """In the body, the calling thread acts for ``owner`` (re-enters a lease ``owner`` holds)."""
        stack = getattr(self._local, "owners", None)
        if stack is None:
            stack = self._local.owners = []
        stack.append(owner)
        try:
            yield
        finally:
            stack.pop()
