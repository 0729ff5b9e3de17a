"""Attacks and probes: searches, against the model under test, for an input that makes the judge see the concept.

One part per module (``unlearndiffatk``, ``p4d``, ``ring_a_bell``, ...), registered in
:data:`eval_learn.registry.ATTACKS`; the interface every attack implements is in :mod:`eval_learn.attacks.base`.
"""
