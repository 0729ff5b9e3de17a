"""``fid_features``: the feature network of FID (Heusel et al., "GANs Trained by a Two Time-Scale Update Rule Converge
to a Local Nash Equilibrium", NeurIPS 2017, arXiv:1706.08500); its verdict on an image is the image's feature vector.

``network: inception`` (the default) is torchmetrics' ``NoTrainInceptionV3``: torch-fidelity's port of the TF
Inception graph and weights (``weights-inception-2015-12-05-6726825d.pth``, torch-fidelity v0.2.0) that published FID
numbers are computed with, 2048-d pool3 features. It needs ``pip install 'eval-learn[fid]'`` (torch-fidelity).
Any other network is given as ``package.module:factory``, a callable that returns an ``nn.Module`` mapping uint8
images ``(N, 3, H, W)`` to ``(N, d)`` features (the tests use ``eval_learn.judges.tiny:tiny_feature_network``).

Every image is converted to RGB and centre-cropped to a square (a no-op for generated images; COCO photos are not
square), then, by ``resize``:

- ``pil_bicubic`` (default): resized to 299×299 with PIL bicubic in uint8 before the network (Inception's own resize
  is then the identity) — the "clean" resizer of T2IBenchmark, which the AdvUnlearn / UnlearnDiffAtk COCO-10k FID
  numbers come from, and close to clean-fid (Parmar et al., CVPR 2022), which resizes in float;
- ``tf1_bilinear``: handed over at its own size; Inception resizes to 299 with torch-fidelity's TensorFlow-1
  bilinear (torchmetrics ``antialias=False``), as the original TTUR implementation did;
- ``antialias``: as above with torch's antialiased bilinear (torchmetrics' default).

Custom networks get the cropped image at its own size except under ``pil_bicubic``. One image per forward pass: a
verdict (cached per image) must not depend on the batch it was computed in.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import inspect
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image as PILImage
from PIL.Image import Image

from eval_learn.configs import ConfigError, require
from eval_learn.errors import RunError
from eval_learn.judges.base import Judge, JudgeConfig
from eval_learn.models import file_sha256
from eval_learn.runtime import package_version

log = logging.getLogger(__name__)

INPUT_SIZE = 299  # Inception v3's input size
INCEPTION_FEATURES = 2048
INCEPTION_WEIGHTS = "weights-inception-2015-12-05-6726825d.pth"
RESIZE_POLICIES = {
    "pil_bicubic": "RGB, centre square crop, PIL bicubic resize to 299x299 in uint8, then the network",
    "tf1_bilinear": "RGB, centre square crop, then the network; Inception resizes to 299x299 with torch-fidelity's "
    "TensorFlow-1 compatible bilinear (torchmetrics antialias=False)",
    "antialias": "RGB, centre square crop, then the network; Inception resizes to 299x299 with torch's antialiased "
    "bilinear (torchmetrics antialias=True)",
}
_FIDELITY_HELP = (
    "The default FID feature extractor is torch-fidelity's TF-Inception port: pip install 'eval-learn[fid]' (or "
    "torch-fidelity), or give another network (feature_extractor=package.module:factory)"
)


# Modules that moved, so that a saved config naming the old place still runs.
MOVED_MODULES = {"eval_learn.models.tiny_judges": "eval_learn.judges.tiny"}


def _factory(spec: str) -> Any:
    module_name, _, attr = spec.partition(":")
    if module_name in MOVED_MODULES:
        log.warning("feature_extractor '%s': %s is now %s (the old name is deprecated)", spec, module_name,
                    MOVED_MODULES[module_name])  # fmt: skip
        module_name = MOVED_MODULES[module_name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(f"feature_extractor '{spec}': cannot import '{module_name}' ({err})") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ConfigError(f"feature_extractor '{spec}': '{module_name}' has no callable '{attr}'")
    return factory


@dataclass
class FIDFeaturesConfig(JudgeConfig):
    network: str = "inception"  # inception (torch-fidelity's TF-Inception) | package.module:factory
    resize: Literal["pil_bicubic", "tf1_bilinear", "antialias"] = "pil_bicubic"
    inception_weights: str | None = None  # a local copy of weights-inception-2015-12-05-6726825d.pth; null: download

    def validate(self) -> None:
        if self.network != "inception":
            module_name, sep, attr = self.network.partition(":")
            require(bool(sep and module_name and attr),
                    f"feature_extractor must be 'inception' or 'package.module:factory', got '{self.network}'")  # fmt: skip
        if self.inception_weights is not None:
            require(self.network == "inception", "inception_weights is only used by the inception network")
            require(
                Path(self.inception_weights).is_file(), f"inception_weights '{self.inception_weights}' is not a file"
            )


class FIDFeatures(Judge):
    name = "fid_features"
    config_cls = FIDFeaturesConfig
    config: FIDFeaturesConfig

    @classmethod
    def preflight(cls, config: FIDFeaturesConfig) -> None:
        if config.network == "inception":
            if importlib.util.find_spec("torch_fidelity") is None:
                raise ConfigError(_FIDELITY_HELP)
            if config.inception_weights is None:
                cached = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS
                if not cached.is_file():
                    log.info("FID: the Inception weights (%s) are not in %s; torch-fidelity downloads them from GitHub "
                             "when the network first loads (offline: give inception_weights=FILE)", INCEPTION_WEIGHTS,
                             cached.parent)  # fmt: skip
        else:
            _factory(config.network)

    @functools.cached_property
    def _custom(self) -> torch.nn.Module:
        module = _factory(self.config.network)()
        if not isinstance(module, torch.nn.Module):
            raise ConfigError(f"feature_extractor '{self.config.network}' returned {type(module).__name__}, not an "
                              f"nn.Module")  # fmt: skip
        return module.eval()

    def num_features(self) -> int:
        """Feature dimension, known before the network loads (Inception: 2048; a custom network is built)."""
        if self.config.network == "inception":
            return INCEPTION_FEATURES
        declared = getattr(self._custom, "num_features", None)
        if isinstance(declared, int):
            return declared
        with torch.no_grad():  # as torchmetrics does for a network without num_features
            return int(self._custom(torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE, dtype=torch.uint8)).shape[-1])

    def load(self) -> None:
        if self.config.network == "inception":
            from torchmetrics.image.fid import NoTrainInceptionV3

            try:
                network = NoTrainInceptionV3(name="inception-v3-compat", features_list=[str(INCEPTION_FEATURES)],
                                             feature_extractor_weights_path=self.config.inception_weights,
                                             antialias=self.config.resize == "antialias")  # fmt: skip
            except ModuleNotFoundError:
                raise RunError(_FIDELITY_HELP) from None
            except OSError as err:  # the weights download failed
                raise RunError(f"cannot load the FID Inception weights ({err}); download {INCEPTION_WEIGHTS} from the "
                               f"torch-fidelity v0.2.0 release and give inception_weights=FILE") from None  # fmt: skip
        else:
            network = self._custom
        self._network = network.eval().to(self.device)

    def settings(self) -> dict[str, Any]:
        common = {"judge": "fid_features", "resize": self.config.resize, "preprocessing": RESIZE_POLICIES[self.config.resize],
                  "input": "uint8 RGB tensor (1, 3, H, W), one image per forward pass",
                  "torchmetrics_version": package_version("torchmetrics")}  # fmt: skip
        if self.config.network == "inception":
            weights = self.config.inception_weights
            return {**common, "network": "inception",
                    "implementation": "torchmetrics NoTrainInceptionV3 (torch-fidelity 'inception-v3-compat'), pool3",
                    "num_features": INCEPTION_FEATURES, "torch_fidelity_version": package_version("torch-fidelity"),
                    "weights": weights or f"{INCEPTION_WEIGHTS} (torch-fidelity v0.2.0 release)",
                    **({"weights_sha256": file_sha256(weights)} if weights else {})}  # fmt: skip
        module = self._custom
        state = hashlib.sha256()
        for key, tensor in sorted(module.state_dict().items()):
            state.update(key.encode() + tensor.detach().cpu().contiguous().numpy().tobytes())
        source = inspect.getsourcefile(type(module))
        return {**common, "network": self.config.network, "class": f"{type(module).__module__}.{type(module).__name__}",
                "num_features": self.num_features(), "state_sha256": state.hexdigest(),
                "source_sha256": file_sha256(source) if source else None}  # fmt: skip

    def pixels(self, image: Image) -> torch.Tensor:
        """The uint8 tensor the network sees: RGB, centre square crop, resized by the policy."""
        rgb = image.convert("RGB")
        width, height = rgb.size
        side = min(width, height)
        if width != height:
            left, top = (width - side) // 2, (height - side) // 2
            rgb = rgb.crop((left, top, left + side, top + side))
        if self.config.resize == "pil_bicubic" and side != INPUT_SIZE:
            rgb = rgb.resize((INPUT_SIZE, INPUT_SIZE), PILImage.Resampling.BICUBIC)
        return torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1).unsqueeze(0).contiguous()

    @torch.no_grad()
    def judge_batch(self, images: list[Image]) -> list[dict[str, Any]]:
        out = []
        for image in images:
            features = self._network(self.pixels(image).to(self.device))
            vector = features.reshape(-1).float().cpu().numpy()
            out.append({"features": vector})
        return out
