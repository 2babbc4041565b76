"""Moved: the DR math to :mod:`rankspec.refimpl.reference.dr`, the public :func:`dr_loss`, its
validator and record to :mod:`rankspec.refimpl.losses.dr` (this path stays importable)."""

from .losses.dr import DR_RECORD, DRInput, dr_loss, hard_negative_prior, parse_dr_input, validate_dr  # noqa: F401
from .reference.dr import (DEFAULT_GAMMA, DEFAULT_H_NEG, DEFAULT_H_POS, DEFAULT_L, DEFAULT_LAMBDA_NEG,  # noqa: F401
                           DEFAULT_LAMBDA_POS, DEFAULT_RHO, DEFAULT_TAU, PAIRING_CHOICES, REDUCTION_CHOICES,
                           SCORE_TRANSFORM_CHOICES, SIDE_CHOICES, SURROGATE_CHOICES, Expectation, dr_expectation,
                           dr_lambda, dr_reference, hinge_surrogate, kl_distribution, kl_objective,
                           logistic_surrogate, quadratic_surrogate, surrogate_loss, worst_case_expectation)

__all__ = [
    "DEFAULT_GAMMA", "DEFAULT_H_POS", "DEFAULT_H_NEG", "DEFAULT_LAMBDA_POS", "DEFAULT_LAMBDA_NEG",
    "DEFAULT_L", "DEFAULT_RHO", "DEFAULT_TAU",
    "PAIRING_CHOICES", "SURROGATE_CHOICES", "SCORE_TRANSFORM_CHOICES", "SIDE_CHOICES", "REDUCTION_CHOICES",
    "Expectation", "DRInput",
    "dr_lambda", "kl_distribution", "kl_objective", "dr_expectation", "worst_case_expectation",
    "logistic_surrogate", "quadratic_surrogate", "hinge_surrogate", "surrogate_loss",
    "parse_dr_input", "hard_negative_prior", "dr_loss",
]
