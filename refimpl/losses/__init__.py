"""The public loss functions and their records, one module per family.

A module here holds, for each loss of its family, the public function (thin:
validate once, dispatch on ``backend``, compute) and its
:class:`~rankspec.refimpl.record.LossRecord`.  The math is in
:mod:`rankspec.refimpl.reference`, the kernels in :mod:`rankspec.refimpl.fast`.
"""
