"""Progress bars of the long runs (``check``, ``check-head``, ``bench``, ``demo``), drawn by tqdm.

:class:`Progress` is the small interface the harness, the head check, the benchmark and the demo
call (``advance``, ``set_label``, ``add_total``, ``write``, ``close``); tqdm does the drawing, so a
bar behaves on terminals, in CI logs and in Jupyter notebooks:

* ``enabled=None`` (the CLI default) draws only when the stream is a terminal, or in a Jupyter
  kernel (``tqdm.auto``'s widget where ipywidgets is installed, text otherwise);
* a bar forced onto a non-terminal (``--progress`` into a log file) redraws at most every few
  seconds instead of ten times a second, so logs stay readable;
* nothing is drawn during the first ``delay`` seconds, so quick runs stay silent;
* :meth:`Progress.write` prints a line above the bar, and :func:`logging` records emitted while a
  bar is open go through tqdm too (``tqdm.contrib.logging``), so neither tears the bar.

The bar is closed with ``leave=False``: it disappears when done and leaves only the command's output.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Optional

__all__ = ["Progress", "in_notebook"]


def in_notebook() -> bool:
    """True inside a Jupyter (IPython kernel) session."""
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    try:
        ip = shell.get_ipython()  # type: ignore[attr-defined]
    except Exception:  # pragma: no cover - exotic IPython
        return False
    return ip is not None and "IPKernelApp" in getattr(ip, "config", {})


class Progress:
    """``Progress(total)``; call :meth:`advance` per unit of work and :meth:`close` at the end.

    ``stream``: where to draw (default stderr). ``enabled``: ``True`` always, ``False`` never,
    ``None`` only on a terminal or in a notebook. ``delay``: seconds before the first drawing.
    Keeps ``done`` / ``total`` / ``label`` itself, so callers can read them whether or not a bar
    is drawn. O(1) per call; tqdm throttles the redraws.
    """

    def __init__(self, total: int, *, stream=None, enabled: Optional[bool] = None, delay: float = 1.0,
                 width: Optional[int] = None, unit: str = "it", desc: str = ""):
        self.stream = sys.stderr if stream is None else stream
        notebook = stream is None and in_notebook()
        is_tty = bool(getattr(self.stream, "isatty", lambda: False)())
        if enabled is None:
            enabled = is_tty or notebook
        self.enabled = bool(enabled)
        self.total = max(int(total), 1)
        self.done = 0
        self.label = ""
        self.delay = float(delay)
        self._bar = None
        self._log_ctx = None
        if not self.enabled:
            return
        if notebook:
            from tqdm.auto import tqdm
        else:
            from tqdm import tqdm
        mininterval = 0.1 if (is_tty or notebook) else 5.0
        if self.delay > 0:
            mininterval = min(mininterval, self.delay)
        self._bar = tqdm(total=self.total, file=None if notebook else self.stream, delay=self.delay,
                         mininterval=mininterval, miniters=1, leave=False, unit=unit,
                         desc=f"{desc}: " if desc else None, ascii=not (is_tty or notebook),
                         ncols=None if (is_tty or notebook) else 100, dynamic_ncols=is_tty,
                         bar_format="{desc}{percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} "
                                    "[{elapsed}<{remaining}{postfix}]")
        try:  # route logging records above the bar while it is open
            from tqdm.contrib.logging import logging_redirect_tqdm

            self._log_ctx = logging_redirect_tqdm(tqdm_class=type(self._bar))
            self._log_ctx.__enter__()
        except Exception:  # pragma: no cover - logging redirection is a nicety
            self._log_ctx = None

    def add_total(self, n: int) -> None:
        self.total += max(int(n), 0)
        if self._bar is not None:
            self._bar.total = self.total
            self._bar.refresh()

    def advance(self, n: int = 1, label: Optional[str] = None) -> None:
        n = max(0, min(int(n), self.total - self.done))
        self.done += n
        if label is not None:
            self.set_label(label, refresh=False)
        if self._bar is not None:
            self._bar.update(n)

    def set_label(self, label: str, refresh: bool = True) -> None:
        self.label = label
        if self._bar is not None:
            self._bar.set_postfix_str(label, refresh=refresh)

    def write(self, text: str, file=None) -> None:
        """Print ``text`` (default: to stdout) without tearing the bar."""
        target = sys.stdout if file is None else file
        if self._bar is not None:
            from tqdm import tqdm

            tqdm.write(text, file=target)
        else:
            print(text, file=target, flush=True)

    def close(self) -> None:
        if self._log_ctx is not None:
            with contextlib.suppress(Exception):
                self._log_ctx.__exit__(None, None, None)
            self._log_ctx = None
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
