"""``adaptrix chat``: an interactive conversation that remembers its context."""

from __future__ import annotations

import sys

HELP = "commands: /reset (forget the conversation), /adapter NAME (NAME 'none': base model), /info, /exit"


def register(sub) -> None:
    from .output import finite_float

    from .generate_cmd import add_model_args

    p = sub.add_parser(
        "chat",
        help="chat with a model interactively (context kept between turns)",
        description=f"Interactive chat; {HELP}.",
    )
    add_model_args(p)
    p.add_argument("--system", "-s", metavar="S", help="system prompt")
    p.add_argument("--task", "-t", metavar="T", help="task preset: general, chat, code, math, creative")
    p.add_argument("--max-new-tokens", "-n", type=int, metavar="N")
    p.add_argument("--temperature", type=finite_float, metavar="X")
    p.add_argument("--top-p", type=finite_float, metavar="P")
    p.add_argument("--seed", type=int, metavar="S")
    p.set_defaults(func=run)


def _command(engine, line: str, out) -> bool:
    """Handle a /command; return False when the chat should end."""
    from ..errors import AdaptrixError

    cmd, _, arg = line.partition(" ")
    arg = arg.strip()
    if cmd in ("/exit", "/quit"):
        return False
    if cmd == "/reset":
        engine.reset_context()
        print("(conversation forgotten)", file=out)
    elif cmd == "/info":
        from .info_cmd import print_info

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


def run(args) -> int:
    from ..errors import AdaptrixError
    from .generate_cmd import make_engine, settings_from

    engine = make_engine(args)
    engine.use_context_by_default = True
    settings = settings_from(args)
    out = sys.stdout
    info = engine.get_model_info()
    on = f", on {info['backend']}" if info.get("backend") else ""
    print(f"adaptrix chat: {info['model_id']} ({engine.family}{on}); {HELP}", file=out)
    system = args.system
    try:
        while True:
            try:
                line = input("you> ")
            except EOFError:
                print("", file=out)
                break
            line = line.strip()
            if not line:
                continue
            if line.startswith("/"):
                if not _command(engine, line, out):
                    break
                continue
            try:
                out.write("assistant> ")
                for piece in engine.stream(line, system=system, task_type=args.task, **settings):
                    out.write(piece)
                    out.flush()
                out.write("\n")
            except AdaptrixError as exc:  # bad input: report it and keep chatting
                out.write("\n")
                print(f"error: {exc}", file=out)
    finally:
        engine.cleanup()
    return 0
