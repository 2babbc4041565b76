"""The ``rankspec`` command line.

Sub-commands live in :mod:`rankspec.conformance.commands`, one module each,
exposing ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``.
They are discovered here, so adding a command never touches this file.

Exit codes (all commands): 0 success / conformant, 1 failure / nonconformant,
2 usage error (reported before any work), 3 results written but the plot failed
(``bench``, ``demo``), 130 interrupted.

User mistakes never print a traceback: every one is a single ``rankspec CMD: error: ...`` line on
stderr and exit code 2, with a "did you mean" for mistyped commands and choices
(:class:`ArgumentParser`, :func:`~rankspec.conformance.commands._suggest.suggest`).
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from typing import List, Optional

from . import commands as _commands_pkg
from .commands._common import UsageError
from .commands._suggest import did_you_mean, suggest

__all__ = ["main", "build_parser", "ArgumentParser", "UsageError", "suggest", "EXIT_OK", "EXIT_FAIL",
           "EXIT_USAGE", "EXIT_PLOT", "EXIT_INTERRUPTED"]

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_PLOT, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

EPILOG = """\
exit codes:
  0    success / conformant
  1    failure / nonconformant
  2    usage error: one 'error:' line on stderr, reported before any work
  3    bench / demo: results (JSON, text) written, but the plot could not be
  130  interrupted (Ctrl-C)

run 'rankspec COMMAND --help' for a command's options and examples."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the CLI's error style: one line ``PROG: error: MESSAGE (see 'PROG --help')``
    and exit code 2 instead of a usage block; invalid choices (commands included) get a "did you
    mean". Sub-parsers are of this class too (argparse creates them with the parent's class)."""

    def _check_value(self, action, value):
        choices = action.choices
        if choices is None or value in choices:
            return
        names = [str(c) for c in choices]
        hint = did_you_mean(value, names)
        if isinstance(action, argparse._SubParsersAction):
            raise argparse.ArgumentError(None, f"unknown command {value!r}{hint} "
                                               f"(commands: {', '.join(names)})")
        raise argparse.ArgumentError(action, f"invalid choice {value!r}{hint} (choose from {', '.join(names)})")

    def error(self, message):
        line = " ".join(str(message).split())
        self.exit(EXIT_USAGE, f"{self.prog}: error: {line} (see '{self.prog} --help')\n")


class _BrokenCommand:
    """Stands in for a command module that failed to import, so the other commands keep working."""

    ORDER = 99

    def __init__(self, name: str, error: BaseException):
        self.NAME = name
        self.HELP = f"(unavailable: {type(error).__name__}: {error})"
        self._error = error

    def add_arguments(self, parser):
        parser.add_argument("rest", nargs=argparse.REMAINDER)

    def run(self, args) -> int:
        print(f"rankspec {self.NAME}: error: this command could not be loaded: "
              f"{type(self._error).__name__}: {self._error}", file=sys.stderr)
        return EXIT_FAIL


def _command_modules():
    mods = []
    for info in sorted(pkgutil.iter_modules(_commands_pkg.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        try:
            mods.append(importlib.import_module(f"{_commands_pkg.__name__}.{info.name}"))
        except Exception as exc:  # e.g. an optional dependency missing for one command
            mods.append(_BrokenCommand(info.name, exc))
    return sorted(mods, key=lambda m: getattr(m, "ORDER", 50))


def build_parser() -> argparse.ArgumentParser:
    from rankspec.refimpl import __version__

    parser = ArgumentParser(
        prog="rankspec",
        description="Ground truth for ranking-based detection losses and a conformance checker.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"rankspec {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in _command_modules():
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=getattr(mod, "DESCRIPTION", mod.HELP))
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``rankspec`` console script; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    if not getattr(args, "_run", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args._run(args))
    except UsageError as exc:
        print(f"rankspec {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # output piped into e.g. `head`
        sys.stderr.close()
        return EXIT_OK
    except KeyboardInterrupt:
        print(f"\nrankspec {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
