"""Evaluation of explanations: mask-based localisation scores, deletion/insertion faithfulness
curves, and feature ablation (see ``metrics``, ``faithfulness``, ``ablation``)."""

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
    "SetAblation",
    "Spread",
    "UnionAblationResult",
    "ablate",
    "ablation_study",
    "class_accuracies",
    "classifier_evidence",
    "perturbation_curves",
    "union_ablation",
]
