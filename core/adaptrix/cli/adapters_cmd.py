"""``adaptrix adapters list|inspect|validate|convert``: LoRA adapters on disk, read without loading the model."""

from __future__ import annotations

from adaptrix.plugins.host import get_host

LIST_COLUMNS = [
    ("name", "NAME"),
    ("base_model", "BASE MODEL"),
    ("base_family", "FAMILY"),
    ("rank", "RANK"),
    ("targets", "TARGETS"),
    ("size", "SIZE"),
    ("compatibility", "COMPATIBILITY"),
]


VALIDATE_BACKEND_HELP = ("the execution backend the model will run on (default: auto); a backend that cannot run "
                         "--model is an error, and the report names the backend chosen")


def register(sub) -> None:
    from adaptrix.cli.generate_cmd import add_backend_arg

    p = sub.add_parser("adapters", help="list, inspect and validate LoRA adapters (no weights loaded)")
    asub = p.add_subparsers(dest="adapters_command", metavar="SUBCOMMAND")

    lp = asub.add_parser("list", help="adapters in a folder: base model, family, rank, targets, size")
    lp.add_argument("--adapters-dir", default="adapters", help="folder of adapter folders (default: ./adapters)")
    lp.add_argument("--model", "-m", help="also check compatibility with this model: Hub id, folder or .gguf "
                    "(config only, no weights)")
    lp.add_argument("--json", action="store_true", help="machine-readable output")
    add_backend_arg(lp, help=VALIDATE_BACKEND_HELP)
    lp.set_defaults(func=run_list)

    ip = asub.add_parser("inspect", help="what an adapter folder holds (config + safetensors header)")
    ip.add_argument("path", metavar="PATH", help="adapter folder, name in --adapters-dir, or Hub id")
    ip.add_argument("--adapters-dir", default="adapters")
    ip.add_argument("--json", action="store_true", help="machine-readable output")
    ip.set_defaults(func=run_inspect)

    vp = asub.add_parser("validate", help="check an adapter against a model; exit code 1 when incompatible")
    vp.add_argument("path", metavar="PATH", help="adapter folder, name in --adapters-dir, or Hub id")
    vp.add_argument("--model", "-m", help="Hub id, model folder or .gguf file (default: the embedded default model)")
    vp.add_argument("--adapters-dir", default="adapters")
    vp.add_argument("--allow-pickle", action="store_true", help="read adapter_model.bin (weights_only=True)")
    vp.add_argument("--json", action="store_true", help="machine-readable output")
    add_backend_arg(vp, help=VALIDATE_BACKEND_HELP)
    vp.set_defaults(func=run_validate)

    cp = asub.add_parser(
        "convert",
        help="convert an adapter between a PEFT folder and another format a plugin provides (e.g. GGUF LoRA)",
        description="Convert SRC into DST, either way: a PEFT adapter folder into a file whose ending names the "
        "format (e.g. .gguf for a GGUF LoRA), or such a file into a PEFT folder. Formats come from the installed "
        "plugins (adaptrix plugins list); an error names the installed ones.",
    )
    cp.add_argument("src", metavar="SRC", help="PEFT adapter folder, or an adapter file (e.g. a GGUF LoRA)")
    cp.add_argument("dst", metavar="DST", help="file to write (e.g. adapter.gguf), or the PEFT folder to write")
    cp.add_argument("--base", metavar="FILE", help="the base model file the adapter belongs to (e.g. its .gguf; "
                    "default: the embedded SmolLM2-135M-Instruct for PEFT -> file)")
    cp.add_argument("--dtype", choices=("f32", "f16"), help="tensor type of a written file (default: f32)")
    cp.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    cp.add_argument("--json", action="store_true", help="machine-readable output")
    cp.set_defaults(func=run_convert)
    p.set_defaults(func=lambda args: p.print_help())


def _row(info) -> dict:
    from adaptrix.storage.files import human_bytes

    return {
        "name": info.name,
        "base_model": info.base_model,
        "base_family": info.base_family,
        "rank": info.rank,
        "targets": info.targets_text,
        "size": human_bytes(info.tensor_bytes) if info.tensor_count is not None or info.weights_format else "absent",
    }


def _model_index(model: str | None, backend: str | None = None):
    """``(ModelSource, (ModuleIndex, family), Choice)``: the model resolved once, its modules from the config
    alone, and the backend that would run it (a backend that cannot is an error here, before any validation)."""
    from adaptrix.adapters.validate import index_for_model
    from adaptrix.backends.choice import choose_backend
    from adaptrix.models.source import resolve_source

    host = get_host()
    src = resolve_source(model, progress=False, host=host)
    choice = choose_backend(src, backend, host)
    return src, index_for_model(src, host=host), choice


def _backend_fields(choice) -> dict:
    return {"backend": choice.name, "backend_reason": choice.reason}


def _adapters_root(adapters_dir: str):
    from pathlib import Path

    from adaptrix.errors import AdapterNotFoundError

    root = Path(adapters_dir).expanduser()
    if not root.is_dir():
        what = "is a file" if root.exists() else "does not exist"
        raise AdapterNotFoundError(
            f"--adapters-dir {adapters_dir} {what}; pass the folder that holds your adapter folders"
        )
    return root


def run_list(args) -> int:
    from adaptrix.adapters.info import read_adapter_info
    from adaptrix.adapters.sources import available_adapters
    from adaptrix.adapters.validate import CompatibilityReport, validate_for_model
    from adaptrix.errors import AdaptrixError

    found = available_adapters(_adapters_root(args.adapters_dir))
    src, index, choice = _model_index(args.model, args.backend) if args.model else (None, None, None)
    rows, full = [], []
    for name, folder in found.items():
        # One broken adapter is a row with its error, never the end of the listing.
        try:
            info = read_adapter_info(folder, name, host=get_host())
            row = _row(info)
        except AdaptrixError as exc:
            row, info = {"name": name, "error": str(exc)}, None
        if index is not None:
            try:
                report = (
                    validate_for_model(str(folder), src.base_model_id, index=index, host=get_host())
                    if info is not None
                    else CompatibilityReport(name, src.base_model_id, errors=(row["error"],))
                )
            except AdaptrixError as exc:
                report = CompatibilityReport(name, src.base_model_id, errors=(str(exc),))
            row["compatibility"] = report.summary()
            row["report"] = {**report.as_dict(), **_backend_fields(choice)}
        rows.append(row)
        full.append({**(info.as_dict() if info is not None else {}), **row})
    if args.json:
        from adaptrix.cli.output import print_json

        print_json(full)
        return 0
    if not rows:
        print(f"no adapters in {args.adapters_dir} (each is a folder holding adapter_config.json)")
        return 0
    from adaptrix.cli.output import print_table

    columns = LIST_COLUMNS if index is not None else LIST_COLUMNS[:-1]
    print_table([{**r, "size": r.get("size", "unreadable")} for r in rows], columns)
    if choice is not None:
        print(f"compatibility with {src.model_id} on backend {choice.name} ({choice.reason})")
    for r in rows:
        if r.get("error"):
            print(f"error: {r['name']}: {r['error']}")
    return 0


def run_inspect(args) -> int:
    from adaptrix.adapters.info import read_adapter_info
    from adaptrix.storage.files import human_bytes
    from adaptrix.adapters.sources import resolve_adapter

    name, folder = resolve_adapter(args.path, args.adapters_dir)
    info = read_adapter_info(folder, name, host=get_host())
    if args.json:
        from adaptrix.cli.output import print_json

        d = info.as_dict()
        d["tensor_shapes"] = {t.name: list(t.shape) for t in info.tensors}
        print_json(d)
        return 0
    from adaptrix.cli.output import print_pairs

    if info.tensor_count is None and info.weights_format is None:
        tensors = "absent (config only: no adapter_model.safetensors)"
    elif info.weights_format == "pickle":
        tensors = f"pickle {info.weights_file} (not read: it can run code)"
    else:
        tensors = f"{info.tensor_count} ({human_bytes(info.tensor_bytes)})"
    print_pairs(
        [
            ("name", info.name),
            ("path", info.path),
            ("peft type", info.peft_type),
            ("rank", info.rank),
            ("alpha", info.alpha),
            ("targets", info.targets_text),
            ("modules_to_save", list(info.modules_to_save)),
            ("base model", info.base_model),
            ("base family", f"{info.base_family} (from {info.family_source})" if info.base_family else None),
            ("tensors", tensors),
            ("task type", info.task_type),
            ("description", info.description),
            ("tags", list(info.tags)),
        ]
    )
    return 0


def run_validate(args) -> int:
    from adaptrix.adapters.sources import resolve_adapter
    from adaptrix.adapters.validate import validate_for_model

    resolve_adapter(args.path, args.adapters_dir)  # a missing adapter fails before the model is read
    src, index, choice = _model_index(args.model, args.backend)
    report = validate_for_model(
        args.path, src.base_model_id, adapters_dir=args.adapters_dir, allow_pickle=args.allow_pickle, index=index,
        host=get_host(),
    )
    if args.json:
        from adaptrix.cli.output import print_json

        print_json({**report.as_dict(), **_backend_fields(choice)})
    else:
        print(f"{report.adapter}: {report.summary()} with {src.model_id} (backend {choice.name}: {choice.reason})")
        for e in report.errors:
            print(f"error: {e}")
        for w in report.warnings:
            print(f"warning: {w}")
    return 0 if report.ok else 1


def run_convert(args) -> int:
    import sys

    from adaptrix.adapters.convert import convert_adapter

    done = convert_adapter(
        args.src, args.dst, base=args.base, dtype=args.dtype, overwrite=args.overwrite,
        progress=sys.stderr.isatty() and not args.json, host=get_host(),
    )
    if args.json:
        from adaptrix.cli.output import print_json

        print_json(done.as_dict())
    else:
        against = f" for {done.base}" if done.base else ""
        print(f"converted {done.source} ({done.from_format}) -> {done.destination} ({done.to_format}){against}")
    return 0
