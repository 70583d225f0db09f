"""vebi: visual explanation by interpretation for PyTorch image classifiers.

    stats = vebi.collect(model, loader)              # one pass: streaming statistics
    relevance = vebi.fit_relevance(stats, mu=10.0)   # mu-LASSO relevant features per class
    interps = vebi.interpret(relevance, stats, dataset)
    explanations = vebi.Explainer(model, relevance)(images)

The names below load their modules on first use (``import vebi`` does not import torch), so
the command line and the error type stay cheap to import.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from vebi.errors import VebiError

try:
    __version__ = version("vebi")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

_EXPORTS: dict[str, str] = {
    "FeatureSpace": "vebi.core.features",
    "FeatureStats": "vebi.core.stats",
    "StatsConfig": "vebi.core.stats",
    "collect": "vebi.core.collect",
    "Relevance": "vebi.core.relevance",
    "RelevantFeature": "vebi.core.relevance",
    "fit_relevance": "vebi.core.relevance",
    "load_relevance": "vebi.io.artifacts",
    "load_stats": "vebi.io.artifacts",
    "save_relevance": "vebi.io.artifacts",
    "save_stats": "vebi.io.artifacts",
    "list_layers": "vebi.layers",
    "resolve_layers": "vebi.layers",
    "receptive_field": "vebi.interpretation.receptive",
    "Interpretation": "vebi.interpretation.crops",
    "interpret": "vebi.interpretation.crops",
    "Explainer": "vebi.explanation.explainer",
    "Explanation": "vebi.explanation.result",
    "Run": "vebi.run",
}

__all__ = [
    "Explainer", "Explanation", "FeatureSpace", "FeatureStats", "Interpretation", "Relevance", "RelevantFeature",
    "Run", "StatsConfig", "VebiError", "__version__", "collect", "fit_relevance", "interpret", "list_layers", "load_relevance",
    "load_stats", "receptive_field", "resolve_layers", "save_relevance", "save_stats",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'vebi' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:
    from vebi.core.collect import collect
    from vebi.core.features import FeatureSpace
    from vebi.core.relevance import Relevance, RelevantFeature, fit_relevance
    from vebi.core.stats import FeatureStats, StatsConfig
    from vebi.explanation.explainer import Explainer
    from vebi.explanation.result import Explanation
    from vebi.interpretation.crops import Interpretation, interpret
    from vebi.interpretation.receptive import receptive_field
    from vebi.io.artifacts import load_relevance, load_stats, save_relevance, save_stats
    from vebi.layers import list_layers, resolve_layers
    from vebi.run import Run
