"""smoothsk: certified robustness by randomized smoothing as a scikit-learn workflow."""

from smoothsk._version import __version__ as __version__
from smoothsk.base import SmoothedClassifier
from smoothsk.certification.adaptive import RadiusCertificate, certify_radius, round_sizes
from smoothsk.certification.bounds import lower_confidence_bound, upper_confidence_bound
from smoothsk.certification.certificate import ABSTAIN, Certificate
from smoothsk.certification.core import certify, predict
from smoothsk.certification.incremental import RecordedVotes, certify_incremental, record_votes
from smoothsk.certification.radii import RadiiCertificate, certify_radii
from smoothsk.certification.sampling import class_counts
from smoothsk.methods.attacks import (
    SmoothedAttackResult,
    smoothed_attack_objective,
    smoothed_pgd_attack,
)
from smoothsk.methods.catrs import (
    CATRSClassifier,
    catrs_loss,
    kl_pgd_noise_attack,
    smoothed_targets,
)
from smoothsk.methods.consistency import ConsistencyClassifier, consistency_loss
from smoothsk.methods.crt import CRTStudent, crt_loss
from smoothsk.methods.denoised import DenoisedSmoothingClassifier, denoiser_loss, finetune_denoiser
from smoothsk.methods.ensemble import EnsembleNetwork, SmoothedEnsembleClassifier
from smoothsk.methods.gaussian import GaussianAugClassifier, gaussian_augmentation_loss
from smoothsk.methods.macer import MACERClassifier, macer_loss
from smoothsk.methods.pretrained import PretrainedSmoothingClassifier
from smoothsk.methods.smoothadv import SmoothAdvClassifier, smoothadv_loss
from smoothsk.methods.smoothmix import (
    SmoothMixClassifier,
    mixup_towards_uniform,
    smoothmix_loss,
    warmup_factor,
)
from smoothsk.methods.stability import StabilityClassifier, stability_loss
from smoothsk.metrics import (
    average_certified_radius,
    average_certified_radius_scorer,
    certified_accuracy,
    certified_accuracy_scorer,
)
from smoothsk.robustness import EmpiricalRobustness, empirical_robustness

__all__ = [
    "ABSTAIN",
    "CATRSClassifier",
    "CRTStudent",
    "DenoisedSmoothingClassifier",
    "PretrainedSmoothingClassifier",
    "ConsistencyClassifier",
    "MACERClassifier",
    "SmoothAdvClassifier",
    "EmpiricalRobustness",
    "StabilityClassifier",
    "Certificate",
    "GaussianAugClassifier",
    "SmoothMixClassifier",
    "SmoothedAttackResult",
    "SmoothedClassifier",
    "average_certified_radius",
    "average_certified_radius_scorer",
    "certified_accuracy",
    "certified_accuracy_scorer",
    "mixup_towards_uniform",
    "smoothed_attack_objective",
    "smoothed_pgd_attack",
    "smoothmix_loss",
    "warmup_factor",
    "certify",
    "certify_radius",
    "certify_radii",
    "certify_incremental",
    "record_votes",
    "RecordedVotes",
    "RadiiCertificate",
    "SmoothedEnsembleClassifier",
    "EnsembleNetwork",
    "round_sizes",
    "RadiusCertificate",
    "class_counts",
    "catrs_loss",
    "consistency_loss",
    "kl_pgd_noise_attack",
    "smoothed_targets",
    "crt_loss",
    "denoiser_loss",
    "finetune_denoiser",
    "macer_loss",
    "smoothadv_loss",
    "empirical_robustness",
    "stability_loss",
    "gaussian_augmentation_loss",
    "lower_confidence_bound",
    "predict",
    "upper_confidence_bound",
]
