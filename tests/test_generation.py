"""Seeds belong to prompts: on the CPU an image does not depend on its batch neighbours (fixed-shape calls), and in
strict mode not on the batch size either. A broken image is never passed on."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eval_learn.compose import resolve_model
from eval_learn.engine.requests import GenerationRequest
from eval_learn.engine.sampling import GenerationMode, render
from eval_learn.errors import NonFiniteError
from eval_learn.runtime import RunContext
from eval_learn.techniques.free_run import FreeRun


def request(prompt: str, seed: int, guidance: float = 5.0) -> GenerationRequest:
    return GenerationRequest(prompt, seed, guidance, num_inference_steps=4, height=64, width=64)


A = request("a photo of a dog", 11)
NEIGHBOURS_1 = [request("a red car", 22), request("a painting of a tree", 33), request("a woman on a beach", 44)]
NEIGHBOURS_2 = [request("a blue house", 55), request("a church", 66)]


@pytest.fixture(scope="module")
def technique(tmp_path_factory):
    context = RunContext(resolve_model("tiny"), "cpu", torch.float32, 0, tmp_path_factory.mktemp("cache"))
    return FreeRun(FreeRun.config_cls(), context)


def test_fixed_shape_images_do_not_depend_on_their_neighbours_or_slot(technique) -> None:
    mode = GenerationMode("fixed_shape", 4)
    first = render(technique, [A, *NEIGHBOURS_1], mode)[0]
    last = render(technique, [*NEIGHBOURS_2, A], mode)[2]  # another slot, other neighbours, a padded call
    alone = render(technique, [A], mode)[0]
    assert np.array_equal(first, last) and np.array_equal(first, alone)


def test_strict_mode_is_identical_for_any_batch_size(technique) -> None:
    whole = render(technique, [A, *NEIGHBOURS_1], GenerationMode("strict", 1))
    alone = [render(technique, [r], GenerationMode("strict", 1))[0] for r in [A, *NEIGHBOURS_1]]
    assert all(np.array_equal(a, b) for a, b in zip(whole, alone, strict=True))


def test_batched_calls_differ_from_strict_at_most_by_rounding(technique) -> None:
    batched = render(technique, [A, *NEIGHBOURS_1], GenerationMode("batched", 4))
    strict = render(technique, [A, *NEIGHBOURS_1], GenerationMode("strict", 1))
    for a, b in zip(batched, strict, strict=True):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 2


def test_seed_and_guidance_change_the_image_and_requests_keep_their_order(technique) -> None:
    mode = GenerationMode("fixed_shape", 4)
    base, again, other_seed, other_scale = render(technique, [A, A, request(A.prompt, 12), request(A.prompt, 11, 1.5)],
                                                  mode)  # fmt: skip
    assert np.array_equal(base, again)
    assert not np.array_equal(base, other_seed) and not np.array_equal(base, other_scale)
    assert base.dtype == np.uint8 and base.shape == (64, 64, 3)


def test_default_mode_per_device() -> None:
    assert GenerationMode.for_device("cpu", 8, None) == GenerationMode("fixed_shape", 8)
    assert GenerationMode.for_device("cuda", 8, None) == GenerationMode("batched", 8)
    assert GenerationMode.for_device("cuda", 8, True) == GenerationMode("strict", 1)
    assert GenerationMode.for_device("cpu", 8, False) == GenerationMode("batched", 8)


def test_non_finite_images_stop_the_run(technique) -> None:
    decoder = technique.pipeline().vae.decoder
    handle = decoder.register_forward_hook(lambda module, args, out: out * float("nan"))
    try:
        with pytest.raises(NonFiniteError, match="NaN or infinite pixels"):
            render(technique, [A], GenerationMode("strict", 1))
    finally:
        handle.remove()
