"""A stand-in for ``tenacity`` where it is not installed, for lm-eval's API models in tests only.

lm-eval's ``local-completions`` wraps each request in ``tenacity.retry(...)`` and refuses to start without
the package (it comes with ``lm-eval[api]``, which adaptrix's ``eval`` extra installs). The tests put this
folder on ``sys.path`` only when the real package is missing: one attempt, no waiting, errors raised as they
come. Nothing here changes what is sent or answered.
"""

from __future__ import annotations


def stop_after_attempt(attempts):
    return attempts


def wait_exponential(**kwargs):
    return None


def retry(**kwargs):
    def decorate(fn):
        return fn

    return decorate


class RetryError(Exception):
    """Raised by tenacity when every attempt failed (never here: the one attempt's error propagates)."""
