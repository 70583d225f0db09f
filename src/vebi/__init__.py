"""vebi: visual explanation by interpretation for PyTorch image classifiers."""

__version__ = "0.1.0"
