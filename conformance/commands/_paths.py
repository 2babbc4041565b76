"""Validate output paths *before* a command does any work.

A bad ``--output`` must cost the user nothing: each command calls :func:`check_output_file` or
:func:`check_output_dir` on its output options first, so a typo in a path is reported in one line
(``error: cannot write to ...``, exit code 2) instead of as a traceback after minutes of work.

Both functions only look at the file system (``os.stat`` / ``os.access``); they create nothing.
A race (the directory removed between the check and the write) is still possible and is reported
by the command's own write, but no longer the common case of a mistyped path.
"""

from __future__ import annotations

import os
from typing import Optional

from ._errors import UsageError

__all__ = ["check_output_file", "check_output_dir"]


def _nearest_existing(path: str) -> str:
    """The longest prefix of absolute ``path`` that exists (``/`` at worst)."""
    current = path
    while not os.path.exists(current):
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    return current


def _fail(path, option: str, why: str) -> UsageError:
    return UsageError(f"cannot write to {str(path)!r} ({option}): {why}")


def check_output_file(path, option: str = "--output") -> Optional[str]:
    """Check that ``path`` can be written as a file; return it unchanged (``None`` passes through).

    Rules: ``path`` is not an existing directory; its parent directory exists and is a directory;
    the parent is writable (and ``path`` itself, if it already exists). Raises
    :class:`~rankspec.conformance.commands._common.UsageError` naming ``option`` and the fix.
    """
    if path is None:
        return None
    text = os.fspath(path)
    if text == "":
        raise _fail(text, option, "the path is empty; give a file name")
    full = os.path.abspath(os.path.expanduser(text))
    if os.path.isdir(full):
        raise _fail(text, option, f"it is a directory; give a file path such as {os.path.join(text, 'report.txt')!r}")
    parent = os.path.dirname(full)
    if not os.path.exists(parent):
        raise _fail(text, option, f"directory {parent!r} does not exist; create it first (mkdir -p) "
                                  f"or choose another {option}")
    if not os.path.isdir(parent):
        raise _fail(text, option, f"{parent!r} is a file, not a directory; choose another {option}")
    if os.path.exists(full):
        if not os.access(full, os.W_OK):
            raise _fail(text, option, f"the file exists and is not writable; choose another {option}")
    elif not os.access(parent, os.W_OK | os.X_OK):
        raise _fail(text, option, f"directory {parent!r} is not writable; choose another {option}")
    return path


def check_output_dir(path, option: str = "--output") -> Optional[str]:
    """Check that ``path`` is, or can be created as, a writable directory; return it unchanged.

    Rules: ``path`` is not an existing file; if it exists it is a writable directory; if not, the
    nearest existing ancestor is a writable directory (so ``os.makedirs`` will succeed) and no
    component on the way is a file. Creates nothing. ``None`` passes through.
    """
    if path is None:
        return None
    text = os.fspath(path)
    if text == "":
        raise _fail(text, option, "the path is empty; give a directory name")
    full = os.path.abspath(os.path.expanduser(text))
    if os.path.exists(full):
        if not os.path.isdir(full):
            raise _fail(text, option, f"it is a file; {option} takes a directory (it is created if missing)")
        if not os.access(full, os.W_OK | os.X_OK):
            raise _fail(text, option, f"the directory is not writable; choose another {option}")
        return path
    ancestor = _nearest_existing(full)
    if not os.path.isdir(ancestor):
        raise _fail(text, option, f"{ancestor!r} is a file, so the directory cannot be created; "
                                  f"choose another {option}")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise _fail(text, option, f"directory {ancestor!r} is not writable, so {text!r} cannot be created; "
                                  f"choose another {option}")
    return path
