"""``nn.Module`` wrappers of the functional losses.

Each module stores ``delta``, the convention keywords and ``scope`` at
construction; ``forward(logits, labels_or_targets, image_ids=None)`` returns
the 0-d loss (see :mod:`rankspec.adapters.torch.functional` for the
definitions, the ``scope`` rules and the cost).  Options are validated at
construction.
"""

from __future__ import annotations

import torch
from torch import nn

from rankspec.refimpl._inputs import check_ranking_options
from rankspec.refimpl._validate import check_choice

from . import functional as F
from ._inputs import SCOPE_CHOICES

__all__ = ["APLossModule", "RSLossModule", "BucketedAPLossModule", "BucketedRSLossModule"]


class _RankingLossModule(nn.Module):
    _function = None  # set by subclasses

    def __init__(self, delta, *, self_rank, tie_value, normalization, scope, **options):
        super().__init__()
        # the reference's option checks (same rules and messages as rankspec.refimpl and the functionals)
        opts = check_ranking_options(delta, self_rank=self_rank, tie_value=tie_value, normalization=normalization,
                                     **options)
        self.delta = opts.delta
        self.tie_value = opts.tie_value
        self.self_rank = self_rank
        self.normalization = opts.normalization
        self.scope = check_choice(scope, "scope", SCOPE_CHOICES)
        self.options = {k: getattr(opts, k) for k in options}

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, image_ids=None) -> torch.Tensor:
        return type(self)._function(logits, targets, self.delta, self_rank=self.self_rank,
                                    tie_value=self.tie_value, normalization=self.normalization,
                                    scope=self.scope, image_ids=image_ids, **self.options)

    def extra_repr(self) -> str:
        opts = "".join(f", {k}={v!r}" for k, v in self.options.items())
        return (f"delta={self.delta}, self_rank={self.self_rank!r}, tie_value={self.tie_value}, "
                f"normalization={self.normalization!r}, scope={self.scope!r}{opts}")


class APLossModule(_RankingLossModule):
    """AP Loss (``functional.ap_loss``); ``forward(logits, labels, image_ids=None)``."""

    _function = staticmethod(F.ap_loss)

    def __init__(self, delta: float = 1.0, interpolated: bool = False, *, self_rank: str = "one",
                 tie_value: float = 1.0, normalization: str = "positives", scope: str = "batch"):
        super().__init__(delta, self_rank=self_rank, tie_value=tie_value, normalization=normalization,
                         scope=scope, interpolated=interpolated)


class RSLossModule(_RankingLossModule):
    """Rank & Sort Loss (``functional.rs_loss``); ``forward(logits, targets, image_ids=None)``."""

    _function = staticmethod(F.rs_loss)

    def __init__(self, delta: float = 0.5, *, self_rank: str = "h0", tie_value: float = 1.0,
                 normalization: str = "positives", scope: str = "batch"):
        super().__init__(delta, self_rank=self_rank, tie_value=tie_value, normalization=normalization,
                         scope=scope)


class BucketedAPLossModule(_RankingLossModule):
    """Bucketed AP Loss (``functional.bucketed_ap_loss``); ``forward(logits, labels, image_ids=None)``."""

    _function = staticmethod(F.bucketed_ap_loss)

    def __init__(self, delta: float = 1.0, *, self_rank: str = "h0", tie_value: float = 1.0,
                 normalization: str = "positives", threshold: bool = True, tied_negatives: str = "above",
                 scope: str = "batch"):
        super().__init__(delta, self_rank=self_rank, tie_value=tie_value, normalization=normalization,
                         scope=scope, threshold=threshold, tied_negatives=tied_negatives)


class BucketedRSLossModule(_RankingLossModule):
    """Bucketed Rank & Sort Loss (``functional.bucketed_rs_loss``); ``forward(logits, targets, image_ids=None)``."""

    _function = staticmethod(F.bucketed_rs_loss)

    def __init__(self, delta: float = 0.5, *, self_rank: str = "h0", tie_value: float = 1.0,
                 normalization: str = "positives", threshold: bool = True, tied_negatives: str = "above",
                 scope: str = "batch"):
        super().__init__(delta, self_rank=self_rank, tie_value=tie_value, normalization=normalization,
                         scope=scope, threshold=threshold, tied_negatives=tied_negatives)
