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


def test_no_process_outlives_the_program():
    # a child forked past the audit hook (through libc, as the module docstring warns) outlives its parent,
    # which exits at once: the whole process group is killed when the program ends
    # (the child lets go of the output pipes, so the parent's end is the program's end)
    prog = ("import ctypes, os, time\npid = ctypes.CDLL(None).fork()\n"
            "if pid == 0:\n    os.close(1)\n    os.close(2)\n    time.sleep(60)\n")
    r = run_program(prog, timeout=5.0)
    assert r.reason == "passed" and r.seconds < 5
    time.sleep(0.2)
    leftovers = [p for p in os.listdir("/proc") if p.isdigit() and "adaptrix-sandbox-" in _cmdline(p)
                 and _state(p) != "Z"]
    assert leftovers == []


def _state(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


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
    finished = threading.Event()

    def accept():
        while not finished.is_set() and not accepted:
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
        finished.set()
        t.join()
        try:  # a connection still waiting in the backlog counts too
            accepted.append(server.accept()[0])
        except OSError:
            pass
        server.close()
    assert not r.passed and not raw.passed
    assert accepted == []


def test_memory_is_limited():
    r = run_program("x = bytearray(3 * 1024 ** 3)\n", memory_mb=256)
    assert not r.passed and "MemoryError" in r.output


def test_code_cells_score_contained_answers_as_failures(tmp_path, monkeypatch):
    """Through the runner: answers that loop, fork, write outside or call the network count as wrong."""
    import contextlib
    import json
    from types import SimpleNamespace

    from adaptrix.evaluation import runner
    from adaptrix.evaluation.matrix import parse_adapters
    from adaptrix.evaluation.runner import EvalOptions, run_matrix
    from adaptrix.evaluation.tasks import load_task

    outside = tmp_path / "outside.txt"
    bodies = {
        "good": "    return a + b",
        "loop": "    while True:\n        pass",
        "fork": "    import os\n    while True:\n        os.fork()\n    return a + b",
        "write": f"    open({str(outside)!r}, 'w').write('x')\n    return a + b",
        "network": "    import urllib.request\n    urllib.request.urlopen('http://example.com', timeout=2)\n    return a + b",
    }
    task_file = tmp_path / "code.jsonl"
    task_file.write_text("\n".join(json.dumps({"prompt": f"Write add(a, b) ({k}).", "tests": "assert add(2, 3) == 5",
                                               "entry_point": "add"}) for k in bodies))
    answers = {f"Write add(a, b) ({k}).": f"Here it is:\n```python\ndef add(a, b):\n{b}\n```\n" for k, b in bodies.items()}

    class Answers:  # the model's answers, fixed: the sandbox and the counting are under test
        def list_adapters(self):
            return []

        def generate_batch_detailed(self, prompts, adapters=None, **settings):
            return [SimpleNamespace(text=answers[p], token_ids=(1, 2)) for p in prompts]

    @contextlib.contextmanager
    def fake(model, backend, options):
        yield Answers()

    monkeypatch.setattr(runner, "open_engine", fake)
    monkeypatch.setattr(runner, "model_identity", lambda model, backend, options: ("digest", "transformers"))
    (cell,) = run_matrix(["m"], parse_adapters("base"), ["transformers"], [load_task(task_file)],
                         EvalOptions(sandbox_timeout=2.0))
    assert [r.correct for r in cell.items] == [True, False, False, False, False]
    assert cell.items[1].extra["sandbox"] == "timeout"
    assert cell.correct == 1 and not outside.exists()
