"""The probes beyond prompts on model=tiny: diffusion completion with k = 0 is the model under test's own image and
with k = all steps the base model's; the noisy DDIM step is DDIM's for η ≤ 1 and differs above; inpainting keeps the
unmasked context and paints only the centre; each reports tries like an attack; and each samples with the technique's
own sampling changes (negative_prompt's and SLD's call arguments), not free_run's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from eval_learn.attacks.diffusion_completion import DiffusionCompletionConfig, completed
from eval_learn.attacks.inpainting_context import InpaintingContextConfig, centre_mask, inpainting_pipeline
from eval_learn.attacks.noise_search import NoiseSearchConfig, noisy_scheduler
from eval_learn.attacks.probing import generator, scheduler_swapped, to_uint8
from eval_learn.configs import ConfigError, from_mapping
from eval_learn.engine.attacking import ModelTarget
from eval_learn.errors import RunError
from eval_learn.registry import ATTACKS
from eval_learn.techniques.free_run import FreeRun
from eval_learn.techniques.negative_prompt import NegativePrompt, NegativePromptConfig
from eval_learn.techniques.safree import SAFREE, SAFREEConfig
from eval_learn.techniques.sld import SLD, SLDConfig
from eval_learn.types import PromptRecord
from tests.attack_target import tiny_context, tiny_target

PROMPT, SEED = "a photo of a red car", 7


@pytest.fixture(scope="module")
def target(tmp_path_factory) -> ModelTarget:
    return tiny_target(tmp_path_factory.mktemp("cache"))


def test_diffusion_completion_ends_are_the_two_models_own_images(target: ModelTarget) -> None:
    steps = target.generation_settings()["num_inference_steps"]
    erased, base = target.render([PROMPT], SEED)[0], target.render_base([PROMPT], SEED)[0]
    assert np.abs(erased.astype(int) - base).max() > 10  # UCE changed the image: the ends are distinguishable
    assert np.array_equal(completed(target, PROMPT, SEED, 0), erased)
    assert np.array_equal(completed(target, PROMPT, SEED, steps), base)
    middle = completed(target, PROMPT, SEED, steps // 2)
    assert not np.array_equal(middle, erased) and not np.array_equal(middle, base)


@pytest.mark.slow
def test_noisy_ddim_is_ddim_up_to_eta_one_and_adds_noise_beyond(target: ModelTarget) -> None:
    pipe = target.pipeline()

    def image(eta: float, scale: float | None) -> np.ndarray:
        if scale is None:  # diffusers' own DDIM step
            return to_uint8(target.sample(PROMPT, generator(SEED), eta=eta, output_type="np"))
        with scheduler_swapped(pipe, noisy_scheduler(pipe, scale)):
            return to_uint8(target.sample(PROMPT, generator(SEED), eta=eta, output_type="np"))

    assert np.array_equal(image(0.0, 1.0), target.render([PROMPT], SEED)[0])
    assert np.array_equal(image(0.7, 1.0), image(0.7, None))
    assert not np.array_equal(image(0.7, 1.5), image(0.7, 1.0))  # the scale multiplies the injected noise
    assert not np.array_equal(image(1.5, 1.0), image(1.0, 1.0))
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"  # the swap is undone


def test_noise_search_walks_the_grid_and_records_n(target: ModelTarget) -> None:
    cfg = NoiseSearchConfig(eta_values=[1.0, 1.5], variance_scales=[1.0, 1.04])
    outcome = ATTACKS.get("noise_search")(cfg).run(target, PromptRecord(0, PROMPT, SEED))
    tries = outcome.extra["tries"]
    assert outcome.extra["candidates"] == 4 and outcome.extra["n"] == len(tries) == outcome.iterations
    assert [(t["eta"], t["variance_scale"]) for t in tries] == [(1.0, 1.0), (1.0, 1.04), (1.5, 1.0), (1.5, 1.04)][
        : len(tries)
    ]
    assert outcome.success == any(t["success"] for t in tries) and target.judge([outcome.image]) == [outcome.success]
    if outcome.success:
        assert outcome.success_step == len(tries) - 1


def test_inpainting_keeps_the_context_and_paints_the_centre(target: ModelTarget) -> None:
    context = Image.fromarray(target.render_base([PROMPT], SEED)[0])
    mask = centre_mask(64, 64, 0.5)
    assert np.asarray(mask).sum() // 255 == 33 * 33  # inclusive corners, as the release draws them
    pipe = inpainting_pipeline(target.pipeline())

    def latents(prompt: str) -> torch.Tensor:
        return target.sample(prompt, generator(SEED), pipe=pipe, image=context, mask_image=mask, strength=1.0,
                             output_type="latent")  # fmt: skip

    a, b = latents(PROMPT), latents("a dog in the sea")
    masked = F.interpolate(torch.from_numpy(np.asarray(mask, np.float32) / 255)[None, None], size=a.shape[-2:])
    outside = (F.max_pool2d(masked, 3, 1, 1) == 0).expand_as(a)  # one latent pixel away from the mask's edge
    assert torch.equal(a[outside], b[outside])  # the context is the image's, whatever the prompt
    assert not torch.allclose(a[~outside], b[~outside])  # the centre is painted from the prompt


def test_inpainting_run_reports_one_try(target: ModelTarget) -> None:
    outcome = ATTACKS.get("inpainting_context")(InpaintingContextConfig()).run(target, PromptRecord(0, PROMPT, SEED))
    assert outcome.iterations == 1 and outcome.image.shape == (64, 64, 3)
    assert target.judge([outcome.image]) == [outcome.success]


def test_diffusion_completion_run_stops_at_success(target: ModelTarget) -> None:
    cfg = DiffusionCompletionConfig(base_steps=[0, 2, 10])
    outcome = ATTACKS.get("diffusion_completion")(cfg).run(target, PromptRecord(0, PROMPT, SEED))
    tries = outcome.extra["tries"]
    assert [t["base_steps"] for t in tries] == [0, 2, 10][: len(tries)]
    assert outcome.success == tries[-1]["success"] and not any(t["success"] for t in tries[:-1])


@pytest.mark.parametrize(
    ("cls", "settings", "message"),
    [(DiffusionCompletionConfig, {"base_steps": []}, "base_steps"), (DiffusionCompletionConfig, {"base_steps": [-1]},
      "base_steps"), (NoiseSearchConfig, {"eta_values": [-1.0]}, "eta_values"),
     (InpaintingContextConfig, {"mask_fraction": 0}, "mask_fraction")],
)  # fmt: skip
def test_bad_settings_are_config_errors(cls, settings: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        from_mapping(cls, settings, "probe")


# --- the technique's own sampling changes ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sampled(tmp_path_factory) -> dict[str, ModelTarget]:
    """Targets on tiny for techniques that change only sampling, by call arguments, and for free_run."""
    cache = tmp_path_factory.mktemp("sampled")
    techniques = {
        "negative_prompt": NegativePrompt(NegativePromptConfig(erase_concept="red car"), tiny_context(cache)),
        "sld": SLD(SLDConfig(erase_concept="red car", preset="max"), tiny_context(cache)),
        "free_run": FreeRun(FreeRun.config_cls(), tiny_context(cache)),
    }
    for technique in techniques.values():
        technique.prepare()
    return {name: tiny_target(cache, technique=technique) for name, technique in techniques.items()}


@pytest.mark.parametrize("name", ["negative_prompt", pytest.param("sld", marks=pytest.mark.slow)])
def test_a_probe_samples_with_the_techniques_own_sampling_changes(sampled: dict[str, ModelTarget], name: str) -> None:
    target, free = sampled[name], sampled["free_run"]
    benchmark = target.render([PROMPT], SEED)[0]  # the image the technique's benchmark run makes
    assert np.abs(benchmark.astype(int) - free.render([PROMPT], SEED)[0]).max() > 10  # the technique changed it
    own = completed(target, PROMPT, SEED, 0)  # diffusion completion, k = 0: the model under test alone
    assert np.array_equal(own, benchmark)
    assert not np.array_equal(own, completed(free, PROMPT, SEED, 0))
    with scheduler_swapped(target.pipeline(), noisy_scheduler(target.pipeline(), 1.0)):  # noise search, η = 0
        assert np.array_equal(to_uint8(target.sample(PROMPT, generator(SEED), eta=0.0, output_type="np")), benchmark)


@pytest.mark.slow
def test_inpainting_applies_the_techniques_call_arguments_or_refuses(sampled: dict[str, ModelTarget]) -> None:
    target, free = sampled["negative_prompt"], sampled["free_run"]
    record = PromptRecord(0, PROMPT, SEED)
    probe = ATTACKS.get("inpainting_context")(InpaintingContextConfig())
    image = probe.run(target, record).image
    context = Image.fromarray(target.render_base([PROMPT], SEED)[0])
    mask = centre_mask(64, 64, 0.5)
    by_hand = inpainting_pipeline(target.pipeline())(
        prompt=PROMPT, negative_prompt="red car", image=context, mask_image=mask, strength=1.0,
        generator=generator(SEED), num_inference_steps=target.settings.num_inference_steps,
        guidance_scale=target.settings.guidance_scale, height=64, width=64, output_type="np",
    ).images  # fmt: skip
    assert np.array_equal(image, to_uint8(by_hand))  # the negative prompt is applied, nothing else changes
    assert not np.array_equal(image, probe.run(free, record).image)
    with pytest.raises(RunError, match="sld_guidance_scale"):  # SLD's settings only its own pipeline takes
        probe.run(sampled["sld"], record)


@pytest.mark.slow
def test_diffusion_completion_carries_safrees_embeddings_and_callbacks(sampled: dict[str, ModelTarget]) -> None:
    """SAFREE passes its filtered embeddings and an SVF callback per call: k = 0 is its benchmark image."""
    free = sampled["free_run"]
    technique = SAFREE(
        from_mapping(SAFREEConfig, {"erase_concept": "red car"}, "safree"), free.session.technique.context
    )
    technique.prepare()
    target = tiny_target(free.session.cache_dir.parent, technique=technique)
    benchmark = target.render([PROMPT], SEED)[0]
    assert np.abs(benchmark.astype(int) - free.render([PROMPT], SEED)[0]).max() > 10
    assert np.array_equal(completed(target, PROMPT, SEED, 0), benchmark)


def test_a_pipeline_without_prompt_embeds_is_refused_with_a_clear_error(sampled: dict[str, ModelTarget]) -> None:
    """SLD's pipeline takes no text-encoder outputs: concept inversion's embedding cannot be rendered through it."""
    with pytest.raises(RunError, match="takes no prompt_embeds"):
        sampled["sld"].render_embeddings(torch.zeros(1, 16, 32), SEED)
