"""Explanation of predictions: backward rules (what, where, how), the stride fix, post-processing, the Explainer."""
