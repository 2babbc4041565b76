"""``rankspec equations``: the equation registry as a table."""

import json

NAME = "equations"
HELP = "list every registered paper equation and the function implementing it"
ORDER = 20


def add_arguments(p):
    from rankspec.refimpl.registry import PAPERS

    p.add_argument("--paper", metavar="KEY",
                   help=f"only equations of this paper (case-insensitive: {', '.join(PAPERS)})")
    p.add_argument("--format", choices=("text", "json"), default="text")


def run(args) -> int:
    from rankspec.refimpl.registry import PAPERS, entries, format_table

    from ._common import UsageError
    from ._suggest import did_you_mean, match_casefold

    items = entries()
    if args.paper is not None:
        key = match_casefold(args.paper, PAPERS)
        if key is None:
            raise UsageError(f"--paper: unknown paper key {args.paper!r}{did_you_mean(args.paper, PAPERS)} "
                             f"(choose from {', '.join(PAPERS)}; case does not matter)")
        items = [e for e in items if key in e.papers]
    if args.format == "json":
        print(json.dumps([{"function": e.qualname, "name": e.name, "family": e.family, "kind": e.kind,
                           "refs": [list(r) for r in e.refs]} for e in items], indent=2))
    else:
        if args.paper is not None:
            print(f"{len(items)} function(s) implementing equations of {key}: {PAPERS[key]}\n")
        print(format_table(items))
    return 0
