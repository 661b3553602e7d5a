"""``adaptrix serve``: an OpenAI-compatible HTTP server (needs the ``serve`` extra)."""

from __future__ import annotations

import sys

from adaptrix.cli.generate_cmd import add_model_args, engine_options
from adaptrix.engine import Engine
from adaptrix.errors import AdaptrixError
from adaptrix.serve.app import ServeOptions, create_app
from adaptrix.serve.http import base_url, is_loopback, uvicorn_config
from adaptrix.serve.modes import KNOWN_MODE_FLAGS, ServeMode
from adaptrix.serve.options import flag_type


def register(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="serve the model and its adapters over an OpenAI-compatible HTTP API, with a playground page",
        description="Serve one base model and many adapters: /v1/chat/completions, /v1/completions, /v1/models, "
        "/v1/load_lora_adapter, /health, /metrics and a playground at /. Clients pick an adapter in 'model'. "
        "Needs: pip install 'adaptrix[serve]'.",
    )
    add_model_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    p.add_argument("--port", type=port_number, default=8000, help="port, 1 to 65535 (default: 8000)")
    p.add_argument("--api-key", metavar="KEY", type=flag_type("api_key", str),
                   help="require 'Authorization: Bearer KEY' on every route but /health and / (printable ASCII)")
    p.add_argument("--max-loaded-adapters", type=adapter_budget, metavar="N", help="adapters resident at once (LRU)")
    p.add_argument("--max-batch", type=flag_type("max_batch"), default=8, metavar="N",
                   help="requests decoded together (default: 8)")
    p.add_argument("--max-queue", type=flag_type("max_queue"), default=64, metavar="N",
                   help="requests waiting before the server answers 429 (default: 64)")
    p.add_argument("--max-body-bytes", type=flag_type("max_body_bytes"), default=1 << 20, metavar="N",
                   help="request body limit (1 MiB)")
    p.add_argument("--header-timeout", type=flag_type("header_timeout", float), default=10.0, metavar="S",
                   help="seconds a client may take to send a request's headers, then 408 and closed (default: 10)")
    p.add_argument("--body-timeout", type=flag_type("body_timeout", float), default=30.0, metavar="S",
                   help="seconds a client may take to send a request's body, then 408 (default: 30)")
    p.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN", type=flag_type("cors_origin", str),
                   help="let browser pages from ORIGIN (scheme://host[:port], or *) call the API (repeatable; "
                   "default: no CORS)")
    p.add_argument("--enable-adapter-loading", action="store_true",
                   help="allow POST /v1/load_lora_adapter and /v1/unload_lora_adapter")
    p.add_argument("--allow-adapter-dir", action="append", default=[], metavar="DIR",
                   help="another folder adapters may be loaded from at run time (repeatable)")
    p.add_argument("--no-batching", action="store_true", help="run one request at a time")
    p.add_argument("--batch-invariant", action="store_true",
                   help="decode each batched request as if alone, so a temperature-0 answer never depends on what "
                   "runs beside it (slower: one forward pass per request per step; see docs/serve.md)")
    p.add_argument("--served-model-name", metavar="NAME", help="the base model's id in /v1/models")
    modes = add_mode_arguments(p)
    p.set_defaults(func=run, serve_modes=modes)


def installed_modes() -> list[tuple[str, ServeMode]]:
    """``(plugin, mode)`` for every serving mode the installed plugins provide (the ``serve_modes`` hook)."""
    from adaptrix.plugins.host import get_host

    try:
        host = get_host()
    except AdaptrixError:  # a bad plugin setting: the command that runs reports it (exit 2), not the parser
        return []
    return [(plugin, mode) for plugin, modes in host.call_all("serve_modes") for mode in modes or ()]


def add_mode_arguments(parser) -> list[ServeMode]:
    """Add each installed mode's options to ``adaptrix serve`` (a group per mode); options of modes not
    installed (:data:`~adaptrix.serve.modes.KNOWN_MODE_FLAGS`) answer which package to install."""
    import argparse

    modes = []
    for plugin, mode in installed_modes():
        group = parser.add_argument_group(f"{mode.name} (from the {plugin} plugin)", mode.summary)
        try:
            mode.add_arguments(group)
        except argparse.ArgumentError as exc:  # an option another mode (or the core) has: the first keeps it
            print(f"adaptrix serve: warning: the {plugin} plugin's serving mode {mode.name!r} is skipped: {exc}",
                  file=sys.stderr)
            continue
        modes.append(mode)
    for flag, dist in KNOWN_MODE_FLAGS.items():
        if flag not in parser._option_string_actions:
            parser.add_argument(flag, nargs="?", action=_needs_plugin(dist), help=argparse.SUPPRESS)
    return modes


def _needs_plugin(dist: str):
    import argparse

    class NeedsPlugin(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):
            parser.error(f"{option_string} needs the {dist} plugin, which is not installed: pip install {dist} "
                         "(see docs/scale-out.md)")

    return NeedsPlugin


def port_number(text: str) -> int:
    """argparse type: a TCP port to listen on, 1 to 65535."""
    import argparse

    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port from 1 to 65535, got {port}")
    return port


def adapter_budget(text: str) -> int:
    """argparse type of ``--max-loaded-adapters``: a whole number of at least 1."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value} (a server with room for no adapter "
                                         "could serve none)")
    return value


def run(args) -> int:
    try:
        import uvicorn
    except ImportError as exc:
        raise AdaptrixError(f"adaptrix serve needs the serve extra ({exc}); pip install 'adaptrix[serve]'") from exc
    if not is_loopback(args.host) and args.api_key is None:
        loading = " (and load adapters: --enable-adapter-loading is on)" if args.enable_adapter_loading else ""
        print(f"adaptrix serve: warning: binding to {args.host} without --api-key: anyone who can reach this "
              f"machine can use the model{loading}", file=sys.stderr)
    options = ServeOptions(
        adapters_dir=args.adapters_dir, api_key=args.api_key, max_batch=args.max_batch, max_queue=args.max_queue,
        enable_adapter_loading=args.enable_adapter_loading, allowed_dirs=tuple(args.allow_adapter_dir),
        max_body_bytes=args.max_body_bytes, batching="off" if args.no_batching else "auto",
        model_name=args.served_model_name, header_timeout=args.header_timeout, body_timeout=args.body_timeout,
        cors_origins=tuple(args.cors_origin), batch_invariant=args.batch_invariant,
    )
    for mode in getattr(args, "serve_modes", ()):
        if mode.selected(args):
            return int(mode.run(args, options) or 0)

    def make_engine():
        print(f"adaptrix serve: loading {args.model or 'the embedded default model'} ...", file=sys.stderr,
              flush=True)
        engine = Engine(**engine_options(args, progress=True, max_loaded_adapters=args.max_loaded_adapters))
        engine.initialize()
        print(f"adaptrix serve: ready on {base_url(args.host, args.port)}", file=sys.stderr, flush=True)
        return engine

    import logging

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    uvicorn.Server(uvicorn_config(create_app(make_engine, options), args.host, args.port)).run()
    return 0
