"""``adaptrix chat`` as a person uses it: Ctrl-C, line editing, the prompt on stdout, /help.

A pseudo-terminal runs the real command on a fake engine (tests/support/chat_pty.py,
no torch); a tiny real model checks that the conversation survives a stopped answer.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from adaptrix.cli.main import main

SCRIPT = Path(__file__).parent / "support" / "chat_pty.py"
UP = "\x1b[A"


class Terminal:
    """The script on a pseudo-terminal (its controlling terminal, so typing Ctrl-C sends SIGINT)."""

    def __init__(self, tmp_path: Path, *, readline: bool = True):
        import fcntl
        import pty
        import termios

        self.history_file = tmp_path / "history.json"
        env = dict(os.environ, CHAT_HISTORY=str(self.history_file), TERM="xterm", PYTHONUNBUFFERED="1")
        code = ("import sys, runpy; sys.modules['readline'] = None; " if not readline else "import runpy; ")
        code += f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')"
        self.master, slave = pty.openpty()

        def controlling_terminal():
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        self.proc = subprocess.Popen(
            [sys.executable, "-c", code], stdin=slave, stdout=slave, stderr=subprocess.PIPE, env=env,
            start_new_session=True, preexec_fn=controlling_terminal, close_fds=True,
        )
        os.close(slave)
        self.seen = ""

    def expect(self, text: str, timeout: float = 20.0) -> str:
        """Read the terminal until ``text`` appears after what earlier calls consumed; return what was read."""
        deadline = time.monotonic() + timeout
        while text not in self.seen:
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None and not select.select([self.master], [], [], 0)[0]:
                raise AssertionError(f"{text!r} never appeared on the terminal; it shows:\n{self.seen}")
            if select.select([self.master], [], [], min(left, 0.2))[0]:
                try:
                    self.seen += os.read(self.master, 4096).decode("utf-8", "replace")
                except OSError:  # the child closed the terminal
                    pass
        head, _, self.seen = self.seen.partition(text)
        return head + text

    def type(self, keys: str) -> None:
        os.write(self.master, keys.encode())

    def finish(self, timeout: float = 20.0) -> tuple[int, str]:
        try:
            _, err = self.proc.communicate(timeout=timeout)
        finally:
            os.close(self.master)
        return self.proc.returncode, err.decode()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def terminal(tmp_path):
    if sys.platform == "win32":
        pytest.skip("no pseudo-terminals on Windows")
    made = []

    def start(**kwargs) -> Terminal:
        made.append(Terminal(tmp_path, **kwargs))
        return made[-1]

    yield start
    for t in made:
        t.kill()


def test_on_a_terminal_ctrl_c_stops_the_answer_and_arrows_recall_lines(terminal):
    t = terminal()
    t.expect("you> ")
    t.type("hello\r")
    t.expect("assistant> echo: hello")
    t.expect("you> ")
    t.type("long\r")
    t.expect("tick tick ")
    t.type("\x03")  # Ctrl-C mid-answer: that answer stops, the chat goes on
    t.expect("(answer stopped; this turn is not kept, the conversation before it is)")
    t.expect("you> ")
    t.type(UP + UP + "\r")  # readline history: two lines back is "hello", not "^[[A^[[A" sent to the model
    t.expect("assistant> echo: hello")
    t.expect("you> ")
    t.type("/help\r")
    shown = t.expect("you> ")
    assert "/reset" in shown and "/adapter NAME" in shown and "/exit" in shown and "unknown command" not in shown
    time.sleep(0.5)  # let readline take the terminal after drawing its prompt (a busy CPU can lag it behind)
    t.type("\x03")  # at the prompt: a hint, not an exit
    t.expect("Ctrl-C again or Ctrl-D to leave")
    t.expect("you> ")
    t.type("\x03")  # twice in a row: leave
    rc, err = t.finish()
    assert rc == 0
    assert "you>" not in err and "Traceback" not in err  # the prompt went to the terminal through stdout
    # The answered turns are remembered; the stopped one is not.
    assert json.loads(t.history_file.read_text()) == [["hello", "done"], ["hello", "done"]]


def test_without_readline_the_prompt_still_goes_to_stdout_and_ctrl_d_leaves(terminal):
    t = terminal(readline=False)  # Python's own terminal reader writes input()'s prompt to stderr
    t.expect("you> ")
    t.type("hello\r")
    t.expect("assistant> echo: hello")
    t.expect("you> ")
    t.type("\x04")  # Ctrl-D
    rc, err = t.finish()
    assert rc == 0 and "you>" not in err and "Traceback" not in err
    assert json.loads(t.history_file.read_text()) == [["hello", "done"]]


@pytest.fixture(scope="module")
def model(tiny_model):
    return str(tiny_model("llama"))


def test_ctrl_c_mid_answer_keeps_the_real_conversation(model, monkeypatch, capsys, one_thread):
    """A real engine: the KeyboardInterrupt lands where Ctrl-C does, in the thread pulling tokens."""
    from adaptrix.backends.contract import Runner
    from adaptrix.engine import Engine

    real_stream_tokens = Runner.stream_tokens
    calls = []

    def stream_tokens(self, ids, cfg, **kw):
        calls.append(ids)
        for n, token in enumerate(real_stream_tokens(self, ids, cfg, **kw)):
            if len(calls) == 2 and n == 2:
                raise KeyboardInterrupt  # the user presses Ctrl-C during the second answer
            yield token

    histories = []
    real_cleanup = Engine.cleanup

    def cleanup(self):
        histories.append(self.get_history())
        real_cleanup(self)

    monkeypatch.setattr(Runner, "stream_tokens", stream_tokens)
    monkeypatch.setattr(Engine, "cleanup", cleanup)
    lines = iter(["My name is Alice", "Tell me a long story", "What's my name?", "/exit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    assert main(["chat", "--model", model, "--temperature", "0", "-n", "6"]) == 0
    out = capsys.readouterr().out
    assert out.count("assistant> ") == 3
    assert "(answer stopped; this turn is not kept, the conversation before it is)\nyou> " in out
    # The third question was answered with the first turn as context, and the stopped turn was dropped.
    assert len(calls) == 3 and calls[2][: len(calls[0])] == calls[0]
    users = [m["content"] for m in histories[0] if m["role"] == "user"]
    assert users == ["My name is Alice", "What's my name?"]


def test_help_and_the_prompt_on_stdout_when_not_a_terminal(monkeypatch, capsys):
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        from chat_pty import FakeEngine
    finally:
        sys.path.remove(str(SCRIPT.parent))
    lines = iter(["/help", "hi", "/bogus"])

    def read(prompt=""):
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    monkeypatch.setattr("builtins.input", read)
    monkeypatch.setenv("CHAT_HISTORY", os.devnull)
    monkeypatch.setattr("adaptrix.cli.generate_cmd.make_engine", lambda args: FakeEngine())
    assert main(["chat"]) == 0
    out, err = capsys.readouterr()
    for command in ("/help", "/reset", "/adapter NAME", "/info", "/exit"):
        assert f"  {command} " in out  # one line each, as /help lists them
    assert "unknown command /bogus" in out and "unknown command /help" not in out
    assert out.count("you> ") == 4 and "you>" not in err
