"""Training images of a MiniWorld concept with its exact pixel mask, for techniques that train on masked images.

MACE (``mask_source: miniworld``) takes its images and masks from here instead of a segmentation model: the MiniWorld
draws every scene itself, so it knows where the concept is (the shape for a colour or shape, the rest of the image
for a background). Techniques reach it through the ``MASKED_IMAGES`` registry (:mod:`eval_learn.registry`), never by
importing the MiniWorld.
"""

from __future__ import annotations

import numpy as np

from eval_learn.configs import ConfigError
from eval_learn.miniworld.world import BACKGROUNDS, COLOURS, SHAPES, SIZE, Scene, concept_kind, render_with_mask


class MiniWorldImages:
    """The MiniWorld as a source of masked training images."""

    concepts = "MiniWorld concepts (a colour, shape or background)"  # what it can draw, for messages

    @staticmethod
    def covers(concept: str) -> bool:
        return concept_kind(concept) is not None

    @staticmethod
    def render(concept: str, seeds: list[int], height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """One scene of ``concept`` per seed (its other attributes drawn from the seed): uint8 [N, H, W, 3] images
        and bool [N, H, W] masks of where the concept is."""
        if (height, width) != (SIZE, SIZE):
            raise ConfigError(f"MiniWorld images are {SIZE}x{SIZE}; this model makes {height}x{width} images "
                              f"(use model=miniworld)")  # fmt: skip
        kind, pixels, masks = concept_kind(concept), [], []
        for seed in seeds:
            rng = np.random.default_rng(seed)
            scene = Scene(
                concept if kind == "colour" else str(rng.choice(list(COLOURS))),
                concept if kind == "shape" else str(rng.choice(SHAPES)),
                concept if kind == "background" else str(rng.choice(BACKGROUNDS)),
            )
            img, mask = render_with_mask(scene, rng)
            pixels.append(img)
            masks.append(~mask if kind == "background" else mask)
        return np.stack(pixels), np.stack(masks)
