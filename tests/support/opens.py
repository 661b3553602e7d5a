"""Which files in a folder were opened, by any code (Python, or native like safetensors' Rust), via Linux inotify."""

from __future__ import annotations

import ctypes
import os
import struct
import sys
from pathlib import Path

IN_OPEN = 0x20
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len (then len bytes of name)


class OpenWatch:
    """``with OpenWatch(folder) as w: ...; w.opened()`` -> the names of the files opened in ``folder``."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.fd = -1
        self.names: set[str] = set()

    @staticmethod
    def available() -> bool:
        return sys.platform.startswith("linux")

    def __enter__(self) -> "OpenWatch":
        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.inotify_init1(os.O_NONBLOCK)
        if self.fd < 0 or libc.inotify_add_watch(self.fd, os.fsencode(self.folder), IN_OPEN) < 0:
            raise OSError(ctypes.get_errno(), f"inotify on {self.folder}")
        return self

    def opened(self) -> set[str]:
        while self.fd >= 0:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return set(self.names)
            at = 0
            while at < len(data):
                _, mask, _, size = _EVENT.unpack_from(data, at)
                name = data[at + _EVENT.size: at + _EVENT.size + size].rstrip(b"\0").decode()
                if mask & IN_OPEN and name:
                    self.names.add(name)
                at += _EVENT.size + size
        return set(self.names)

    def __exit__(self, *exc) -> None:
        self.opened()
        os.close(self.fd)
        self.fd = -1
