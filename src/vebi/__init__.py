"""vebi: visual explanation by interpretation for PyTorch image classifiers.

    stats = vebi.collect(model, loader)              # one pass: streaming statistics
    relevance = vebi.fit_relevance(stats, mu=10.0)   # mu-LASSO relevant features per class
    interps = vebi.interpret(relevance, stats, dataset)
    explanations = vebi.Explainer(model, relevance)(images)
"""

__version__ = "0.1.0"

# Functions named like their modules (collect, interpret) must be bound after those modules load.
from vebi.errors import VebiError  # noqa: E402
from vebi.features import FeatureSpace  # noqa: E402
from vebi.layers import list_layers, resolve_layers  # noqa: E402
from vebi.stats import FeatureStats  # noqa: E402
from vebi.collect import collect  # noqa: E402
from vebi.relevance import Relevance, RelevantFeature, fit_relevance  # noqa: E402
from vebi.artifacts import load_relevance, load_stats, save_relevance, save_stats  # noqa: E402
from vebi.receptive import receptive_field  # noqa: E402
from vebi.interpret import Interpretation, interpret  # noqa: E402
from vebi.explain import Explainer, Explanation  # noqa: E402

__all__ = [
    "FeatureSpace", "FeatureStats", "Explainer", "Explanation", "Interpretation", "Relevance", "RelevantFeature",
    "VebiError", "__version__", "collect", "fit_relevance", "interpret", "list_layers", "load_relevance",
    "load_stats", "receptive_field", "resolve_layers", "save_relevance", "save_stats",
]
