"""SLD against its authors' release (ml-research/safe-latent-diffusion, SLDPipeline): golden/sld_images.safetensors
holds the images the release's own pipeline made on model=tiny's components (its metadata says how); the pipeline
our SLD runs, with our recipes' settings, must make the same images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from eval_learn.configs import from_mapping
from eval_learn.recipes import find_recipe
from eval_learn.techniques.sld import SLDConfig, safe_pipeline

GOLDEN = Path(__file__).parent / "golden" / "sld_images.safetensors"
RELEASE = load_file(GOLDEN)
# Images in [0, 1]; the same float32 computation in another pipeline's code: measured max |difference| 0 on tiny.
TOLERANCE = 1e-4


def image(tiny_pipe, config: SLDConfig, **overrides) -> torch.Tensor:
    """The release call's image: latents 8x8 on tiny (the release sizes latents by height // 8, tiny's VAE by 4)."""
    pipe = safe_pipeline(tiny_pipe, config.safety_text())
    out = pipe("a red circle", generator=torch.Generator().manual_seed(0), guidance_scale=5.0, num_inference_steps=50,
               height=32, width=32, output_type="np", **{**config.settings(), **overrides})  # fmt: skip
    return torch.from_numpy(np.asarray(out.images[0])).float()


@pytest.mark.parametrize(("recipe", "golden"), [("sld", "medium"), ("sld/strong", "strong")])
def test_recipe_images_equal_the_releases(tiny_pipe, recipe: str, golden: str) -> None:
    with safe_open(GOLDEN, "pt") as f:
        assert f.metadata()["commit"] == find_recipe("sld").info.follows.commit
    config = from_mapping(SLDConfig, find_recipe(recipe).config, recipe)
    ours = image(tiny_pipe, config)
    difference = float((ours - RELEASE[golden]).abs().max())
    assert difference <= TOLERANCE, difference
    # The comparison can fail: safety guidance moves this image by far more than the tolerance.
    assert float((RELEASE["no_sld"] - RELEASE[golden]).abs().max()) > 100 * TOLERANCE


def test_the_diffusers_prefix_would_change_the_image(tiny_pipe) -> None:
    """diffusers' default safety text starts with "an image showing "; the release's (and ours) does not."""
    config = from_mapping(SLDConfig, {}, "sld")
    assert not config.safety_text().startswith("an image showing")
    prefixed = from_mapping(SLDConfig, {"erase_concept": "an image showing " + config.safety_text()}, "sld")
    assert float((image(tiny_pipe, prefixed) - RELEASE["medium"]).abs().max()) > 100 * TOLERANCE
