"""``adaptrix serve``: an OpenAI-compatible HTTP server (needs the ``serve`` extra)."""

from __future__ import annotations

import sys

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def register(sub) -> None:
    from .generate_cmd import add_model_args

    p = sub.add_parser(
        "serve",
        help="serve the model and its adapters over an OpenAI-compatible HTTP API, with a playground page",
        description="Serve one base model and many adapters: /v1/chat/completions, /v1/completions, /v1/models, "
        "/v1/load_lora_adapter, /health, /metrics and a playground at /. Clients pick an adapter in 'model'. "
        "Needs: pip install 'adaptrix[serve]'.",
    )
    add_model_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p.add_argument("--api-key", metavar="KEY", help="require 'Authorization: Bearer KEY' on every route but /health")
    p.add_argument("--max-loaded-adapters", type=int, metavar="N", help="adapters resident at once (LRU)")
    p.add_argument("--max-batch", type=int, default=8, metavar="N", help="requests decoded together (default: 8)")
    p.add_argument("--max-queue", type=int, default=64, metavar="N",
                   help="requests waiting before the server answers 429 (default: 64)")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, metavar="N", help="request body limit (1 MiB)")
    p.add_argument("--enable-adapter-loading", action="store_true",
                   help="allow POST /v1/load_lora_adapter and /v1/unload_lora_adapter")
    p.add_argument("--allow-adapter-dir", action="append", default=[], metavar="DIR",
                   help="another folder adapters may be loaded from at run time (repeatable)")
    p.add_argument("--no-batching", action="store_true", help="run one request at a time")
    p.add_argument("--batch-invariant", action="store_true",
                   help="decode each batched request as if alone, so a temperature-0 answer never depends on what "
                   "runs beside it (slower: one forward pass per request per step; see docs/serve.md)")
    p.add_argument("--served-model-name", metavar="NAME", help="the base model's id in /v1/models")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..errors import AdaptrixError

    try:
        import uvicorn

        from ..serve.app import ServeOptions, create_app
    except ImportError as exc:
        raise AdaptrixError(f"adaptrix serve needs the serve extra ({exc}); pip install 'adaptrix[serve]'") from exc
    if args.host not in LOOPBACK and not args.api_key:
        print(f"adaptrix serve: warning: binding to {args.host} without --api-key: anyone who can reach this "
              "machine can use the model (and load adapters, if enabled)", file=sys.stderr)
    options = ServeOptions(
        adapters_dir=args.adapters_dir, api_key=args.api_key, max_batch=args.max_batch, max_queue=args.max_queue,
        enable_adapter_loading=args.enable_adapter_loading, allowed_dirs=tuple(args.allow_adapter_dir),
        max_body_bytes=args.max_body_bytes, batching="off" if args.no_batching else "auto",
        model_name=args.served_model_name, batch_invariant=args.batch_invariant,
    )

    def make_engine():
        from ..engine import Engine
        from .generate_cmd import engine_options

        print(f"adaptrix serve: loading {args.model or 'the embedded default model'} ...", file=sys.stderr,
              flush=True)
        engine = Engine(**engine_options(args, progress=True, max_loaded_adapters=args.max_loaded_adapters))
        engine.initialize()
        print(f"adaptrix serve: ready on http://{args.host}:{args.port}/", file=sys.stderr, flush=True)
        return engine

    import logging

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    uvicorn.run(create_app(make_engine, options), host=args.host, port=args.port, log_level="warning")
    return 0
