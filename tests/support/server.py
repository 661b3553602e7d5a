"""A real uvicorn server on 127.0.0.1 and a free port, in a thread, for tests."""

from __future__ import annotations

import socket
import threading
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """``with LiveServer(app) as srv: srv.url``; waits until ``/health`` answers 200.

    ``ready=False``: return as soon as the server answers at all (to test it while the model loads).
    """

    def __init__(self, app, timeout: float = 300, ready: bool = True):
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = app
        from adaptrix.serve.http import uvicorn_config

        # the server's own configuration (h11 with its read timeouts), as `adaptrix serve` runs it
        self.server = uvicorn.Server(uvicorn_config(app, "127.0.0.1", self.port))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.timeout = timeout
        self.ready = ready

    def __enter__(self) -> "LiveServer":
        import httpx

        self.thread.start()
        deadline = time.monotonic() + self.timeout
        self.health_codes = []
        while time.monotonic() < deadline:
            try:
                code = httpx.get(self.url + "/health", timeout=5).status_code
                self.health_codes.append(code)
                if code == 200 or not self.ready:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.__exit__()
        raise RuntimeError(f"server at {self.url} did not become healthy: {self.health_codes[-3:]}")

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
