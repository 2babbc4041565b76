"""Running a target in a worker process: the target never runs in the harness's process.

A check calls the implementation under test - code nobody here wrote - thousands of times.  Run in the
harness's own process, such code could end the check with a green exit code (``sys.exit(0)``,
``os._exit(0)``), kill it before the report is written (a segfault), hang it forever, or monkeypatch the
comparison that judges it.  :class:`Worker` runs targets in a separate Python process instead:

* the worker imports the target itself (so code run at import time runs there), detects its call convention
  (:func:`~._targets.make_target`, whose probe call runs there too), runs the calls and converts every output
  and gradient to NumPy; what comes back is an :class:`~._targets.Outcome` (or the failure), pickled over a
  pipe.  The reference, the comparison and the verdict stay in the harness's process, out of the target's
  reach: a target that patches ``rankspec.conformance._compare`` only patches its worker's copy;
* every call has a time limit (``call_timeout``, default :data:`DEFAULT_CALL_TIMEOUT` seconds).  A call that
  runs over it kills the worker, is reported as that case's failure, and the target is not called again
  (the remaining calls fail at once with a note): a hanging target costs one time-out, not one per case;
* ``SystemExit``, ``KeyboardInterrupt`` and any other exception of the target are that case's failure; a
  worker that dies (``os._exit``, a segfault, the out-of-memory killer) is too - it is restarted for the next
  call, at most :data:`MAX_RESTARTS` times per target;
* the worker's file descriptors 1 and 2 go to a temporary file, so whatever the target prints can never
  corrupt the report (e.g. JSON on stdout); the file's last lines are quoted when the worker dies.

One worker process serves every target of a check (they run one after another), so torch is imported once;
the cost per call is pickling the case and the outcome (microseconds to a millisecond for 10^5 elements).

Protocol (parent -> worker, each message a pickled tuple on a pipe): ``("init", sys_path, cwd)``,
``("make", key, target, spec, options)`` -> ``("ok", detached Target)`` | ``("usage", error class, message)``
| ``("fail", kind, message)``; ``("make-head", key, target, head, name)`` (a detector head's loss function,
:mod:`~.heads`) -> the same answers with a detached ``HeadTarget``; ``("run", key, case)`` -> ``("ok", Outcome)``
| ``("fail", kind, message)`` (for a head target ``case`` is ``(HeadCase, loss, scope, loss_options, device)``
and the outcome a ``HeadOutcome``).
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from typing import Dict, Optional

__all__ = ["Worker", "WorkerRunner", "DEFAULT_CALL_TIMEOUT", "MAX_RESTARTS", "WorkerCrashed", "picklable"]

#: default time limit of one call of the target, in seconds (generous: a slow port on a 10^5-element input)
DEFAULT_CALL_TIMEOUT = 60.0
#: a target whose worker died this many times is not called again
MAX_RESTARTS = 3
#: extra seconds allowed for importing the target (and torch) before its first call
IMPORT_SECONDS = 120.0


class WorkerCrashed(Exception):
    """The worker process died or ran over its time limit (``kind``: ``crash`` / ``timeout``)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind, self.message = kind, message


def picklable(obj) -> bool:
    """Whether ``obj`` can be sent to a worker: it pickles (a module-level function or class, an instance of
    one, ...) and its module can be imported by name there (not ``__main__``, not a file loaded by path)."""
    try:
        pickle.dumps(obj)
    except Exception:
        return False
    for holder in (obj, type(obj)):
        module = getattr(holder, "__module__", None)
        if holder is type(obj) and module == "builtins":
            continue
        if not module or module == "__main__" or module.startswith("_rankspec_target_"):
            return False
        mod = sys.modules.get(module)
        if mod is None or getattr(mod, "__spec__", None) is None:
            return False
    return True


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except (ValueError, AttributeError):
        return f"signal {-code}"


class Worker:
    """A worker process running targets (module docstring).  Start lazily; :meth:`close` ends it."""

    def __init__(self):
        self.proc: Optional[subprocess.Popen] = None
        self._send = self._recv = None
        self._log = None
        self.made: Dict[object, tuple] = {}  #: key -> its "make" message (to make it again after a restart)
        self.registered: set = set()  #: keys made in the current process

    # -- process -------------------------------------------------------------------------------------
    def start(self) -> None:
        from multiprocessing.connection import Connection

        self.close()
        req_r, req_w = os.pipe()
        resp_r, resp_w = os.pipe()
        self._log = tempfile.TemporaryFile(prefix="rankspec-worker-")
        code = "from rankspec.conformance._worker import _main; _main(%d, %d)" % (req_r, resp_w)
        env = dict(os.environ)
        env.setdefault("PYTHONFAULTHANDLER", "1")
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads sleep instead of spinning
        try:
            # its own session: Ctrl-C in the terminal is the harness's to handle, and close() ends the worker
            # together with any process the target started
            self.proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.DEVNULL, stdout=self._log,
                                         stderr=self._log, pass_fds=(req_r, resp_w), env=env, close_fds=True,
                                         start_new_session=True)
        finally:
            os.close(req_r)
            os.close(resp_w)
        self._send = Connection(req_w, readable=False)
        self._recv = Connection(resp_r, writable=False)
        self.registered = set()
        self._send.send(("init", list(sys.path), os.getcwd()))

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def close(self) -> None:
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)  # the worker's session: it and what it started
            except (ProcessLookupError, PermissionError, OSError):
                pass
            if self.proc.poll() is None:
                self.proc.kill()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:  # pragma: no cover
                pass
        for c in (self._send, self._recv):
            if c is not None:
                try:
                    c.close()
                except OSError:
                    pass
        if self._log is not None:
            self._log.close()
        self.proc = self._send = self._recv = self._log = None
        self.registered = set()

    def __del__(self):  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass

    def output_tail(self, lines: int = 6) -> str:
        """The last lines the worker (the target) wrote to stdout / stderr."""
        if self._log is None:
            return ""
        try:
            self._log.flush()
            self._log.seek(0, os.SEEK_END)
            size = self._log.tell()
            self._log.seek(max(0, size - 4000))
            text = self._log.read().decode("utf-8", "replace")
        except (OSError, ValueError):
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    def _died(self, what: str) -> WorkerCrashed:
        try:
            code = self.proc.wait(timeout=5)
        except Exception:
            code = None
        if code is None:
            how = "stopped answering"
        elif code < 0:
            how = f"was killed by {_signal_name(code)}" + (" (a segmentation fault)" if code == -signal.SIGSEGV else "")
        else:
            how = f"exited with status {code} (os._exit / a crash)"
        tail = self.output_tail()
        msg = f"the target's worker process {how} {what}"
        if tail:
            msg += "; its last output: " + " | ".join(tail.splitlines())[-600:]
        self.close()
        return WorkerCrashed("crash", msg)

    def request(self, message, timeout: float, what: str):
        """Send ``message`` and wait up to ``timeout`` seconds for the answer (raises :class:`WorkerCrashed`)."""
        if not self.alive:
            self.start()
        try:
            self._send.send(message)
        except (OSError, ValueError):
            raise self._died(what) from None
        return self.wait(timeout, what)

    def wait(self, timeout: float, what: str):
        """The worker's next message, waiting up to ``timeout`` seconds (raises :class:`WorkerCrashed`)."""
        deadline = time.monotonic() + timeout
        ready = False
        while True:
            try:
                ready = self._recv.poll(max(0.0, min(1.0, deadline - time.monotonic())))
            except (OSError, ValueError):
                raise self._died(what) from None
            if ready or time.monotonic() >= deadline:
                break
            if self.proc.poll() is not None and not self._recv.poll(0):
                # dead, though a process it started may still hold the pipe open
                raise self._died(what)
        if not ready:
            self.close()
            raise WorkerCrashed("timeout", f"the target did not return within {timeout:g} s {what} "
                                           "(time limit: call_timeout= / --call-timeout); its worker was stopped")
        try:
            return self._recv.recv()
        except Exception:  # EOF (the worker died) or a garbled message (the target wrote into the pipe)
            raise self._died(what) from None

    # -- targets -------------------------------------------------------------------------------------
    def make(self, key, target, spec, options: dict, call_timeout: float):
        """Resolve and detect ``target`` for ``spec`` in the worker; returns a detached :class:`Target`.

        Raises :class:`TargetError` / :class:`TargetSignatureError` as :func:`make_target` does, and
        :class:`WorkerCrashed` when the target's import or probe kills, exits or hangs the worker.
        """
        message = ("make", key, target, spec, options)
        self.made[key] = message
        return self._make(key, message, call_timeout)

    def make_head(self, key, target, head: str, name, call_timeout: float):
        """Resolve ``target`` as a head target of pipeline ``head`` in the worker (:mod:`~.heads`,
        :func:`~.heads.make_head_target`); returns the detached :class:`~.heads.HeadTarget`.  Its ``run``
        requests take ``(case, loss, scope, loss_options, device)`` and answer a :class:`~.heads.HeadOutcome`.
        Raises as :meth:`make`."""
        message = ("make-head", key, target, head, name)
        self.made[key] = message
        return self._make(key, message, call_timeout)

    def _make(self, key, message, call_timeout: float):
        from ._targets import TargetError, TargetSignatureError

        reply = self.request(message, IMPORT_SECONDS + call_timeout, "while importing the target")
        if reply[0] == "imported":  # the import is done: the probe calls have the call's time limit
            reply = self.wait(3 * call_timeout, "while probing the target's call convention")
        if reply[0] == "ok":
            self.registered.add(key)
            return reply[1]
        if reply[0] == "usage":
            cls = TargetSignatureError if reply[1] == "TargetSignatureError" else TargetError
            raise cls(reply[2])
        raise WorkerCrashed(reply[1], reply[2])

    def run(self, key, case, call_timeout: float):
        """The target's :class:`Outcome` on ``case`` (raises TargetFailure or :class:`WorkerCrashed`)."""
        return self.submit(key, case, call_timeout)()

    def submit(self, key, case, call_timeout: float):
        """Send ``case`` to the worker; returns a function that waits for the outcome (as :meth:`run`), so the
        harness computes the reference while the worker runs the target."""
        from ._targets import TargetFailure

        if key not in self.registered or not self.alive:
            if not self.alive:
                self.start()
            self._make(key, self.made[key], call_timeout)
        what = "while running this case"
        try:
            self._send.send(("run", key, case))
        except (OSError, ValueError):
            raise self._died(what) from None

        def wait():
            reply = self.wait(call_timeout, what)
            if reply[0] == "ok":
                return reply[1]
            raise TargetFailure(reply[1], reply[2])

        return wait


class WorkerRunner:
    """The :class:`~._evaluate.Evaluator` runner of one target in a :class:`Worker` (the ``runner=`` seam).

    After a time-out, or after the worker died :data:`MAX_RESTARTS` times, the target is not called again:
    later calls fail at once (kind ``not-run``) and :attr:`stopped` says why.
    """

    def __init__(self, worker: Worker, key, call_timeout: float):
        self.worker, self.key, self.call_timeout = worker, key, call_timeout
        self.stopped: Optional[str] = None
        self.crashes = 0

    def __call__(self, case):
        return self.submit(case)()

    def submit(self, case):
        """Start the call on ``case``; returns a function that waits for its outcome (raises TargetFailure)."""
        from ._targets import TargetFailure

        if self.stopped:
            raise TargetFailure("not-run", f"not run: {self.stopped}")
        try:
            wait = self.worker.submit(self.key, case, self.call_timeout)
        except WorkerCrashed as exc:
            raise self._failure(exc) from None

        def result():
            try:
                return wait()
            except WorkerCrashed as exc:
                raise self._failure(exc) from None

        return result

    def _failure(self, exc: WorkerCrashed):
        from ._targets import TargetFailure

        if exc.kind == "timeout":
            self.stopped = "the target ran over its time limit earlier, so it is not called again"
        else:
            self.crashes += 1
            if self.crashes >= MAX_RESTARTS:
                self.stopped = f"the target's worker died {self.crashes} times, so it is not called again"
        return TargetFailure(exc.kind, exc.message)


# ----------------------------------------------------------------------------------------------------
# the worker process
# ----------------------------------------------------------------------------------------------------

def _describe_exit(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"the target called sys.exit({exc.code!r}) (SystemExit)"
    return f"the target raised {type(exc).__name__}: {exc}".rstrip(": ")


def _main(req_fd: int, resp_fd: int) -> None:  # pragma: no cover - runs in the worker process
    from multiprocessing.connection import Connection

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the harness's to handle (it stops the worker)
    recv = Connection(req_fd, writable=False)
    send = Connection(resp_fd, readable=False)
    try:
        import faulthandler

        faulthandler.enable(file=sys.stderr)
    except Exception:
        pass
    try:  # most targets are torch code: import it once, before the first case
        import torch

        # one intra-op thread: the harness computes the reference at the same time (Evaluator.evaluate), and
        # torch's spinning thread pool would take the CPU it needs (the check's inputs are small enough)
        torch.set_num_threads(1)
    except Exception:
        pass
    from ._targets import Target, TargetError, TargetFailure, TargetSignatureError, make_target, resolve
    from .specs import get_spec

    targets: Dict[object, Target] = {}
    while True:
        try:
            msg = recv.recv()
        except (EOFError, OSError):
            os._exit(0)
        except Exception as exc:  # a request that does not unpickle here (e.g. a target defined in __main__)
            send.send(("fail", "worker-error", f"the target could not be loaded in the worker process: "
                                               f"{type(exc).__name__}: {exc}"[:400]))
            continue
        op = msg[0]
        try:
            if op == "init":
                sys.path[:] = [p for p in msg[1]]
                try:
                    os.chdir(msg[2])
                except OSError:
                    pass
                continue
            if op == "make":
                _, key, target, spec, options = msg
                spec = get_spec(spec) if isinstance(spec, str) else spec
                try:
                    resolved = None
                    if isinstance(target, str):
                        resolved = resolve(target)
                    send.send(("imported",))
                    t = make_target(target, spec, resolved=resolved, **options)
                except (TargetError, TargetSignatureError) as exc:
                    reply = ("usage", type(exc).__name__, str(exc))
                else:
                    targets[key] = t
                    reply = ("ok", t.detached())
            elif op == "make-head":  # a detector head's loss function (rankspec.conformance.heads)
                _, key, target, head, name = msg
                from ._head_specs import get_pipeline
                from ._head_targets import make_head_target

                try:
                    t = make_head_target(target, get_pipeline(head), name=name)  # imports the target here
                except (TargetError, TargetSignatureError) as exc:
                    reply = ("usage", type(exc).__name__, str(exc))
                else:
                    send.send(("imported",))  # a head target has no probe call
                    targets[key] = t
                    reply = ("ok", t.detached())
            elif op == "run":
                _, key, case = msg
                try:
                    reply = ("ok", targets[key].run(case))
                except TargetFailure as exc:
                    reply = ("fail", exc.kind, exc.message)
            else:
                reply = ("fail", "worker-error", f"unknown request {op!r}")
        except BaseException as exc:  # SystemExit, KeyboardInterrupt, ... of the target: that call's failure
            where = "while importing or probing the target" if op == "make" else "on this case"
            tb = traceback.format_exc(limit=-3).strip().splitlines()
            reply = ("fail", f"error:{type(exc).__name__}",
                     (_describe_exit(exc) + f" {where}")[:400] + ("; " + tb[-2].strip() if len(tb) > 1 else ""))
        try:
            send.send(reply)
        except Exception as exc:  # an outcome that does not pickle
            send.send(("fail", "bad-output", f"the target's result could not be sent back: "
                                             f"{type(exc).__name__}: {exc}"[:300]))
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except Exception:
            pass
