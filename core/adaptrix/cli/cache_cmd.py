"""``adaptrix cache [show|clear]``: what adaptrix keeps on disk, by kind, against each kind's budget."""

from __future__ import annotations

COLUMNS = [("kind", "KIND"), ("name", "ENTRY"), ("size", "SIZE"), ("last_used", "LAST USED")]


def register(sub) -> None:
    p = sub.add_parser("cache", help="show or clear adaptrix's on-disk caches (converted models and adapters)")
    csub = p.add_subparsers(dest="cache_command", metavar="SUBCOMMAND")
    sp = csub.add_parser("show", help="entries, sizes, totals and budgets of every cache kind (the default)")
    sp.add_argument("kinds", nargs="*", metavar="KIND", help="only these kinds (default: all)")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.set_defaults(func=run_show)
    cp = csub.add_parser("clear", help="delete the entries of every kind, or of the kinds named")
    cp.add_argument("kinds", nargs="*", metavar="KIND", help="only these kinds (default: all)")
    cp.add_argument("--json", action="store_true", help="machine-readable output")
    cp.set_defaults(func=run_clear)
    p.set_defaults(func=run_show, kinds=[], json=False)


def _kinds(names: list[str]):
    from adaptrix.plugins.host import get_host
    from adaptrix.storage.caches import cache_kinds
    from adaptrix.errors import AdaptrixError

    kinds = cache_kinds(get_host())
    unknown = [n for n in names if n not in kinds]
    if unknown:
        raise AdaptrixError(f"unknown cache kind(s) {', '.join(unknown)}; the kinds are: {', '.join(kinds)}")
    return [kinds[n] for n in names] if names else list(kinds.values())


def _summary(kind, entries) -> dict:
    total = sum(e.bytes for e in entries)
    budget = kind.budget()
    return {
        "kind": kind.name,
        "folder": str(kind.root),
        "summary": kind.summary,
        "entries": [e.as_dict() for e in entries],
        "count": len(entries),
        "total_bytes": total,
        "budget_bytes": budget,
        "budget_source": kind.budget_source() if kind.budget_env or budget is not None else None,
        "over_budget": budget is not None and total > budget,
    }


def run_show(args) -> int:
    from adaptrix.storage.files import human_bytes
    from adaptrix.storage.caches import cache_root, entries

    kinds = [_summary(k, entries(k)) for k in _kinds(args.kinds)]
    total = sum(k["total_bytes"] for k in kinds)
    if args.json:
        from adaptrix.cli.output import print_json

        print_json({"root": str(cache_root()), "kinds": kinds, "total_bytes": total})
        return 0
    from adaptrix.cli.output import print_table

    rows = [{**e, "size": human_bytes(e["bytes"])} for k in kinds for e in k["entries"]]
    print(f"adaptrix cache: {cache_root()} (ADAPTRIX_CACHE to move it)")
    if rows:
        print_table(rows, COLUMNS)
    for k in kinds:
        budget = "no budget" if k["budget_bytes"] is None else f"budget {human_bytes(k['budget_bytes'])}"
        if k["budget_source"]:
            budget += f" ({k['budget_source']})"
        over = ", OVER BUDGET: the next conversion evicts the least recently used" if k["over_budget"] else ""
        print(f"{k['kind']}: {k['count']} entr{'y' if k['count'] == 1 else 'ies'}, {human_bytes(k['total_bytes'])}; "
              f"{budget}{over} — {k['summary']}")
    print(f"total: {human_bytes(total)}")
    return 0


def run_clear(args) -> int:
    from adaptrix.storage.files import human_bytes
    from adaptrix.storage.caches import clear

    done = []
    for kind in _kinds(args.kinds):
        removed = clear(kind)
        done.append({"kind": kind.name, "removed": len(removed), "bytes": sum(e.bytes for e in removed)})
    if args.json:
        from adaptrix.cli.output import print_json

        print_json(done)
        return 0
    for d in done:
        print(f"{d['kind']}: removed {d['removed']} entr{'y' if d['removed'] == 1 else 'ies'}, "
              f"{human_bytes(d['bytes'])}")
    return 0
