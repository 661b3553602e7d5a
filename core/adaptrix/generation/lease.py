"""Exclusive use of a model, held by a thread or by a token that threads act for.

A ``threading.RLock`` belongs to the thread that took it: a stream that keeps
the model from one ``next()`` to the next, while a thread pool calls ``next()``
from whichever worker is free, cannot hold one. A :class:`ModelLease` is held
by an *owner*: by default the calling thread (re-entrant, like an RLock), or
any hashable token, such as one stream, which several threads may act for in
turn (:meth:`acting_as`). Whoever holds it may take it again; everyone else
waits until it is free, or, when the holder registered a *finisher* (a
stream does: :class:`LeasedTokens`), runs that finisher to end the holder's
work instead of waiting for a reader that may never come back.
"""

from __future__ import annotations

import collections
import contextlib
import threading
from typing import Any, Callable, Hashable, Iterator

from adaptrix.errors import EngineStateError


class ModelLease:
    """A re-entrant, thread-agnostic lock: a Condition and the current holder."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._holder: Hashable | None = None
        self._depth = 0
        self._local = threading.local()
        self._finishers: dict[Hashable, Callable[[], None]] = {}

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
                finish = self._finishers.get(self._holder)
                if finish is None:
                    self._cond.wait()
                    continue
                self._cond.release()  # the finisher ends with the holder's release, which takes the lock
                try:
                    finish()
                finally:
                    self._cond.acquire()
            self._holder, self._depth = me, 1

    def set_finisher(self, owner: Hashable, finish: Callable[[], None]) -> None:
        """While ``owner`` holds the lease, a thread that wants it calls ``finish()`` instead of waiting.

        ``finish`` must end with ``owner`` releasing the lease (it may be called by
        several waiters, and after that release: it must then do nothing).
        """
        with self._cond:
            self._finishers[owner] = finish

    def release(self, owner: Hashable | None = None) -> None:
        me = self._me() if owner is None else owner
        with self._cond:
            if self._holder != me:
                raise EngineStateError(f"model lease released by {me!r}, which does not hold it (held by {self._holder!r})")
            self._depth -= 1
            if self._depth == 0:
                self._finishers.pop(self._holder, None)
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


class LeasedTokens:
    """A generation that holds a :class:`ModelLease` until it ends: any thread may pull its next token.

    ``tokens`` is the runner's pull-based token iterator; it runs in whichever
    thread pulls, acting for ``owner``. When it ends (exhausted, failed or
    closed), ``on_end()`` runs (restoring adapters) and the lease is released.
    A thread that wants the lease meanwhile pulls the remaining tokens into a
    buffer (:meth:`finish`), so a call made during a stream, from any thread,
    waits for the stream's generation and never changes it, and a stream whose
    reader stopped reading cannot keep the model forever.
    """
    def __init__(self, lease: ModelLease, owner: Hashable, tokens: Iterator[int], on_end: Callable[[], None]):
        self._lease, self._owner, self._tokens, self._on_end = lease, owner, tokens, on_end
        self._step = threading.Lock()  # one puller at a time
        self._buffer: collections.deque[int] = collections.deque()
        self._failure: BaseException | None = None
        self._ended = False
        self._closing = False
        lease.set_finisher(owner, self.finish)

    def next(self) -> int | None:
        """The next token, or ``None`` once the generation has ended (re-raising its failure, once)."""
        with self._step:
            if not self._buffer:
                self._pull()
            if self._buffer:
                return self._buffer.popleft()
            failure, self._failure = self._failure, None
        if failure is not None:
            raise failure
        return None

    def finish(self) -> None:
        """Generate the rest into the buffer and free the lease (what a waiter for the lease runs)."""
        with self._step:
            while not self._ended:
                self._pull()

    def close(self) -> None:
        """Stop the generation and free the lease; safe from a finalizer, never waits for a puller."""
        self._closing = True
        if self._step.acquire(blocking=False):
            try:
                self._end()
            finally:
                self._step.release()
        # else the thread pulling now sees ``_closing`` after its token and ends it

    def _pull(self) -> None:
        if self._ended:
            return
        if self._closing:
            self._end()
            return
        try:
            with self._lease.acting_as(self._owner):
                token = next(self._tokens)
        except StopIteration:
            self._end()
            return
        except BaseException as exc:
            self._failure = exc
            self._end()
            return
        self._buffer.append(token)
        if self._closing:
            self._end()

    def _end(self) -> None:
        if self._ended:
            return
        self._ended = True
        try:
            with self._lease.acting_as(self._owner):
                try:
                    self._tokens.close()
                finally:
                    self._on_end()
        finally:
            self._lease.release(self._owner)
