"""Evaluation of explanations: mask-based localisation scores, deletion/insertion faithfulness
curves, feature ablation and randomisation sanity checks (see ``metrics``, ``faithfulness``,
``ablation``, ``sanity``)."""

from vebi.evaluate.ablation import (
    AblationResult,
    ClassAblation,
    SetAblation,
    Spread,
    UnionAblationResult,
    ablate,
    ablation_study,
    class_accuracies,
    classifier_evidence,
    union_ablation,
)
from vebi.evaluate.faithfulness import DeletionInsertion, FaithfulnessResult, perturbation_curves
from vebi.evaluate.metrics import (
    DEFAULT_THRESHOLDS,
    Estimate,
    IoUResult,
    IoUSweep,
    Localization,
    LocalizationResult,
    MassInMask,
    PointingGame,
)
from vebi.evaluate.sanity import SanityResult, cascading_randomisation, data_randomisation, ssim

__all__ = [
    "DEFAULT_THRESHOLDS",
    "AblationResult",
    "ClassAblation",
    "DeletionInsertion",
    "Estimate",
    "FaithfulnessResult",
    "IoUResult",
    "IoUSweep",
    "Localization",
    "LocalizationResult",
    "MassInMask",
    "PointingGame",
    "SanityResult",
    "SetAblation",
    "Spread",
    "UnionAblationResult",
    "ablate",
    "ablation_study",
    "cascading_randomisation",
    "class_accuracies",
    "classifier_evidence",
    "data_randomisation",
    "perturbation_curves",
    "ssim",
    "union_ablation",
]
