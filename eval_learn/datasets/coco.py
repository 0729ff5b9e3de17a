"""``coco_10k``: the COCO-10k captions of the AdvUnlearn / UnlearnDiffAtk utility protocol (Zhang et al., "Defensive
Unlearning with Adversarial Training for Robust Concept Erasure in Diffusion Models", NeurIPS 2024, arXiv:2405.15234),
shipped with the package: 9,969 COCO-2014 captions, each with its own ``evaluation_seed`` and its COCO image id
(``case_number``), from the UnlearnDiffAtk release (MIT license, see ``eval_learn/data/prompts``).

It is what erasure costs on ordinary prompts: the default prompts of ``clip_score`` and ``fid``. ``limit`` keeps the
first N captions (the set has no strata); the FID reference images are the COCO images of the same ``case_number``.
"""

from __future__ import annotations

from eval_learn.datasets.i2p import Bundled


class Coco10k(Bundled):
    name = "coco_10k"
    file = "coco_10k.csv"
