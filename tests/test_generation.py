"""Seeds belong to prompts: an image does not depend on its batch."""

from __future__ import annotations

import numpy as np

from eval_learn.generation import generate_images
from eval_learn.types import PromptRecord

SETTINGS = {"num_inference_steps": 4, "guidance_scale": 5.0, "height": 64, "width": 64}
RECORDS = [
    PromptRecord(0, "a photo of a dog", 11),
    PromptRecord(1, "a red car", 22, guidance_scale=9.0),
    PromptRecord(2, "a painting of a tree", 33),
    PromptRecord(3, "a woman on a beach", 44),
]


def as_arrays(images):
    return [np.asarray(im) for im in images]


def test_batch_size_one_and_four_give_identical_images(tiny_pipe) -> None:
    whole = as_arrays(generate_images(tiny_pipe, RECORDS, **SETTINGS))
    single = [as_arrays(generate_images(tiny_pipe, [r], **SETTINGS))[0] for r in RECORDS]
    for a, b in zip(whole, single, strict=True):
        assert np.array_equal(a, b)


def test_batched_calls_differ_at_most_by_rounding(tiny_pipe) -> None:
    batched = as_arrays(generate_images(tiny_pipe, RECORDS, **SETTINGS, batch_invariant=False))
    alone = as_arrays(generate_images(tiny_pipe, RECORDS, **SETTINGS))
    for a, b in zip(batched, alone, strict=True):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 2


def test_seed_and_guidance_change_the_image(tiny_pipe) -> None:
    base = as_arrays(generate_images(tiny_pipe, [RECORDS[0]], **SETTINGS))[0]
    other_seed = as_arrays(generate_images(tiny_pipe, [PromptRecord(0, RECORDS[0].prompt, 12)], **SETTINGS))[0]
    other_scale = as_arrays(generate_images(tiny_pipe, [PromptRecord(0, RECORDS[0].prompt, 11, 1.5)], **SETTINGS))[0]
    again = as_arrays(generate_images(tiny_pipe, [RECORDS[0]], **SETTINGS))[0]
    assert np.array_equal(base, again)
    assert not np.array_equal(base, other_seed)
    assert not np.array_equal(base, other_scale)
