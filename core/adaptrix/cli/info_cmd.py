"""``adaptrix info``: load a model and show what the engine knows about it."""

from __future__ import annotations

from adaptrix.cli.generate_cmd import add_model_args, make_engine
from adaptrix.cli.output import print_json, print_pairs


def register(sub) -> None:
    p = sub.add_parser(
        "info",
        help="load a model and show family, size, dtype, device, context and defaults",
        description="Load the model (default: the embedded SmolLM2-135M-Instruct) and print get_model_info().",
    )
    add_model_args(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def _backend_text(info: dict) -> str | None:
    """``"llamacpp (auto: ...)"``: which backend runs the model and why."""
    name, reason = info.get("backend"), info.get("backend_reason")
    if not name:
        return None
    return f"{name} ({reason})" if reason else name


def print_info(info: dict) -> None:
    gen = info.get("generation_defaults") or {}
    params = info.get("parameters")
    pairs = [
        ("model", info.get("model_id")),
        ("family", info.get("family")),
        ("plugin", info.get("plugin")),
        ("backend", _backend_text(info)),
        ("architecture", info.get("architecture")),
        ("parameters", f"{params:,} ({params / 1e6:.1f} M)" if isinstance(params, int) else params),
        ("dtype", f"{info['dtype']} ({info['dtype_reason']})" if info.get("dtype_reason") else info.get("dtype")),
        ("device", info.get("device")),
        ("context length", info.get("context_length")),
        ("generation defaults", ", ".join(f"{k}={v}" for k, v in gen.items() if k != "context_length")),
        ("chat template", "yes" if info.get("chat_template") else "no (plain User:/Assistant: format)"),
        ("loaded from", info.get("source")),
        ("adapters loaded", info.get("adapters_loaded") or "-"),
        ("active adapter", info.get("active_adapter") or "none (base model)"),
    ]
    if info.get("gguf_file"):
        pairs.insert(-3, ("gguf file", info["gguf_file"]))
    print_pairs(pairs)


def run(args) -> int:
    engine = make_engine(args)
    try:
        info = engine.get_model_info()
    finally:
        engine.cleanup()
    if args.json:
        print_json(info)
    else:
        print_info(info)
    return 0
