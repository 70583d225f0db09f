"""Files of a run: atomic writes, artifacts bound to their inputs, collection checkpoints."""
