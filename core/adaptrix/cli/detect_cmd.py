"""``adaptrix detect MODEL``: family, plugin and defaults, from config.json alone."""

from __future__ import annotations

from adaptrix.cli.output import print_json, print_pairs
from adaptrix.models.source import resolve_source
from adaptrix.plugins.detection import detect
from adaptrix.plugins.host import get_host


def register(sub) -> None:
    p = sub.add_parser(
        "detect",
        help="detect a model's family from its config (no weights loaded)",
        description="MODEL is a Hub id, a local model folder, a config.json file or a .gguf file; "
        "without it, the embedded default model (SmolLM2-135M-Instruct).",
    )
    p.add_argument("model", metavar="MODEL", nargs="?")
    p.add_argument("--revision", help="Hub revision (branch, tag or commit)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args) -> int:
    host = get_host()
    src = resolve_source(args.model, revision=args.revision, progress=False, host=host)
    d = detect(src.model_id, config=src.config, source=src.config_source, host=host)
    if args.json:
        print_json(d.as_dict())
        return 0

    gen = ", ".join(f"{k}={v}" for k, v in d.generation.as_dict().items() if k != "context_length")
    print_pairs(
        [
            ("model", d.model_id),
            ("family", d.family),
            ("plugin", d.plugin),
            ("model_type", d.model_type),
            ("architecture", d.architecture),
            ("context length", d.context_length),
            ("generation", gen),
            ("LoRA targets", list(d.target_modules)),
            ("config", d.config_source),
            ("from core", ", ".join(d.fallback_hooks) or "-"),
        ]
    )
    for w in d.warnings:
        print(f"warning: {w}")
    return 0
