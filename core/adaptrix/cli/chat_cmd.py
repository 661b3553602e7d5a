"""``adaptrix chat``: an interactive conversation that remembers its context.

- The ``you>`` prompt and every answer go to stdout; with a terminal, the
  stdlib :mod:`readline` gives line editing and history (arrow keys), and
  without it (Windows, a Python built without it) the prompt is written to
  stdout by hand and lines are read plainly.
- Ctrl-C during an answer stops that answer only: the turn is dropped (it is
  not remembered), the conversation so far is kept, and the prompt comes back.
  At the prompt, Ctrl-C twice in a row, Ctrl-D or ``/exit`` leaves.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any, Callable, Iterator

from adaptrix.cli.generate_cmd import add_model_args, make_engine, settings_from
from adaptrix.cli.grammar_args import add_grammar_args, grammar_option
from adaptrix.cli.info_cmd import print_info
from adaptrix.cli.output import finite_float
from adaptrix.errors import AdaptrixError

PROMPT = "you> "
ANSWER = "assistant> "
#: ``(command, what it does)``, as ``/help`` lists them.
COMMANDS = (
    ("/help", "list these commands"),
    ("/reset", "forget the conversation"),
    ("/adapter NAME", "switch to adapter NAME ('none': the base model)"),
    ("/info", "show the model, its backend and adapters"),
    ("/exit", "leave (also /quit, Ctrl-D, or Ctrl-C twice at the prompt)"),
)
HELP = "commands: " + ", ".join(c for c, _ in COMMANDS) + " (/help explains them)"
STOPPED = "(answer stopped; this turn is not kept, the conversation before it is)"
AGAIN = "(Ctrl-C again or Ctrl-D to leave; /help lists the commands)"


def register(sub) -> None:
    p = sub.add_parser(
        "chat",
        help="chat with a model interactively (context kept between turns)",
        description=f"Interactive chat; {HELP}. Ctrl-C stops an answer and keeps the conversation.",
    )
    add_model_args(p)
    p.add_argument("--system", "-s", metavar="S", help="system prompt")
    p.add_argument("--task", "-t", metavar="T", help="task preset: general, chat, code, math, creative")
    p.add_argument("--max-new-tokens", "-n", type=int, metavar="N")
    p.add_argument("--temperature", type=finite_float, metavar="X")
    p.add_argument("--top-p", type=finite_float, metavar="P")
    p.add_argument("--seed", type=int, metavar="S")
    add_grammar_args(p)
    p.set_defaults(func=run)


class LineReader:
    """Reads the user's lines; the prompt goes to ``out`` (stdout), never to stderr.

    With stdin and stdout on a terminal it enables :mod:`readline` (editing,
    history with the arrow keys), which writes the prompt to stdout itself.
    Otherwise the prompt is written to ``out`` here: Python's own terminal
    reader, used when readline is missing, would write it to stderr.
    """

    def __init__(self, out=None, stdin=None) -> None:
        self.out = out or sys.stdout
        stdin = stdin or sys.stdin
        self.editing = _is_tty(stdin) and _is_tty(self.out) and _enable_readline()

    def __call__(self, prompt: str) -> str:
        """The next line; ``EOFError`` on Ctrl-D, ``KeyboardInterrupt`` on Ctrl-C."""
        if self.editing:
            return input(prompt)
        self.out.write(prompt)
        self.out.flush()
        return input()


def _is_tty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def _enable_readline() -> bool:
    """Import :mod:`readline` (importing it is what gives ``input()`` editing and history); False without it."""
    try:
        import readline  # noqa: F401
    except ImportError:  # Windows, or a Python built without it: plain input
        return False
    return True


@contextlib.contextmanager
def first_interrupt_only() -> Iterator[None]:
    """Inside, the first Ctrl-C raises ``KeyboardInterrupt`` and later ones are ignored.

    So a user pressing Ctrl-C again while an answer is being stopped cannot cut
    short the stop itself (which frees the model for the next turn). Only in the
    main thread (where signal handlers live); elsewhere the body runs as is.
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired = False

    def handler(signum, frame):
        nonlocal fired
        if not fired:
            fired = True
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _help(out) -> None:
    width = max(len(c) for c, _ in COMMANDS)
    for command, what in COMMANDS:
        print(f"  {command.ljust(width)}  {what}", file=out)
    print("  Ctrl-C during an answer stops it; the conversation before it is kept.", file=out)


def _command(engine, line: str, out) -> bool:
    """Handle a /command; return False when the chat should end."""
    cmd, _, arg = line.partition(" ")
    arg = arg.strip()
    if cmd in ("/exit", "/quit"):
        return False
    if cmd in ("/help", "/?"):
        _help(out)
    elif cmd == "/reset":
        engine.reset_context()
        print("(conversation forgotten)", file=out)
    elif cmd == "/info":

        print_info(engine.get_model_info())
    elif cmd == "/adapter":
        if not arg:
            print("usage: /adapter NAME   (NAME 'none' returns to the base model)", file=out)
        else:
            try:
                engine.switch_adapter(None if arg.lower() == "none" else arg)
                print(f"(adapter: {arg})", file=out)
            except AdaptrixError as exc:
                print(f"error: {exc}", file=out)
    else:
        print(f"unknown command {cmd}; {HELP}", file=out)
    return True


def _answer(engine, line: str, out, options: dict[str, Any]) -> None:
    """Stream one answer to ``out``; Ctrl-C stops it (the engine then forgets the turn), errors are printed."""
    with first_interrupt_only():
        stream = None
        try:
            out.write(ANSWER)
            out.flush()
            stream = engine.stream(line, **options)
            for piece in stream:
                out.write(piece)
                out.flush()
            out.write("\n")
        except KeyboardInterrupt:
            out.write(f"\n{STOPPED}\n")
        except AdaptrixError as exc:  # bad input: report it and keep chatting
            out.write("\n")
            print(f"error: {exc}", file=out)
        finally:
            if stream is not None:
                stream.close()  # stops the generation and frees the model; a finished stream ignores it
            out.flush()


def chat(engine, *, read: Callable[[str], str], out, options: dict[str, Any] | None = None) -> None:
    """The conversation loop: read a line, answer it or run its /command, until the user leaves.

    ``read(prompt)`` returns a line, raising ``EOFError`` (Ctrl-D) or
    ``KeyboardInterrupt`` (Ctrl-C); ``options`` go to ``engine.stream``.
    """
    options = dict(options or {})
    interrupted = False  # the previous prompt ended with Ctrl-C
    while True:
        try:
            line = read(PROMPT)
        except EOFError:
            print("", file=out)
            return
        except KeyboardInterrupt:
            if interrupted:
                print("", file=out)
                return
            interrupted = True
            print(f"\n{AGAIN}", file=out)
            continue
        interrupted = False
        line = line.strip()
        if not line:
            continue
        if line.startswith("/"):
            if not _command(engine, line, out):
                return
            continue
        _answer(engine, line, out, options)


def run(args) -> int:
    grammar = grammar_option(args)  # a bad schema file fails before the model loads
    engine = make_engine(args)
    try:
        engine.use_context_by_default = True
        out = sys.stdout
        info = engine.get_model_info()
        on = f", on {info['backend']}" if info.get("backend") else ""
        print(f"adaptrix chat: {info['model_id']} ({engine.family}{on}); {HELP}", file=out)
        options = {"system": args.system, "task_type": args.task, **settings_from(args), **grammar}
        chat(engine, read=LineReader(out), out=out, options=options)
    finally:
        engine.cleanup()
    return 0
