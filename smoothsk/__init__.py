"""smoothsk: certified robustness by randomized smoothing as a scikit-learn workflow."""

from smoothsk.base import SmoothedClassifier
from smoothsk.certification import (
    ABSTAIN,
    Certificate,
    certify,
    class_counts,
    lower_confidence_bound,
    predict,
    upper_confidence_bound,
)
from smoothsk.gaussian import GaussianAugClassifier, gaussian_augmentation_loss

__version__ = "0.1.0"

__all__ = [
    "ABSTAIN",
    "Certificate",
    "GaussianAugClassifier",
    "SmoothedClassifier",
    "certify",
    "class_counts",
    "gaussian_augmentation_loss",
    "lower_confidence_bound",
    "predict",
    "upper_confidence_bound",
]
