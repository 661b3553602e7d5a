"""The llama.cpp library itself: llama-cpp-python's low-level module, initialised once, its log routed to ``logging``.

:func:`load_llama` imports ``llama_cpp`` (the only place that does) and starts
its backend; :func:`llama_said` appends what llama.cpp logged as errors to a
message, since its C functions answer failures with a null pointer or a code.
"""

from __future__ import annotations

import collections
import ctypes
import logging
import os
import threading

from adaptrix.errors import EngineStateError

logger = logging.getLogger("adaptrix.llamacpp")

#: ggml_log_level: NONE=0, DEBUG=1, INFO=2, WARN=3, ERROR=4, CONT=5 (continues the previous line).
_LOG_LEVELS = {1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING, 4: logging.ERROR}
_recent_errors: collections.deque[str] = collections.deque(maxlen=8)
_backend_lock = threading.Lock()
_backend_ready = False
_log_callback = None  # the ctypes callback must outlive every llama.cpp call


def load_llama():
    """The ``llama_cpp`` low-level module, with the backend initialised and its log routed to ``logging``."""
    global _backend_ready, _log_callback
    import llama_cpp

    if _backend_ready:
        return llama_cpp
    with _backend_lock:
        if not _backend_ready:
            last_level = [logging.INFO]

            @llama_cpp.llama_log_callback
            def forward(level, text, _user):
                # level 5 continues the previous line; llama.cpp logs INFO heavily, so it goes to DEBUG here.
                py_level = last_level[0] if level == 5 else _LOG_LEVELS.get(level, logging.DEBUG)
                last_level[0] = py_level
                message = text.decode("utf-8", errors="replace").rstrip()
                if py_level >= logging.ERROR and message:
                    _recent_errors.append(message)
                if message:
                    logger.log(logging.DEBUG if py_level == logging.INFO else py_level, "%s", message)

            _log_callback = forward
            llama_cpp.llama_log_set(_log_callback, ctypes.c_void_p(0))
            llama_cpp.llama_backend_init()
            _backend_ready = True
    return llama_cpp


def forget_errors() -> None:
    """Start a fresh record of llama.cpp's errors (before a call whose failure :func:`llama_said` explains)."""
    _recent_errors.clear()


def llama_said() -> str:
    """What llama.cpp logged as errors since the last call (empty when nothing)."""
    said = "; ".join(_recent_errors)
    _recent_errors.clear()
    return f" (llama.cpp: {said})" if said else ""


def closed_error(path: os.PathLike | str) -> EngineStateError:
    """The error for any use of a closed runtime's model, context or vocabulary."""
    return EngineStateError(f"the llama.cpp runtime for {path} is closed: load the model again")


def cpu_count() -> int:
    """The CPUs this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
