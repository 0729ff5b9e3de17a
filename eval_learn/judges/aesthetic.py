"""``aesthetic``: the LAION aesthetic predictor (christophschuhmann/improved-aesthetic-predictor, the
``sac+logos+ava1-l14-linearMSE.pth`` model of LAION-5B's aesthetic subsets) as a judge: how much people like an
image on average, on AVA's 1–10 scale.

The predictor is an MLP on the L2-normalised CLIP ViT-L/14 image embedding (768 numbers), as the release's
``simple_inference.py`` (commit 6934dd81) defines it: Linear(d, 1024) → Linear(1024, 128) → Linear(128, 64) →
Linear(64, 16) → Linear(16, 1), with dropout between the first four (inactive at inference) and no activation (the
published "linearMSE" models; the ReLUs are commented out in the release). Its state dict keys are
``layers.{0,2,4,6,7}.{weight,bias}``, which is what ``weights`` must hold: the release's ``.pth`` (read with
``torch.load(weights_only=True)``, which refuses anything but tensors) or a ``.safetensors`` file. The file is checked
(keys, shapes) when the config is validated, and its SHA-256 goes into the settings.

The image side is the ``clip`` judge of the same model (openai/clip-vit-large-patch14 by default: the release's
``clip.load("ViT-L/14")``), whose embeddings the engine caches: the predictor never embeds an image a CLIP-based judge
or clip_score already embedded. Differences from the release: OpenAI's ``clip`` package preprocesses with
torchvision (resize 224 bicubic, centre crop, normalise) where we use the transformers image processor's PIL path
(the same steps), and the release encodes in fp16 on CUDA where we embed in the configured dtype (fp32 by default) and
run the MLP in float64; scores move in the third decimal at most between such choices.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eval_learn.configs import ConfigError
from eval_learn.errors import RunError
from eval_learn.judges.clip import CLIPConfig, OnCLIPEmbedding
from eval_learn.models import file_sha256

RELEASE = (
    "christophschuhmann/improved-aesthetic-predictor simple_inference.py @6934dd81792f086e613a121dbce43082cb8be85e"
)
LAYERS = ("layers.0", "layers.2", "layers.4", "layers.6", "layers.7")  # the Linear layers of the release's MLP
WIDTHS = (1024, 128, 64, 16, 1)  # their output sizes
HELP = ("give the release's sac+logos+ava1-l14-linearMSE.pth (github.com/christophschuhmann/improved-aesthetic-"
        "predictor) or a .safetensors file with the same keys: judge={name: aesthetic, weights: FILE}")  # fmt: skip


def read_weights(path: str) -> dict[str, torch.Tensor]:
    """The MLP's five (weight, bias) pairs, checked for the release's layout; ConfigError if unreadable."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"aesthetic predictor weights '{path}' is not a file; {HELP}")
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            tensors = load_file(str(file))
        elif file.suffix in (".pth", ".pt"):
            tensors = torch.load(file, map_location="cpu", weights_only=True)
        else:
            raise ConfigError(f"aesthetic predictor weights '{path}' must be a .pth or .safetensors file; {HELP}")
    except ConfigError:
        raise
    except Exception as err:  # noqa: BLE001 - any failure means "not a readable weights file"
        raise ConfigError(
            f"aesthetic predictor weights '{path}' cannot be read ({type(err).__name__}: {err})"
        ) from None
    if not isinstance(tensors, dict):
        raise ConfigError(f"aesthetic predictor weights '{path}' must hold a state dict, got {type(tensors).__name__}")
    expected = {f"{layer}.{kind}" for layer in LAYERS for kind in ("weight", "bias")}
    if set(tensors) != expected:
        raise ConfigError(f"aesthetic predictor weights '{path}' hold {sorted(tensors)}, not the release MLP's "
                          f"{sorted(expected)}")  # fmt: skip
    inputs = tensors["layers.0.weight"].shape[-1]
    for layer, width in zip(LAYERS, WIDTHS, strict=True):
        weight, bias = tensors[f"{layer}.weight"], tensors[f"{layer}.bias"]
        if weight.ndim != 2 or weight.shape[0] != width or bias.shape != (width,) or weight.shape[1] != inputs:
            raise ConfigError(f"aesthetic predictor weights '{path}': {layer} is {tuple(weight.shape)}, the release's "
                              f"MLP has ({width}, {inputs})")  # fmt: skip
        inputs = width
        if not torch.isfinite(weight).all() or not torch.isfinite(bias).all():
            raise ConfigError(f"aesthetic predictor weights '{path}': {layer} holds non-finite values")
    return {k: v.to(torch.float64) for k, v in tensors.items()}


@dataclass
class AestheticConfig(CLIPConfig):
    weights: str | None = None  # the MLP: the release's .pth or a .safetensors with its keys; required

    def validate(self) -> None:
        super().validate()
        if not self.weights:
            raise ConfigError(f"the aesthetic judge needs the predictor's weights; {HELP}")
        read_weights(self.weights)


def predict(layers: dict[str, torch.Tensor], embedding: np.ndarray) -> float:
    """The MLP on the L2-normalised embedding (the release's ``normalized``: a zero vector stays zero), in float64."""
    x = torch.as_tensor(np.asarray(embedding, dtype=np.float64))
    norm = x.norm()
    x = x / norm if norm > 0 else x
    for layer in LAYERS:
        x = torch.nn.functional.linear(x, layers[f"{layer}.weight"], layers[f"{layer}.bias"])
    return float(x[0])


class AestheticJudge(OnCLIPEmbedding):
    name = "aesthetic"
    config_cls = AestheticConfig
    config: AestheticConfig

    def load(self) -> None:
        self._layers = read_weights(self.config.weights or "")

    def settings(self) -> dict[str, Any]:
        return {
            **self.clip.settings(),
            "judge": "aesthetic",
            "weights": self.config.weights,
            "weights_sha256": file_sha256(self.config.weights or ""),
            "predictor": "MLP d-1024-128-64-16-1, no activations (dropout off), on the L2-normalised CLIP embedding",
            "release": RELEASE,
        }

    def combine(self, by_part: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
        inputs = self._layers["layers.0.weight"].shape[1]
        out = []
        for verdict in by_part["clip"]:
            if verdict["embedding"].shape[-1] != inputs:
                raise RunError(f"aesthetic predictor weights '{self.config.weights}' take {inputs} numbers but the CLIP "
                               f"model '{self.config.model}' embeds images in {verdict['embedding'].shape[-1]}; the "
                               f"release's predictors belong to openai/clip-vit-large-patch14 (768)")  # fmt: skip
            out.append({"aesthetic": predict(self._layers, verdict["embedding"])})
        return out
