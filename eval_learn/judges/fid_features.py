"""``fid_features``: the feature network of FID (Heusel et al., "GANs Trained by a Two Time-Scale Update Rule Converge
to a Local Nash Equilibrium", NeurIPS 2017, arXiv:1706.08500); its verdict on an image is the image's feature vector.

``network: inception`` (the default) is torchmetrics' ``NoTrainInceptionV3``: torch-fidelity's port of the TF
Inception graph and weights (``weights-inception-2015-12-05-6726825d.pth``, torch-fidelity v0.2.0) that published FID
numbers are computed with, 2048-d pool3 features. It needs ``pip install 'eval-learn[fid]'`` (torch-fidelity).
``network: pytorch_fid`` is pytorch-fid's port of the same graph (``pt_inception-2015-12-05-6726825d.pth``, its own
weight layout), fed 2·(x/255)−1 as T2IBenchmark (AdvUnlearn's FID) does; it needs ``pip install pytorch-fid``
(which needs torchvision) and its weights in torch hub's cache. The two ports give close but not equal features, so
the port is recorded, and reference statistics made with another port are refused (:mod:`eval_learn.metrics.fid`).
Any other network is given as ``package.module:factory``, a callable that returns an ``nn.Module`` mapping uint8
images ``(N, 3, H, W)`` to ``(N, d)`` features (the tests use ``eval_learn.judges.tiny:tiny_feature_network``).

Every image is converted to RGB and, except under ``clean``, centre-cropped to a square (a no-op for generated
images; COCO photos are not square), then, by ``resize``:

- ``clean``: clean-fid's resizer (Parmar et al., CVPR 2022; GaParmar/clean-fid ``cleanfid/resize.py``, v0.1.35), as
  MACE's FID uses it: no crop, each channel resized to 299×299 with PIL bicubic in float32 and clipped to [0, 255];
  the result is then rounded to uint8 (at most 0.5 grey levels from clean-fid's float input) because the networks
  here take uint8;

- ``pil_bicubic`` (default): resized to 299×299 with PIL bicubic in uint8 before the network (Inception's own resize
  is then the identity) — the "clean" resizer of T2IBenchmark, which the AdvUnlearn / UnlearnDiffAtk COCO-10k FID
  numbers come from (after the crop; clean-fid's own resize, without crop and in float, is ``clean``);
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
from eval_learn.models.hashing import file_sha256
from eval_learn.runtime import package_version

log = logging.getLogger(__name__)

INPUT_SIZE = 299  # Inception v3's input size
INCEPTION_FEATURES = 2048
INCEPTION_WEIGHTS = "weights-inception-2015-12-05-6726825d.pth"
RESIZE_POLICIES = {
    "pil_bicubic": "RGB, centre square crop, PIL bicubic resize to 299x299 in uint8, then the network",
    "clean": "RGB, no crop, clean-fid's resize (each channel PIL bicubic to 299x299 in float32, clipped to [0, 255]), "
    "rounded to uint8, then the network",
    "tf1_bilinear": "RGB, centre square crop, then the network; Inception resizes to 299x299 with torch-fidelity's "
    "TensorFlow-1 compatible bilinear (torchmetrics antialias=False)",
    "antialias": "RGB, centre square crop, then the network; Inception resizes to 299x299 with torch's antialiased "
    "bilinear (torchmetrics antialias=True)",
}
BUILT_IN = ("inception", "pytorch_fid")
PYTORCH_FID_WEIGHTS = "pt_inception-2015-12-05-6726825d.pth"
_PYTORCH_FID_HELP = "feature_extractor=pytorch_fid needs pytorch-fid (pip install pytorch-fid; it needs torchvision)"
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
    network: str = "inception"  # inception (torch-fidelity's TF-Inception) | pytorch_fid | package.module:factory
    resize: Literal["pil_bicubic", "clean", "tf1_bilinear", "antialias"] = "pil_bicubic"
    inception_weights: str | None = None  # a local copy of weights-inception-2015-12-05-6726825d.pth; null: download

    def validate(self) -> None:
        if self.network not in BUILT_IN:
            module_name, sep, attr = self.network.partition(":")
            require(bool(sep and module_name and attr), f"feature_extractor must be 'inception', 'pytorch_fid' or "
                                                        f"'package.module:factory', got '{self.network}'")  # fmt: skip
        if self.network == "pytorch_fid":
            require(self.resize in ("pil_bicubic", "clean"), "feature_extractor=pytorch_fid takes 299x299 images: "
                                                             "resize must be pil_bicubic or clean")  # fmt: skip
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
        elif config.network == "pytorch_fid":
            if importlib.util.find_spec("pytorch_fid") is None:
                raise ConfigError(_PYTORCH_FID_HELP)
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
        if self.config.network in BUILT_IN:
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
        elif self.config.network == "pytorch_fid":
            network = PytorchFIDInception()
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
        if self.config.network == "pytorch_fid":
            return {**common, "network": "pytorch_fid", "num_features": INCEPTION_FEATURES,
                    "implementation": "pytorch-fid InceptionV3 (FID weights), pool3, input 2 * (x / 255) - 1",
                    "pytorch_fid_version": package_version("pytorch-fid"),
                    "weights": f"{PYTORCH_FID_WEIGHTS} (pytorch-fid fid_weights release)"}  # fmt: skip
        module = self._custom
        state = hashlib.sha256()
        for key, tensor in sorted(module.state_dict().items()):
            state.update(key.encode() + tensor.detach().cpu().contiguous().numpy().tobytes())
        source = inspect.getsourcefile(type(module))
        return {**common, "network": self.config.network, "class": f"{type(module).__module__}.{type(module).__name__}",
                "num_features": self.num_features(), "state_sha256": state.hexdigest(),
                "source_sha256": file_sha256(source) if source else None}  # fmt: skip

    def pixels(self, image: Image) -> torch.Tensor:
        """The uint8 tensor the network sees: RGB, centre square crop (not under ``clean``), resized by the policy."""
        if self.config.resize == "clean":
            array = np.rint(clean_resize(image)).astype(np.uint8)
            return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).contiguous()
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


def clean_resize(image: Image) -> np.ndarray:
    """clean-fid's ``clean`` resize of an image: (299, 299, 3) float32 in [0, 255], each channel resized on its own
    as a 32-bit float image with PIL bicubic, without cropping (the aspect ratio is not kept)."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    channels = [
        np.asarray(PILImage.fromarray(np.ascontiguousarray(rgb[:, :, c]), mode="F").resize(
            (INPUT_SIZE, INPUT_SIZE), PILImage.Resampling.BICUBIC))
        for c in range(3)
    ]  # fmt: skip
    return np.clip(np.stack(channels, axis=2), 0, 255).astype(np.float32)


class PytorchFIDInception(torch.nn.Module):
    """pytorch-fid's FID Inception (pool3), taking uint8 (N, 3, 299, 299) like the other networks here."""

    num_features = INCEPTION_FEATURES

    def __init__(self) -> None:
        super().__init__()
        try:
            from pytorch_fid.inception import InceptionV3
        except ImportError:
            raise RunError(_PYTORCH_FID_HELP) from None
        # normalize_input: 2x - 1 on [0, 1]; the input is already 299x299 (pil_bicubic or clean)
        self.inception = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[INCEPTION_FEATURES]], resize_input=False,
                                     normalize_input=True)  # fmt: skip

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.inception(images.float() / 255.0)[0].flatten(1)
