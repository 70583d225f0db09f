"""Interpretation of relevant features: receptive fields, average crops of their top images, drawing, storage."""
