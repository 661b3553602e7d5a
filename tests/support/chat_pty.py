"""``adaptrix chat`` on a fake engine, run as a script on a pseudo-terminal by tests/test_cli_chat.py.

The real command (``main(["chat"])``) runs with ``make_engine`` replaced by
:class:`FakeEngine`, which imports no torch: answers are ``echo: LINE``, and the
line ``long`` streams ``tick `` every 50 ms for 20 s (time enough to press
Ctrl-C). Like the engine, it remembers a turn only once its answer is complete;
on cleanup it writes the remembered turns as JSON to ``$CHAT_HISTORY``.
"""

from __future__ import annotations

import json
import os
import sys
import time


class FakeEngine:
    family = "fake"
    use_context_by_default = False

    def __init__(self) -> None:
        self.history: list[list[str]] = []

    def get_model_info(self) -> dict:
        return {"model_id": "fake-model", "backend": "fake", "family": "fake"}

    def stream(self, line: str, **options):
        def pieces():
            if line == "long":
                for _ in range(400):
                    time.sleep(0.05)
                    yield "tick "
            else:
                yield f"echo: {line}"
            self.history.append([line, "done"])  # after the last piece, as Engine._stream remembers a turn

        return pieces()

    def reset_context(self) -> None:
        self.history.clear()

    def switch_adapter(self, name) -> None:
        pass

    def cleanup(self) -> None:
        with open(os.environ["CHAT_HISTORY"], "w", encoding="utf-8") as f:
            json.dump(self.history, f)


if __name__ == "__main__":
    from adaptrix.cli import generate_cmd
    from adaptrix.cli.main import main

    generate_cmd.make_engine = lambda args: FakeEngine()
    sys.exit(main(["chat"]))
