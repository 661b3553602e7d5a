"""The code sandbox: what generated code does wrong is contained and scored as a failure."""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

from adaptrix.evaluation.sandbox import run_program


def test_a_correct_program_passes_and_a_failing_assert_fails():
    assert run_program("def f(x):\n    return x + 1\nassert f(1) == 2\n").passed
    bad = run_program("def f(x):\n    return x\nassert f(1) == 2\n")
    assert not bad.passed and bad.reason == "failed" and "AssertionError" in bad.output


def test_an_infinite_loop_is_stopped_at_the_time_limit():
    start = time.monotonic()
    r = run_program("while True:\n    pass\n", timeout=1.0)
    assert not r.passed and r.reason in ("timeout", "killed")
    assert time.monotonic() - start < 10


def test_a_fork_loop_is_contained(tmp_path):
    marker = tmp_path / "children"
    # each child would append to a file outside the sandbox: none may get that far
    prog = (f"import os\nwhile True:\n    pid = os.fork()\n    if pid == 0:\n"
            f"        open({str(marker)!r}, 'a').write('x')\n")
    r = run_program(prog, timeout=3.0)
    assert not r.passed
    assert not marker.exists()
    sub = run_program("import subprocess, sys\nsubprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n",
                      timeout=3.0)
    assert not sub.passed and "not allowed" in sub.output


def test_no_process_outlives_the_program(tmp_path):
    # even a program that gets a child past the guard (os.fork in a C extension is out of reach here,
    # so: a program that sleeps) is killed with its whole group at the time limit
    r = run_program("import time\ntime.sleep(60)\n", timeout=1.0)
    assert r.reason in ("timeout", "killed")
    # nothing named after the sandbox is left running
    leftovers = [p for p in os.listdir("/proc") if p.isdigit() and _cmdline(p).find("adaptrix-sandbox-") >= 0]
    assert leftovers == []


def _cmdline(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().decode(errors="replace")
    except OSError:
        return ""


def test_a_write_outside_the_temporary_folder_is_refused(tmp_path):
    target = tmp_path / "escaped.txt"
    for prog in (f"open({str(target)!r}, 'w').write('x')\n",
                 f"import os\nfd = os.open({str(target)!r}, os.O_WRONLY | os.O_CREAT)\nos.write(fd, b'x')\n",
                 f"import pathlib\npathlib.Path({str(target)!r}).write_text('x')\n"):
        r = run_program(prog)
        assert not r.passed, prog
        assert not target.exists(), prog
    existing = tmp_path / "keep.txt"
    existing.write_text("keep")
    r = run_program(f"import os\nos.remove({str(existing)!r})\n")
    assert not r.passed and existing.read_text() == "keep"
    # inside its own folder a program may write
    assert run_program("open('scratch.txt', 'w').write('x')\nassert open('scratch.txt').read() == 'x'\n").passed


def test_a_network_call_is_refused():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.2)
    port = server.getsockname()[1]
    accepted = []

    def accept():
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline and not accepted:
            try:
                conn, _ = server.accept()
                accepted.append(conn)
            except OSError:
                pass

    t = threading.Thread(target=accept)
    t.start()
    try:
        r = run_program(f"import urllib.request\nurllib.request.urlopen('http://127.0.0.1:{port}/', timeout=2).read()\n",
                        timeout=5.0)
        raw = run_program(f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
                          "s.sendall(b'hello')\n", timeout=5.0)
    finally:
        t.join()
        server.close()
    assert not r.passed and not raw.passed
    assert accepted == []


def test_memory_is_limited():
    r = run_program("x = bytearray(3 * 1024 ** 3)\n", memory_mb=256)
    assert not r.passed and "MemoryError" in r.output
