"""``adaptrix plugins list``: what is installed and whether it works."""

from __future__ import annotations

from adaptrix.backends.choice import backend_records
from adaptrix.cli.output import print_json, print_table
from adaptrix.plugins.host import PluginHost, PluginWarning

COLUMNS = [
    ("name", "PLUGIN"),
    ("distribution", "DISTRIBUTION"),
    ("version", "VERSION"),
    ("entry_point", "ENTRY POINT"),
    ("families", "FAMILIES"),
    ("hooks", "HOOKS"),
    ("fallback_hooks", "FROM CORE"),
    ("status", "STATUS"),
    ("error", "ERROR"),
]
BACKEND_COLUMNS = [
    ("name", "BACKEND"),
    ("plugin", "FROM"),
    ("status", "STATUS"),
    ("summary", "WHAT IT RUNS"),
    ("error", "ERROR"),
]


def register(sub) -> None:
    p = sub.add_parser(
        "plugins",
        help="inspect installed plugins",
        description="FROM CORE lists the family hooks a plugin leaves out, answered by adaptrix's "
        "standard behaviour (shared loader, global defaults, all-linear targets).",
    )
    psub = p.add_subparsers(dest="plugins_command", metavar="SUBCOMMAND")
    lp = psub.add_parser("list", help="list every plugin found, with its status and error")
    lp.add_argument("--json", action="store_true", help="machine-readable output")
    lp.set_defaults(func=run_list)
    p.set_defaults(func=lambda args: p.print_help())


def run_list(args) -> int:
    import warnings


    host = PluginHost()
    with warnings.catch_warnings():
        # Failures are shown in the table itself; no need to repeat them on stderr.
        warnings.simplefilter("ignore", PluginWarning)
        host.load_entry_points()
    records = host.records()

    backends = [b.as_dict() for b in backend_records(host)]
    if args.json:
        print_json({"plugins": [r.as_dict() for r in records], "families": host.families(), "backends": backends})
        return 0

    if not records:
        print("no adaptrix plugins installed; try: pip install adaptrix-generic")
        return 0
    print_table([r.as_dict() for r in records], COLUMNS)
    conflicts = sorted({c for r in records for c in r.conflicts})
    for note in conflicts:
        print(f"conflict: {note}")
    print()
    print_table(backends, BACKEND_COLUMNS)
    return 0
