"""The contraction regulariser: eigenvalue estimation, the loss, and a drop-in regulariser."""

from .diagnostics import lambda_max_along, separation_and_bound
from .eig import EIG_METHODS, EigMethod, jacobian, max_sym_eig
from .finite_differences import FiniteDifferences
from .loss import FORMS, WINDOWS, Form, contraction_loss, in_window
from .regularizer import ContractionConfig, ContractionRegularizer

__all__ = [
    "max_sym_eig", "jacobian", "EIG_METHODS", "EigMethod",
    "contraction_loss", "FORMS", "Form", "in_window", "WINDOWS",
    "ContractionConfig", "ContractionRegularizer", "FiniteDifferences",
    "lambda_max_along", "separation_and_bound",
]
