"""Evaluation of explanations: mask-based localisation scores, deletion/insertion faithfulness
curves, and feature ablation (see ``metrics``, ``faithfulness``, ``ablation``)."""

from vebi.evaluate.ablation import (
    AblationResult,
    ClassAblation,
    UnionAblationResult,
    ablate,
    ablation_curves,
    class_accuracies,
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
    "UnionAblationResult",
    "ablate",
    "ablation_curves",
    "class_accuracies",
    "perturbation_curves",
    "union_ablation",
]
