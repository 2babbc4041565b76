"""``rankspec selftest``: reference vs recorded vectors and the delta=0 theorem."""

NAME = "selftest"
HELP = "check the reference against the authors' recorded outputs and the delta=0 theorem"
ORDER = 10


def add_arguments(p):
    p.add_argument("--theorem-cases", type=int, default=40, help="random problems for the theorem check")
    p.add_argument("--seed", type=int, default=0)


def run(args) -> int:
    from ._common import UsageError
    from ..selftest import format_rows, run_selftest

    if args.theorem_cases < 1:
        raise UsageError("--theorem-cases must be >= 1")
    rows = run_selftest(args.theorem_cases, args.seed)
    print("rankspec selftest: reference (float64) vs official-v1.npz (authors' code, float32) and BRL Sec. 3.4")
    print("  and official-v2.npz (the DR, APE and aLRP authors' code, float32; default options)")  # v2 section
    print(format_rows(rows))
    ok = all(r.ok for r in rows)
    print("selftest passed" if ok else "selftest FAILED")
    return 0 if ok else 1
