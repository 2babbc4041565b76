r"""Conformance-checking ``scope="distributed"``: a harness target that spreads one problem over W ranks.

:class:`DistributedTarget` is a target for :func:`~rankspec.conformance.check` /
:func:`~rankspec.conformance.assert_conforms`.  Called on one flat problem ``(logits, labels, delta,
extra inputs)`` - the harness's generated, hostile, recorded and shrunk cases - it

1. splits the rows (the first dimension of the logits; the elements of 1-D logits) into W contiguous
   blocks, one per rank, in rank order, unevenly and deterministically (:func:`split_rows`): with W >= 3
   rank 1 holds no row, with W = 2 rank 0 holds none on about a third of the inputs, and one rank holding
   rows holds no positive whenever a contiguous block without positives exists (and the rank layout
   allows it);
2. runs the torch adapter's loss with ``scope="distributed"`` on every rank, each rank passing only its
   own rows, in a persistent pool of W processes joined in one gloo process group (``tcp://`` rendezvous
   on 127.0.0.1, a free port);
3. checks that every rank returned the *same* loss (else :class:`RanksDisagree` is raised: the scope
   promises the loss of the whole batch on every rank);
4. returns ``(loss, grad)``: the loss and the gradient assembled from the ranks' logits gradients in
   rank order, divided by W.  That division undoes exactly the documented rule
   (:mod:`rankspec.adapters.torch._distributed`: rank ``r``'s logits receive ``W g_r`` so that
   DistributedDataParallel's mean yields the single-process gradient), so the result is compared with
   the reference on the concatenated - i.e. the original - input.

The concatenation of the blocks in rank order is the input itself, so the reference needs no change and
every failure the harness finds is reproduced, shrunk and diagnosed like any other target's (a split
depends on the input only, never on a call count).

Losses covered (the spec names of :data:`~rankspec.conformance.specs.SPECS`): ``ap``, ``ap-interp``,
``rs``, ``bap``, ``brs`` (AP / RS / bucketed), ``ape``, ``ape-pairwise``, ``alrp`` (classification
component; the per-positive ``regression_losses`` are split with the positives of each rank's rows),
``rankdet-global``, ``rankdet-class``, ``rankdet-iou``, ``rankdet`` (all rows one image) and ``dr``
(with ``image_ids`` each rank's images stay distinct, so blocks are cut only between rows where no image
continues on both sides - an input whose images interleave everywhere stays on one rank; an input of one
image is passed as ``image_ids=None``, all rows of all ranks one image, and split anywhere).

The pool starts lazily on the first call in whichever process calls the target (so the target pickles
as its configuration and runs in the harness's isolated worker), is reused by every later call, and is
closed by :meth:`DistributedTarget.close`, by leaving a ``with`` block, when the target is garbage
collected, and at interpreter exit; each rank also exits when its parent's pipe closes.  After a rank
error that is not the adapter's documented all-ranks rejection, a time-out or a dead rank, the pool is
restarted on the next call.

Importing this module imports neither torch nor ``torch.distributed`` (the ranks do).

Cost: the pool's start-up (about one to two seconds: W interpreters importing torch) is paid once; each
call then costs one round trip of the case's rows over pipes plus the distributed loss itself.
"""

from __future__ import annotations

import atexit
import importlib
import math
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import weakref
import zlib
from dataclasses import dataclass, field
from typing import Callable, Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = ["DistributedTarget", "RanksDisagree", "DISTRIBUTED_LOSSES", "split_rows", "image_cuts"]


class RanksDisagree(RuntimeError):
    """The ranks returned different losses (or unusable output) for one call."""


@dataclass(frozen=True)
class _Loss:
    """How a spec's problem is split and which adapter every rank calls."""

    adapter: str  #: ``module:attr`` of the torch adapter
    positional: Tuple[str, ...] = ("delta",)  #: inputs after (logits, labels), in the harness's order
    keywords: Tuple[str, ...] = ()  #: inputs the harness passes by keyword
    per_row: Tuple[str, ...] = ()  #: inputs split with the rows (first dimension)
    per_positive: Tuple[str, ...] = ()  #: inputs with one entry per positive (labels == 1, flat order)
    positive: str = "gt0"  #: a row holds a positive when any label is > 0 ("gt0"), == 1 ("eq1"), >= 0 ("ge0")
    kwargs: Mapping[str, object] = field(default_factory=dict)  #: fixed keywords of the variant
    images: bool = False  #: ``image_ids`` keep each rank's images distinct: cut between whole images only


_T = "rankspec.adapters.torch"
_ROWS_IOU = dict(positional=("ious", "levels"), per_row=("ious", "levels"), positive="ge0")

#: spec name -> how :class:`DistributedTarget` splits it and calls the adapter
DISTRIBUTED_LOSSES: Dict[str, _Loss] = {
    "ap": _Loss(f"{_T}:ap_loss"),
    "ap-interp": _Loss(f"{_T}:ap_loss", kwargs={"interpolated": True}),
    "rs": _Loss(f"{_T}:rs_loss"),
    "bap": _Loss(f"{_T}:bucketed_ap_loss"),
    "brs": _Loss(f"{_T}:bucketed_rs_loss"),
    "ape": _Loss(f"{_T}:ape_loss", positional=("ious",), per_row=("ious",)),
    "ape-pairwise": _Loss(f"{_T}:pairwise_error_loss", positional=(), keywords=("delta",)),
    # the reference's default buffers (the authors' float32), as the bundled aLRPLoss drop-in
    "alrp": _Loss(f"{_T}:alrp_loss", positional=("regression_losses", "delta"),
                  per_positive=("regression_losses",), positive="eq1", kwargs={"buffer_dtype": "float32"}),
    "rankdet-global": _Loss(f"{_T}:global_ranking_loss", positional=(), positive="ge0"),
    "rankdet-class": _Loss(f"{_T}:class_specific_ranking_loss", positional=(), positive="ge0"),
    "rankdet-iou": _Loss(f"{_T}:iou_guided_ranking_loss", **_ROWS_IOU),
    "rankdet": _Loss(f"{_T}:rankdet_loss", **_ROWS_IOU),
    "dr": _Loss(f"{_T}:dr_loss", positional=(), keywords=("image_ids",), per_row=("image_ids",), images=True),
}

SPLITS = ("uneven", "even")

#: seconds allowed for starting the pool (W interpreters importing torch, the gloo rendezvous)
START_SECONDS = 120.0


# ------------------------------------------------------------------------------------------------
# splitting
# ------------------------------------------------------------------------------------------------

def image_cuts(image_ids) -> np.ndarray:
    """Positions ``k`` (0..n) where rows ``[:k]`` and ``[k:]`` share no image id: where a contiguous split
    keeps every image whole.  O(n log n)."""
    ids = np.asarray(image_ids).reshape(-1)
    n = ids.size
    blocked = np.zeros(n + 2, dtype=np.int64)
    if n:
        _, first = np.unique(ids, return_index=True)
        _, last_rev = np.unique(ids[::-1], return_index=True)
        last = n - 1 - last_rev
        # an image spanning rows first..last blocks the cuts first+1..last
        np.add.at(blocked, first + 1, 1)
        np.add.at(blocked, last + 1, -1)
    open_ = np.cumsum(blocked)[:n + 1] == 0
    return np.flatnonzero(open_)


def _pick(rng, choices: np.ndarray, count: int) -> list:
    """``count`` sorted positions from ``choices`` (distinct when there are enough, else with repeats)."""
    if count <= 0:
        return []
    if choices.size == 0:
        return []
    replace_ = choices.size < count
    return sorted(int(v) for v in rng.choice(choices, size=count, replace=replace_))


def split_rows(rows: int, world_size: int, positive=None, *, allowed=None, seed: int = 0,
               split: str = "uneven") -> Tuple[int, ...]:
    """Rows per rank (a tuple of ``world_size`` counts summing to ``rows``) for contiguous blocks in rank order.

    ``positive``: one bool per row (the row holds a positive); ``allowed``: the positions where a block may
    start or end (default: every position; :func:`image_cuts` for inputs whose images must stay whole).

    ``split="uneven"`` (deterministic for a ``seed``): with ``world_size >= 3`` rank 1 holds no row, with
    ``world_size == 2`` rank 0 holds none for about a third of the seeds; when some row is positive and a
    block of rows without positives can be one rank's (at either end, or anywhere with three ranks
    holding rows), that block is a rank's whole share - a rank with rows but no positive; the other
    cuts are drawn at random among the allowed positions (uneven shares).  ``split="even"``: the allowed
    positions nearest to ``k * rows / world_size``.  O(rows).
    """
    n, W = int(rows), int(world_size)
    if W < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size!r}")
    if n < 0:
        raise ValueError(f"rows must be >= 0, got {rows!r}")
    allowed = np.arange(n + 1) if allowed is None else np.unique(np.concatenate(
        [np.asarray(allowed, dtype=np.int64).reshape(-1), [0, n]]))
    allowed = allowed[(allowed >= 0) & (allowed <= n)]
    if W == 1:
        return (n,)
    if split == "even":
        cuts = [0] + [int(allowed[np.argmin(np.abs(allowed - k * n / W))]) for k in range(1, W)] + [n]
        cuts = list(np.maximum.accumulate(cuts))
        return tuple(int(b - a) for a, b in zip(cuts[:-1], cuts[1:]))
    if split != "uneven":
        raise ValueError(f"split must be one of {', '.join(map(repr, SPLITS))} or a callable, got {split!r}")
    rng = np.random.default_rng(int(seed) % 2**32)
    empty = 1 if W >= 3 else (0 if rng.random() < 1 / 3 else None)
    holders = [r for r in range(W) if r != empty]
    k = len(holders)
    pos = np.zeros(n, dtype=bool) if positive is None else np.asarray(positive, dtype=bool).reshape(-1)
    if pos.size != n:
        raise ValueError(f"positive has {pos.size} entries for {n} rows")
    interior = allowed[(allowed > 0) & (allowed < n)]
    blocks = []
    if pos.any():
        # maximal runs of rows without a positive, trimmed to allowed cut positions
        edges = np.flatnonzero(np.diff(np.concatenate([[1], pos.astype(np.int8), [1]])))
        for s, e in zip(edges[::2], edges[1::2]):  # rows s..e-1 hold no positive
            inside = allowed[(allowed >= s) & (allowed <= e)]
            if inside.size < 2:
                continue
            a, b = int(inside[0]), int(inside[-1])
            if a == 0 or b == n or k >= 3:
                blocks.append((a, b))
    if blocks:
        a, b = blocks[int(rng.integers(len(blocks)))]
        j = 0 if a == 0 else (k - 1 if b == n else int(rng.integers(1, k - 1)))
        left = _pick(rng, allowed[(allowed > 0) & (allowed < a)], j - 1) if j >= 1 else []
        right = _pick(rng, allowed[(allowed > b) & (allowed < n)], k - j - 2) if j <= k - 2 else []
        if j >= 1 and len(left) < j - 1:
            left = [a] * (j - 1)
        if j <= k - 2 and len(right) < k - j - 2:
            right = [b] * (k - j - 2)
        cuts = [0] + left + ([a] if j >= 1 else []) + ([b] if j <= k - 2 else []) + right + [n]
    else:
        inner = _pick(rng, interior, k - 1)
        cuts = [0] + (inner if len(inner) == k - 1 else [n] * (k - 1)) + [n]
    shares = [int(y - x) for x, y in zip(cuts[:-1], cuts[1:])]
    out = [0] * W
    for r, s in zip(holders, shares):
        out[r] = s
    return tuple(out)


def _positive_rows(labels: np.ndarray, rule: str) -> np.ndarray:
    lab = np.asarray(labels)
    flat = lab.reshape(lab.shape[0], -1) if lab.ndim else lab.reshape(1, 1)
    if rule == "eq1":
        return (flat == 1).any(axis=1)
    if rule == "ge0":
        return (flat >= 0).any(axis=1)
    return (flat > 0).any(axis=1)


def _seed_of(*arrays) -> int:
    h = 0
    for a in arrays:
        a = np.ascontiguousarray(a)
        h = zlib.crc32(repr((a.dtype.str, a.shape)).encode(), h)
        h = zlib.crc32(a.tobytes(), h)
    return h


# ------------------------------------------------------------------------------------------------
# the pool of ranks
# ------------------------------------------------------------------------------------------------

_POOLS: "weakref.WeakSet[_Pool]" = weakref.WeakSet()


@atexit.register
def _close_all() -> None:  # pragma: no cover - interpreter exit
    for pool in list(_POOLS):
        pool.close()


class _PortTaken(RuntimeError):
    pass


def _free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the rendezvous of rank 0's store)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Pool:
    """W rank processes in one gloo process group, talking to this process over pipes."""

    def __init__(self, world_size: int, timeout: float):
        self.world_size, self.timeout = world_size, timeout
        self.procs, self.send, self.recv, self.logs = [], [], [], []
        _POOLS.add(self)
        try:
            for attempt in range(3):  # a rendezvous port taken between choosing and binding it: try another
                try:
                    self._start(_free_port())
                    return
                except _PortTaken:
                    self.close()
                    _POOLS.add(self)
            raise RuntimeError("DistributedTarget: no free port for the process group's rendezvous on 127.0.0.1")
        except BaseException:
            self.close()
            raise

    def _start(self, port: int) -> None:
        from multiprocessing.connection import Connection

        env = dict(os.environ)
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
            env.setdefault(var, "1")
        paths = [p for p in sys.path if isinstance(p, str)]
        code = ("import sys; sys.path[:0] = [p for p in %r if p not in sys.path]; "
                "from rankspec.conformance.distributed import _rank_main; _rank_main(%%d, %%d)" % (paths,))
        init = f"tcp://127.0.0.1:{port}"
        for r in range(self.world_size):
            req_r, req_w = os.pipe()
            resp_r, resp_w = os.pipe()
            log = tempfile.TemporaryFile(prefix="rankspec-distributed-")  # unlinked: nothing is left behind
            self.logs.append(log)
            try:
                proc = subprocess.Popen([sys.executable, "-c", code % (req_r, resp_w)], stdin=subprocess.DEVNULL,
                                        stdout=log, stderr=log, pass_fds=(req_r, resp_w), close_fds=True,
                                        env=env, cwd=os.getcwd())
            finally:
                os.close(req_r)
                os.close(resp_w)
            self.procs.append(proc)
            self.send.append(Connection(req_w, readable=False))
            self.recv.append(Connection(resp_r, writable=False))
            self.send[-1].send(("init", r, self.world_size, init, float(self.timeout)))
        self._gather("start", START_SECONDS + self.timeout)

    @property
    def alive(self) -> bool:
        return bool(self.procs) and all(p.poll() is None for p in self.procs)

    def _tail(self, rank: int, lines: int = 8) -> str:
        try:
            log = self.logs[rank]
            log.flush()
            log.seek(0)
            text = log.read().decode(errors="replace").strip().splitlines()
        except (OSError, IndexError, ValueError):
            return ""
        return "\n".join(text[-lines:])

    def _gather(self, what: str, timeout: float) -> list:
        """One answer from every rank within ``timeout`` seconds (the pool is closed otherwise)."""
        from multiprocessing.connection import wait

        answers: Dict[int, tuple] = {}
        deadline = time.monotonic() + timeout
        pending = {c: r for r, c in enumerate(self.recv)}
        while pending:
            left = deadline - time.monotonic()
            ready = wait(list(pending), timeout=max(left, 0)) if left > 0 else []
            if not ready:
                late = sorted(pending.values())
                self.close()
                raise TimeoutError(f"DistributedTarget: rank(s) {late} did not answer ({what}) within {timeout:.0f} s; "
                                   f"the pool was stopped (a hang in a collective: some rank made a different call)")
            for c in ready:
                r = pending.pop(c)
                try:
                    answers[r] = c.recv()
                except (EOFError, OSError):
                    tail = self._tail(r)
                    code = self.procs[r].poll()
                    self.close()
                    raise RuntimeError(f"DistributedTarget: rank {r} died ({what}; exit code {code})"
                                       + (f"; its last output:\n{tail}" if tail else "")) from None
        out = [answers[r] for r in range(self.world_size)]
        for r, a in enumerate(out):
            if what == "start" and a[0] != "ready":
                if "address already in use" in a[2].lower() or "eaddrinuse" in a[2].lower():
                    raise _PortTaken(a[2])
                self.close()
                raise RuntimeError(f"DistributedTarget: rank {r} could not join the process group: {a[2]}")
        return out

    def run(self, request: tuple, parts: list) -> list:
        for conn, part in zip(self.send, parts):
            conn.send(("run", request, part))
        return self._gather("a call", self.timeout)

    def close(self) -> None:
        _POOLS.discard(self)
        for conn in self.send:
            try:
                conn.send(("close",))
            except Exception:
                pass
        deadline = time.monotonic() + 5.0
        for p in self.procs:
            try:
                p.wait(timeout=max(deadline - time.monotonic(), 0.01))
            except subprocess.TimeoutExpired:
                p.kill()
                try:
                    p.wait(timeout=5)
                except subprocess.TimeoutExpired:  # pragma: no cover
                    pass
        for conn in self.send + self.recv:
            try:
                conn.close()
            except Exception:
                pass
        for log in self.logs:
            try:
                log.close()
            except Exception:
                pass
        self.procs, self.send, self.recv, self.logs = [], [], [], []


def _host(v):
    """NumPy view of an input (torch tensors too: the target also runs under ``convention="torch-pair"``)."""
    if hasattr(v, "detach") and hasattr(v, "cpu"):
        v = v.detach().cpu().numpy()
    return v if v is None or isinstance(v, (int, float)) else np.asarray(v)


def _ref_text(obj) -> str:
    """``obj`` as constructor-argument source: a module-level function as its ``'module:attr'`` string."""
    module, qual = getattr(obj, "__module__", None), getattr(obj, "__qualname__", "")
    if callable(obj) and module and qual and "<" not in qual and module != "__main__":
        return repr(f"{module}:{qual}")
    return repr(obj)


def _resolve(ref):
    if not isinstance(ref, str):
        return ref
    module, _, attr = ref.partition(":")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def _rank_main(req_fd: int, resp_fd: int) -> None:  # pragma: no cover - runs in the rank processes
    """One rank: join the group, then answer ``("run", request, part)`` messages until closed."""
    from datetime import timedelta
    from multiprocessing.connection import Connection

    inbox, outbox = Connection(req_fd, writable=False), Connection(resp_fd, readable=False)
    _, rank, world_size, init, timeout = inbox.recv()
    try:
        import torch
        import torch.distributed as dist

        torch.set_num_threads(1)
        dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world_size,
                                timeout=timedelta(seconds=max(float(timeout), 1.0)))
    except BaseException as exc:
        outbox.send(("fail", type(exc).__name__, f"{type(exc).__name__}: {exc}"))
        return
    outbox.send(("ready",))
    functions: Dict[object, object] = {}
    while True:
        try:
            msg = inbox.recv()
        except (EOFError, OSError):
            break
        if msg[0] != "run":
            break
        _, request, part = msg
        try:
            outbox.send(("ok",) + _rank_call(torch, functions, request, part))
        except BaseException as exc:  # the adapter's error, reported to the caller
            outbox.send(("error", type(exc).__name__, str(exc).strip(), traceback.format_exc(limit=6)))
    try:
        dist.destroy_process_group()
    except Exception:
        pass


def _rank_call(torch, functions: dict, request: tuple, part: dict) -> tuple:  # pragma: no cover - in the ranks
    fn_ref, positional, keywords, options = request
    key = fn_ref if isinstance(fn_ref, str) else id(fn_ref)
    fn = functions.get(key)
    if fn is None:
        fn = functions[key] = _resolve(fn_ref)

    def tensor(v):
        return torch.from_numpy(np.array(v, copy=True)) if isinstance(v, np.ndarray) else v

    x = torch.from_numpy(np.array(part["logits"], copy=True)).requires_grad_(True)
    y = tensor(part["labels"])
    args = [tensor(part[name]) for name in positional]
    kw = {name: tensor(part[name]) for name in keywords}
    out = fn(x, y, *args, scope="distributed", **kw, **options)
    if isinstance(out, (tuple, list)) and out:
        out = out[0]  # aLRP's (cls, loc[, rank, order]): the classification component
    if not isinstance(out, torch.Tensor) or out.numel() != 1:
        raise TypeError(f"the loss function returned {type(out).__name__}, not a scalar tensor")
    loss = out.reshape(())
    if loss.requires_grad:
        loss.backward()
    grad = x.grad if x.grad is not None else torch.zeros_like(x)
    return float(loss.detach().double()), grad.detach().numpy()


# ------------------------------------------------------------------------------------------------
# the target
# ------------------------------------------------------------------------------------------------

class DistributedTarget:
    """A harness target running ``loss`` with ``scope="distributed"`` over ``world_size`` gloo ranks.

    The target is picklable (its configuration only): the pool starts in the process that first calls it.
    :meth:`close` (or ``with DistributedTarget(...) as target:``) stops the pool; :attr:`last_split`
    holds the rows per rank of the latest call.  Bad arguments raise ``ValueError`` / ``TypeError``
    naming the argument.

    Parameters
    ----------
    loss:
        The spec name (one of :data:`DISTRIBUTED_LOSSES`); pass the same name to the check, e.g.
        ``assert_conforms(DistributedTarget("rs", world_size=2), "rs")``.
    world_size:
        Number of rank processes (an integer >= 1; 1 is a group of one, where the scope equals ``"batch"``).
    split:
        ``"uneven"`` (default) or ``"even"`` (:func:`split_rows`), or a callable
        ``split(rows, world_size, positive_rows) -> counts`` returning ``world_size`` non-negative
        integers summing to ``rows`` (for ``"dr"`` the cuts must keep images whole).
    function:
        What every rank calls, ``function(logits, labels, *inputs, scope="distributed", **options)``
        with this rank's rows (torch tensors; ``delta`` a float): default the bundled torch adapter of
        ``loss``; a ``"module:attr"`` string or a picklable module-level callable checks another
        implementation of the distributed scope.  Its output is a 0-d loss tensor (or a tuple whose
        first item is), differentiable w.r.t. ``logits``.
    options:
        Fixed keyword arguments of every rank's call (e.g. ``{"self_rank": "one"}``); not ``scope``.
    timeout:
        Seconds one call may take on the ranks (also the process group's collective time-out); a call that
        runs over it stops the pool and raises ``TimeoutError``.
    """

    def __init__(self, loss: str = "rs", world_size: int = 2, *, split: Union[str, Callable] = "uneven",
                 function=None, options: Optional[Mapping] = None, timeout: float = 60.0):
        if not isinstance(loss, str) or loss not in DISTRIBUTED_LOSSES:
            raise ValueError(f"loss must be one of {', '.join(DISTRIBUTED_LOSSES)} (a spec name), got {loss!r}")
        if isinstance(world_size, bool) or not isinstance(world_size, (int, np.integer)) or not 1 <= world_size <= 64:
            raise ValueError(f"world_size must be an integer from 1 to 64, got {world_size!r}")
        if not (callable(split) or split in SPLITS):
            raise ValueError(f"split must be one of {', '.join(map(repr, SPLITS))} or a callable "
                             f"split(rows, world_size, positive_rows) -> counts, got {split!r}")
        if function is not None:
            if isinstance(function, str):
                if ":" not in function or not all(function.partition(":")[::2]):
                    raise ValueError(f"function must be a 'module:attr' string or a callable, got {function!r}")
            elif not callable(function):
                raise ValueError(f"function must be a 'module:attr' string or a callable, got "
                                 f"{type(function).__name__}")
            else:
                try:
                    pickle.dumps(function)
                except Exception as exc:
                    raise ValueError(f"function must be picklable (a module-level function) to reach the rank "
                                     f"processes; pass a 'module:attr' string instead ({exc})") from None
        if options is None:
            options = {}
        if not isinstance(options, Mapping) or not all(isinstance(k, str) for k in options):
            raise ValueError(f"options must be a dict of keyword arguments, got {options!r}")
        if "scope" in options:
            raise ValueError("options must not contain 'scope': the target always passes scope='distributed'")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not (math.isfinite(timeout)
                                                                                      and timeout > 0):
            raise ValueError(f"timeout must be a finite number of seconds > 0, got {timeout!r}")
        self.loss, self.world_size, self.split = loss, int(world_size), split
        self.function, self.options, self.timeout = function, dict(options), float(timeout)
        self.last_split: Optional[Tuple[int, ...]] = None
        self._pool: Optional[_Pool] = None
        # the harness names a callable instance by its __qualname__: name this one by its configuration
        self.__qualname__ = repr(self)

    # -- description, pickling, life cycle -----------------------------------------------------------
    def __repr__(self) -> str:
        extra = "" if self.split == "uneven" else f", split={_ref_text(self.split)}"
        extra += "" if self.function is None else f", function={_ref_text(self.function)}"
        extra += "" if not self.options else f", options={self.options!r}"
        extra += "" if self.timeout == 60.0 else f", timeout={self.timeout!r}"
        return f"DistributedTarget({self.loss!r}, world_size={self.world_size}{extra})"

    @property
    def __rankspec_init__(self) -> str:
        """The constructor call that builds this target (the harness's reproducers print it)."""
        return repr(self)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_pool"] = None
        state["last_split"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)

    def __enter__(self) -> "DistributedTarget":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop the pool (a later call starts a new one)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    def __del__(self):  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass

    # -- calling ---------------------------------------------------------------------------------------
    def _sizes(self, n: int, labels: np.ndarray, allowed, seed: int, rule: str) -> Tuple[int, ...]:
        positive = _positive_rows(labels, rule) if n else np.zeros(0, dtype=bool)
        if not callable(self.split):
            return split_rows(n, self.world_size, positive, allowed=allowed, seed=seed, split=self.split)
        sizes = self.split(n, self.world_size, positive)
        try:
            sizes = tuple(int(s) for s in sizes)
        except TypeError:
            raise ValueError(f"split returned {sizes!r}, not a sequence of counts") from None
        if len(sizes) != self.world_size or min(sizes) < 0 or sum(sizes) != n:
            raise ValueError(f"split returned {sizes!r}: it must be {self.world_size} non-negative counts "
                             f"summing to the {n} rows")
        if allowed is not None:
            cuts = np.cumsum(sizes)[:-1]
            bad = np.setdiff1d(cuts, allowed)
            if bad.size:
                raise ValueError(f"split returned {sizes!r}, which cuts an image at row {int(bad[0])}; "
                                 f"for loss {self.loss!r} every image must stay on one rank")
        return sizes

    def __call__(self, logits, labels, *args, **kwargs):
        """``(loss, grad)`` of ``loss`` on the union of the ranks' rows (the module docstring)."""
        spec = DISTRIBUTED_LOSSES[self.loss]
        if len(args) != len(spec.positional) or set(kwargs) != set(spec.keywords):
            expected = ", ".join(["logits", "labels", *spec.positional, *(f"{k}=" for k in spec.keywords)])
            raise TypeError(f"DistributedTarget({self.loss!r}) is called as f({expected}); got "
                            f"{2 + len(args)} positional argument(s) and keywords {sorted(kwargs)} "
                            f"(check it with loss={self.loss!r})")
        values = {k: _host(v) for k, v in zip(spec.positional, args)}
        values.update({k: _host(v) for k, v in kwargs.items()})
        x = _host(logits)
        t = _host(labels)
        if x.ndim == 0 or t.shape[:1] != x.shape[:1]:
            raise ValueError(f"logits (shape {x.shape}) and labels (shape {t.shape}) must have the same number "
                             f"of rows (first dimension)")
        n = x.shape[0]
        allowed = None
        if spec.images and values.get("image_ids") is not None:
            ids = np.asarray(values["image_ids"]).reshape(-1)
            if ids.size and (ids == ids[0]).all():
                values["image_ids"] = None  # one image: every rank's rows are that image (image_ids=None)
            else:
                allowed = image_cuts(ids)
        sizes = self._sizes(n, t, allowed, _seed_of(x, t), spec.positive)
        self.last_split = sizes
        bounds = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
        pos_counts = None
        if spec.per_positive:
            flat_pos = [np.count_nonzero(np.asarray(t[a:b]).reshape(-1) == 1) for a, b in zip(bounds[:-1], bounds[1:])]
            pos_counts = np.concatenate([[0], np.cumsum(flat_pos)]).astype(int)
        parts = []
        for r in range(self.world_size):
            a, b = bounds[r], bounds[r + 1]
            part = {"logits": np.ascontiguousarray(x[a:b]), "labels": np.ascontiguousarray(t[a:b])}
            for name, v in values.items():
                if name in spec.per_row and v is not None:
                    part[name] = np.ascontiguousarray(np.asarray(v)[a:b])
                elif name in spec.per_positive and v is not None:
                    e = np.asarray(v).reshape(-1)
                    if e.size != pos_counts[-1]:
                        raise ValueError(f"{name} has {e.size} element(s) but labels has {pos_counts[-1]} "
                                         f"positive(s); give one per positive, in flat order")
                    part[name] = np.ascontiguousarray(e[pos_counts[r]:pos_counts[r + 1]])
                elif name == "delta" and v is not None:
                    part[name] = float(v)
                else:
                    part[name] = v
            parts.append(part)
        fn_ref = spec.adapter if self.function is None else self.function
        request = (fn_ref, spec.positional, spec.keywords, {**dict(spec.kwargs), **self.options})
        if self._pool is None or not self._pool.alive:
            self.close()
            self._pool = _Pool(self.world_size, self.timeout)
        answers = self._pool.run(request, parts)
        return self._assemble(answers, sizes, x.shape)

    def _assemble(self, answers: list, sizes, shape) -> Tuple[float, np.ndarray]:
        W = self.world_size
        errors = [(r, a) for r, a in enumerate(answers) if a[0] != "ok"]
        if errors:
            # the adapter's documented rejection: every rank raised (the local checks are exchanged before the
            # collectives), so the group is in step; anything else may have left a collective half done
            if len(errors) < W or any(a[1] not in ("ValueError", "TypeError") for _, a in errors):
                self.close()
            own = [e for e in errors if "rejected their inputs" not in e[1][2]] or errors
            r, (_, kind, msg, _tb) = own[0]
            text = f"rank {r} of {W} (rows per rank {tuple(sizes)}): {msg}"
            if kind == "ValueError":
                raise ValueError(text)
            if kind == "TypeError":
                raise TypeError(text)
            raise RuntimeError(f"{kind}: {text}")
        losses = [a[1] for a in answers]
        first = losses[0]
        same = all(v == first or (math.isnan(v) and math.isnan(first)) for v in losses)
        if not same:
            raise RanksDisagree(f"the ranks returned different losses {losses} (rows per rank {tuple(sizes)}); "
                                f"scope='distributed' must give every rank the loss of the whole batch")
        grads = []
        for r, (a, n) in enumerate(zip(answers, sizes)):
            g = np.asarray(a[2], dtype=np.float64)
            if g.shape[:1] != (n,):
                raise RanksDisagree(f"rank {r} returned a gradient of shape {g.shape} for its {n} row(s)")
            grads.append(g.reshape((n,) + tuple(shape[1:])))
        # DDP's mean over W ranks: rank r's logits received W * g_r (adapters.torch._distributed); undo it
        grad = np.concatenate(grads, axis=0).reshape(shape) / W
        return first, grad
