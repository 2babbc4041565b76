"""Targets: the implementation under test, and how to call it.

Three steps, one module each: :mod:`.resolve` (import a target from a string), :mod:`.detect` (detect its
call convention: :func:`make_target`) and :mod:`.call` (run it on a case: :class:`Target`).

Call conventions (``convention=`` / ``--convention``; ``"auto"`` detects them):

``pair``
    ``f(logits, targets, delta) -> (loss, grad)`` called with NumPy arrays; the
    pair may hold NumPy values or torch tensors, or be a ``LossResult``.
``torch-pair``
    the same, called with torch tensors.
``autograd``
    ``f(logits, targets, delta) -> loss`` called with torch tensors; the
    gradient comes from ``loss.backward(grad_output)``.  A tuple / list of
    losses (the authors' ``(ranking, sorting)``) is summed, as the authors'
    training code does, and compared part by part as well.
``function``
    a ``torch.autograd.Function`` subclass, called as ``F.apply(logits, targets, delta)``
    (the authors' ``RankSort``, ``APLoss``, ``BucketedRankSort``, ``BucketedAPLoss``).
``module``
    an ``nn.Module`` class (instantiated as ``M(delta=delta, **kwargs)`` when its
    constructor takes ``delta`` - or, for a loss whose reference takes delta as
    a keyword, ``**kwargs`` and its ``forward`` takes no delta -, else ``M(**kwargs)`` with delta passed to
    ``forward`` if it takes one) or an instance (called as ``m(logits, targets)``;
    its ``delta`` attribute fixes the delta when ``forward`` takes none).

Losses with further inputs (:attr:`LossSpec.extra_inputs`: IoUs, pyramid
levels, image ids, box weights) get them after ``(logits, targets[, delta])``:
positionally in spec order, or as keywords when the spec says so (an
``autograd.Function`` gets every one positionally).  A loss without a delta
is called without one.  Integer inputs become int64 tensors; a differentiable
input (``Input(grad=...)``) is a leaf that requires grad, and its ``.grad``
is compared with the reference as well.

``tuple_backward="first"`` backpropagates only through the first output of a
tuple (what the authors' Functions support: their backward carries the whole
gradient on the first output); the default ``"sum"`` backpropagates through
their sum, which gives the same gradient for those Functions and the right one
for ordinary autograd code.

Targets are given as objects or as strings: ``package.module:attr`` or
``path/to/file.py:attr`` (``attr`` may be dotted).  torch is imported only
when a torch convention is used.
"""

from __future__ import annotations

from .call import CALL_CONVENTIONS, CALL_HELP, CONVENTION_HELP, Outcome, Target, TargetFailure, parse_call
from .detect import TargetSignatureError, make_target
from .resolve import TargetError, import_code_for, object_name, resolve

__all__ = ["CALL_CONVENTIONS", "CALL_HELP", "parse_call", "CONVENTION_HELP", "Outcome", "Target", "TargetFailure", "TargetSignatureError",
           "make_target", "TargetError", "import_code_for", "object_name", "resolve"]
