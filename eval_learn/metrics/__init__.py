"""Metrics, one per module; each owns its prompt dataset. See :mod:`eval_learn.registry` for the names."""
