"""Concept-erasure techniques, one per module; see :mod:`eval_learn.registry` for the names."""
