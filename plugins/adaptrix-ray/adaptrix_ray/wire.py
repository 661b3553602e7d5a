"""What crosses between the ingress and the replicas: errors and events as plain, picklable values.

An :class:`~adaptrix.serve.errors.ApiError` is sent as a dict and raised again on the other side, so a
replica's 400 or 404 reaches the client exactly as one process would have answered it (a pickled exception
would arrive wrapped in Ray's own error types).
"""

from __future__ import annotations

from typing import Any

from adaptrix.serve.errors import ApiError


def error_dict(err: ApiError) -> dict[str, Any]:
    return {"status": err.status, "message": err.message, "param": err.param, "code": err.code, "extra": err.extra}


def error_from(data: dict[str, Any]) -> ApiError:
    return ApiError(data["status"], data["message"], param=data.get("param"), code=data.get("code"),
                    extra=data.get("extra") or {})


def replica_gone(exc: BaseException) -> ApiError:
    """The 503 a request gets when the replica running it died (or Ray could not reach one)."""
    return ApiError(503, f"the replica serving this request stopped ({type(exc).__name__}); Ray Serve restarts "
                    "it and other replicas keep serving: retry the request", code="replica_unavailable")
