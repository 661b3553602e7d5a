"""``adaptrix eval`` (one model) and ``adaptrix compare`` (a matrix of models, adapters, backends and tasks)."""

from __future__ import annotations

import sys

from adaptrix.cli.generate_cmd import AUTO, thread_count
from adaptrix.cli.output import finite_float, format_table, print_json
from adaptrix.errors import EvaluationError
from adaptrix.evaluation import report
from adaptrix.evaluation.cache import ResultCache
from adaptrix.evaluation.matrix import parse_adapters
from adaptrix.evaluation.runner import EvalOptions, run_matrix
from adaptrix.evaluation.suites import load_suite
from adaptrix.evaluation.tasks import load_task

#: ``--models`` entry for the embedded SmolLM2-135M-Instruct.
DEFAULT_MODEL = "default"


def _shared(p) -> None:
    t = p.add_argument_group("tasks")
    t.add_argument("--task", action="append", default=[], metavar="FILE",
                   help="a JSONL task file (repeatable): prompt or messages + answer; choices + answer (index); "
                   "or tests + entry_point")
    t.add_argument("--tasks", metavar="NAMES", help="built-in suites, comma-separated: math, code, chat")
    t.add_argument("--metric", choices=("exact", "number", "contains", "choice", "code"),
                   help="how --task files are scored (default: choice with choices, code with tests, else exact)")
    t.add_argument("--shots", type=int, default=0, metavar="K", help="K solved examples from the same task first")
    t.add_argument("--max-new-tokens", type=int, metavar="N", help="new tokens at most per answer "
                   "(default: the metric's or suite's)")
    t.add_argument("--limit", type=int, metavar="N", help="the first N items of each task")
    r = p.add_argument_group("running")
    r.add_argument("--batch-size", type=int, default=16, metavar="N",
                   help="items per batch; a batch holds them for every adapter of the model (default: 16)")
    r.add_argument("--sequential", action="store_true",
                   help="run each cell on its own, one after another (default: a model's adapters in the same batches)")
    r.add_argument("--no-cache", action="store_true", help="compute every item again and cache nothing")
    r.add_argument("--sandbox-timeout", type=finite_float, default=10.0, metavar="S",
                   help="seconds each code answer may run (default: 10)")
    r.add_argument("--sandbox-memory", type=int, default=1024, metavar="MB",
                   help="memory each code answer may use (default: 1024)")
    m = p.add_argument_group("model options")
    m.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto (default: cpu)")
    m.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16 (default: auto)")
    m.add_argument("--revision", help="Hub revision (branch, tag or commit)")
    m.add_argument("--trust-remote-code", action="store_true", help="run custom modelling code a model ships")
    m.add_argument("--adapters-dir", default="adapters", help="folder of named adapters (default: adapters)")
    m.add_argument("--threads", type=thread_count, metavar="N", help="CPU threads")
    o = p.add_argument_group("output")
    o.add_argument("--json", action="store_true", help="print the cells (with their items) as JSON")
    o.add_argument("--out", metavar="DIR", help="write results.json, results.csv, scores.png and report.html there")


ADAPTERS_HELP = ("comma-separated: base (no adapter), adapter names (in --adapters-dir), folders or Hub ids, and "
                 "weighted compositions a=0.5+b=0.5")


def register(sub) -> None:
    p = sub.add_parser(
        "eval", help="score a model (and adapters) on tasks",
        description="Score a model, with or without adapters, on JSONL tasks or the built-in suites (math, code, "
        "chat). Greedy decoding; results are cached per item, so a rerun computes only what is new.",
    )
    p.add_argument("--model", "-m", metavar="M", help="Hub id, model folder, .gguf file or Hub GGUF "
                   "(default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--adapter", "-a", action="append", metavar="A",
                   help="evaluate with this adapter (repeatable; 'base' for none; " + ADAPTERS_HELP + "); default: base")
    p.add_argument("--backend", default=AUTO, metavar="B", help="execution backend (default: auto)")
    _shared(p)
    p.set_defaults(func=run_eval)

    c = sub.add_parser(
        "compare", help="compare models x adapters x backends on tasks (table, JSON, HTML report)",
        description="Run one cell per (model, adapter, backend, task). The adapters of a model are evaluated "
        "together in mixed-adapter batches. --out DIR writes a report with intervals and paired tests.",
    )
    c.add_argument("--models", action="append", metavar="M,...",
                   help=f"comma-separated model sources ({DEFAULT_MODEL!r}: the embedded SmolLM2-135M-Instruct); "
                   f"default: {DEFAULT_MODEL}")
    c.add_argument("--adapters", action="append", metavar="LIST", help=ADAPTERS_HELP + "; default: base")
    c.add_argument("--backends", default=AUTO, metavar="B,...", help="comma-separated backends (default: auto)")
    _shared(c)
    c.set_defaults(func=run_compare)


def _split(values) -> list[str]:
    return [v.strip() for text in values for v in text.split(",") if v.strip()]


def _tasks(args) -> list:
    if args.shots < 0:
        raise EvaluationError(f"--shots must be 0 or more, got {args.shots}")
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise EvaluationError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    tasks = [load_task(path, metric=args.metric, shots=args.shots, limit=args.limit, max_new_tokens=args.max_new_tokens)
             for path in args.task]
    for name in _split([args.tasks] if args.tasks else []):
        tasks.append(load_suite(name, shots=args.shots, limit=args.limit, max_new_tokens=args.max_new_tokens))
    if not tasks:
        raise EvaluationError("no task: give --task FILE (a JSONL file) or --tasks math,code,chat")
    names = [t.name for t in tasks]
    for n in names:
        if names.count(n) > 1:
            raise EvaluationError(f"two tasks are named {n!r} (task files are named after their file); rename one")
    return tasks


def _options(args):
    if args.batch_size < 1:
        raise EvaluationError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.sandbox_timeout <= 0 or args.sandbox_memory < 64:
        raise EvaluationError("--sandbox-timeout must be positive and --sandbox-memory at least 64 (MB)")
    engine = dict(device=args.device, dtype=args.dtype, adapters_dir=args.adapters_dir,
                  trust_remote_code=args.trust_remote_code)
    if args.revision:
        engine["revision"] = args.revision
    if args.threads is not None:
        engine["threads"] = args.threads
    return EvalOptions(batch_size=args.batch_size, together=not args.sequential, sandbox_timeout=args.sandbox_timeout,
                       sandbox_memory_mb=args.sandbox_memory, progress=sys.stderr.isatty(), engine_options=engine)


def _run(args, models, specs, backends) -> int:
    tasks = _tasks(args)
    cache = ResultCache(enabled=not args.no_cache)
    cells = run_matrix(models, specs, backends, tasks, _options(args), cache)
    if args.out:
        written = report.write_out(cells, args.out)
        print("wrote " + ", ".join(str(p) for p in written.values()), file=sys.stderr)
    if args.json:
        print_json(report.as_json(cells))
    else:
        print(format_table(report.table_rows(cells), report.columns(cells)))
        if cache.hits:
            print(f"\n{cache.hits} item results from the cache (--no-cache computes them again)")
    return 0


def run_eval(args) -> int:
    specs = parse_adapters(args.adapter or ["base"])
    return _run(args, [args.model], specs, [args.backend.strip().lower() or AUTO])


def run_compare(args) -> int:
    models = [None if m.lower() == DEFAULT_MODEL else m for m in _split(args.models or [DEFAULT_MODEL])]
    specs = parse_adapters(args.adapters or ["base"])
    backends = [b.lower() for b in _split([args.backends])] or [AUTO]
    for kind, values in (("--models", [str(m) for m in models]), ("--backends", backends)):
        for v in values:
            if values.count(v) > 1:

                raise EvaluationError(f"{kind} lists {v!r} twice")
    return _run(args, models, specs, backends)
