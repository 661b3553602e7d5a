"""Entry point of the ``adaptrix`` command.

Each command group lives in its own module with a ``register(subparsers)``
function; nothing heavy is imported until a command runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from adaptrix import __version__
from adaptrix.errors import AdaptrixError

#: Command modules, in the order ``--help`` lists them.
COMMANDS = (
    "generate_cmd", "chat_cmd", "serve_cmd", "info_cmd", "adapters_cmd", "train_cmd", "cache_cmd", "detect_cmd",
    "eval_cmd", "lm_eval_cmd", "plugins_cmd",
)


#: Commands whose arguments all belong to another program, passed on untouched (options included), by module.
PASS_THROUGH = {"lm-eval": "lm_eval_cmd"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="adaptrix",
        description="Run any open causal LM with any stack of LoRA adapters.",
    )
    parser.add_argument("--version", action="version", version=f"adaptrix {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"{__package__}.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in PASS_THROUGH:  # `adaptrix lm-eval --help` is lm-eval's help
        module = importlib.import_module(f"{__package__}.{PASS_THROUGH[argv[0]]}")
        return _run(lambda: module.run_args(argv[1:]))
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    return _run(lambda: args.func(args))


def _run(command) -> int:
    """Run a command: its exit status; adaptrix errors, Ctrl-C and a closed pipe as one line each."""
    try:
        return int(command() or 0)
    except AdaptrixError as exc:
        print(f"adaptrix: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `adaptrix plugins list | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
