"""``adaptrix lm-eval ARGS...``: lm-evaluation-harness's own command line, with the model ``adaptrix`` registered.

Every argument goes to lm-eval unchanged (``--model adaptrix --model_args model=...,adapter=...,backend=...
--tasks ...``; ``--model local-completions`` against ``adaptrix serve`` works too). lm-eval 0.4.x has no
plugin entry point for models, hence this wrapper; see :mod:`adaptrix.evaluation.lm_eval_model`. The
arguments reach :func:`run_args` untouched (``adaptrix.cli.main.PASS_THROUGH``): argparse would take
lm-eval's options for adaptrix's own.
"""

from __future__ import annotations

import argparse
import sys

from adaptrix.errors import AdaptrixError


def register(sub) -> None:
    p = sub.add_parser(
        "lm-eval",
        help="run lm-evaluation-harness with the model 'adaptrix' registered",
        description="Runs lm-eval's command line (all arguments are passed to it) with the model 'adaptrix': "
        "--model adaptrix --model_args model=SOURCE,adapter=NAME,adapters_dir=DIR,backend=NAME,dtype=DTYPE. "
        "Needs the eval extra: pip install 'adaptrix[eval]'. Example: adaptrix lm-eval --model adaptrix "
        "--model_args adapter=math_specialist --tasks arc_easy --limit 20",
        add_help=False,
    )
    p.add_argument("lm_eval_args", nargs=argparse.REMAINDER, metavar="ARGS",
                   help="lm-eval's arguments (adaptrix lm-eval --help shows them)")
    p.set_defaults(func=lambda args: run_args(args.lm_eval_args))


def run_args(argv: list[str]) -> int:
    """lm-eval's command line on ``argv``, the model ``adaptrix`` registered: its exit status."""
    try:
        from lm_eval.__main__ import cli_evaluate
    except ImportError:
        raise AdaptrixError("lm-eval is not installed; install it with: pip install 'adaptrix[eval]'") from None
    import adaptrix.evaluation.lm_eval_model  # noqa: F401  (registers --model adaptrix)

    saved = sys.argv
    sys.argv = ["adaptrix lm-eval", *argv]  # lm-eval's parser reads sys.argv
    try:
        cli_evaluate()
    except SystemExit as end:
        code = end.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    finally:
        sys.argv = saved
    return 0
