"""``adaptrix generate PROMPT``: one answer, streamed to the terminal."""

from __future__ import annotations

import sys

from adaptrix.cli.grammar_args import add_grammar_args, grammar_option
from adaptrix.cli.output import finite_float, print_json
from adaptrix.engine import Engine


def add_model_args(p) -> None:
    """Options every command that loads a model shares."""
    p.add_argument("--model", "-m", metavar="M", help="Hub id, model folder or .gguf file "
                   "(default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto (default: cpu)")
    p.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16 (default: auto)")
    p.add_argument("--revision", help="Hub revision (branch, tag or commit)")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="run custom modelling code a model ships (read it first)")
    p.add_argument("--adapters-dir", default="adapters", help="folder of named adapters (default: adapters)")
    p.add_argument("--threads", type=thread_count, metavar="N",
                   help="CPU threads, at most the CPUs this process may use (default: the backend's own; on a "
                   "shared machine fewer can be faster)")
    add_backend_arg(p)


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    import os

    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def thread_count(text: str) -> int:
    """argparse type of ``--threads``: 1 to :func:`usable_cpus`. More threads than CPUs is refused, not
    warned about: llama.cpp's and torch's threads wait for each other at every step, so each token waits for
    threads that are not running (8 tokens took 49 s with 1000 threads on 2 CPUs)."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    cpus = usable_cpus()
    if not 1 <= value <= cpus:
        raise argparse.ArgumentTypeError(f"must be from 1 to {cpus} (the CPUs this process may use), got {value}")
    return value


def add_backend_arg(p, help: str | None = None) -> None:
    """``--backend``: which execution backend runs the model (names are checked when the model is resolved)."""
    p.add_argument("--backend", default=AUTO, metavar="B", help=help or BACKEND_HELP)


#: ``--backend``'s default: the backend is chosen from the model source.
AUTO = "auto"
BACKEND_HELP = ("execution backend: auto (the fastest installed backend that prefers the model's format, else "
                "transformers), transformers, or one a plugin adds; 'adaptrix plugins list' shows them")


def backend_option(args) -> dict:
    """``{"backend": name}`` when ``--backend`` names one, ``{}`` for auto (the engine's own default)."""
    name = (getattr(args, "backend", None) or AUTO).strip().lower()
    return {} if name == AUTO else {"backend": name}


def engine_options(args, **extra) -> dict:
    """The ``Engine(...)`` keyword arguments of the shared model options (``add_model_args``)."""
    return dict(
        model_id=args.model,
        device=args.device,
        dtype=args.dtype,
        revision=args.revision,
        trust_remote_code=args.trust_remote_code,
        adapters_dir=args.adapters_dir,
        **({"threads": args.threads} if getattr(args, "threads", None) is not None else {}),
        **backend_option(args),
        **extra,
    )


def make_engine(args):
    engine = Engine(**engine_options(args, progress=sys.stderr.isatty()))
    engine.initialize()
    return engine


def register(sub) -> None:
    p = sub.add_parser(
        "generate",
        help="generate an answer to a prompt (streamed)",
        description="Generate an answer to PROMPT with the model's chat template and stream it to stdout. "
        "Settings not given come from the task preset, then the model family, then global defaults.",
    )
    p.add_argument("prompt", metavar="PROMPT", help="the prompt ('-' reads it from stdin)")
    add_model_args(p)
    p.add_argument("--adapter", "-a", metavar="A", help="load this adapter (name in --adapters-dir, folder or Hub id)")
    p.add_argument("--task", "-t", metavar="T", help="task preset: general, chat, code, math, creative")
    p.add_argument("--max-new-tokens", "-n", type=int, metavar="N", help="new tokens at most")
    p.add_argument("--temperature", type=finite_float, metavar="X", help="0 is greedy")
    p.add_argument("--top-p", type=finite_float, metavar="P")
    p.add_argument("--top-k", type=int, metavar="K")
    p.add_argument("--seed", type=int, metavar="S", help="seed for reproducible sampling")
    p.add_argument("--stop", action="append", metavar="TEXT", help="stop string (repeatable)")
    p.add_argument("--system", "-s", metavar="S", help="system prompt")
    p.add_argument("--show-thinking", action="store_true", help="keep <think> spans in the output")
    p.add_argument("--no-stream", action="store_true", help="print the answer once it is complete")
    p.add_argument("--json", action="store_true", help="print a JSON object (text, settings, tokens)")
    add_grammar_args(p)
    p.set_defaults(func=run)


def settings_from(args) -> dict:
    values = {
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "top_k": getattr(args, "top_k", None),
        "seed": args.seed,
        "stop": getattr(args, "stop", None),
    }
    return {k: v for k, v in values.items() if v is not None}


def run(args) -> int:
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    grammar = grammar_option(args)  # a bad schema file fails before the model loads
    engine = make_engine(args)
    try:
        if args.adapter:
            engine.load_adapter(args.adapter)
        kwargs = dict(
            task_type=args.task, system=args.system, show_thinking=args.show_thinking, **settings_from(args),
            **grammar,
        )
        if args.json:
            result = engine.generate_detailed(prompt, **kwargs)
            data = result.as_dict()
            data.update(model=engine.get_model_info()["model_id"], family=engine.family, adapter=args.adapter)
            print_json(data)
        elif args.no_stream:
            print(engine.generate(prompt, **kwargs))
        else:
            for piece in engine.stream(prompt, **kwargs):
                sys.stdout.write(piece)
                sys.stdout.flush()
            sys.stdout.write("\n")
    finally:
        engine.cleanup()
    return 0
