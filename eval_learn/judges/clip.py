"""``clip``: a CLIP model (Radford et al., "Learning Transferable Visual Models From Natural Language Supervision",
ICML 2021, arXiv:2103.00020) as a judge: its verdict on an image is the image's L2-normalised embedding.

Any CLIP that ``transformers`` loads as ``CLIPModel`` works (``model``: a hub id — ``openai/clip-vit-large-patch14``
by default, the CLIP of Q16 and torchmetrics' CLIPScore; clip_score picks its convention's — or a local folder), with its own tokenizer
and image processor. Metrics turn embeddings into scores (CLIPScore against a caption, ...); the embedding itself is
what is cached, so another metric or caption never needs the image again.

Why the choices below:

- **Preprocessing** is the image processor's PIL path (``CLIPImageProcessorPil``; ``CLIPImageProcessor`` on
  transformers 4.x): resize the shortest side to the processor's ``size`` with PIL bicubic, centre-crop to
  ``crop_size``, rescale to [0, 1], normalise with the processor's mean and std — OpenAI's own CLIP preprocessing,
  identical with or without torchvision installed (so a verdict does not depend on the machine's packages).
- **One image per forward pass**: a batched matmul may round differently from a single one, and a cached verdict
  must be the same whatever batch it was computed in.
- **fp32 by default** (``dtype``): CLIP scores differ in the third decimal between fp16 and fp32.
- **Text** goes through the same model (:meth:`CLIPJudge.embed_text`), truncated to the text encoder's context
  (77 tokens for OpenAI's CLIPs) with the end-of-text token kept; a caption that had to be cut is reported as such.

``settings()`` records the model id, the hub commit it resolved to (or, for a local folder, the SHA-256 of each weight
file), the dtype, the preprocessing and the transformers version.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL.Image import Image

from eval_learn.configs import require
from eval_learn.errors import RunError
from eval_learn.judges.base import Judge, JudgeConfig
from eval_learn.models.availability import ensure_pretrained_available
from eval_learn.models.hashing import file_sha256

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# The files a CLIP folder needs (config, tokenizer, image processor, weights; a VLM's SentencePiece tokenizer and chat
# template too); the rest of a hub repo (TF, Flax) is not downloaded.
HUB_FILES = ["*.json", "*.txt", "*.safetensors", "*.model", "*.jinja"]


@dataclass
class CLIPConfig(JudgeConfig):
    model: str = "openai/clip-vit-large-patch14"  # a hub id or a local folder (CLIPModel + tokenizer + processor)
    revision: str | None = None  # hub revision (branch, tag or commit); null: main
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"

    def validate(self) -> None:
        require(bool(self.model.strip()), "model must name a hub id or a local folder")


def weight_digests(folder: Path) -> dict[str, str]:
    """SHA-256 of every weight file in ``folder``, by relative path."""
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.suffix in {".safetensors", ".bin"} and path.is_file():
            out[path.relative_to(folder).as_posix()] = file_sha256(path)
    return out


@functools.lru_cache(maxsize=16)
def model_folder(model: str, revision: str | None, judge: str = "clip") -> Path:
    """The local folder the model loads from: the folder itself, or the hub snapshot (downloaded once; from the
    cache alone when HF_HUB_OFFLINE is set). Its name is the commit the revision resolved to. ``judge`` names the
    judge in the error message."""
    if os.path.isdir(model):
        return Path(model)
    from huggingface_hub import snapshot_download

    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes"}
    try:
        folder = Path(snapshot_download(model, revision=revision, allow_patterns=HUB_FILES, local_files_only=offline))
        if not any(folder.glob("*.safetensors")):  # an older repo with PyTorch pickles only
            folder = Path(snapshot_download(model, revision=revision, allow_patterns=[*HUB_FILES, "pytorch_model.bin"],
                                            local_files_only=offline))  # fmt: skip
    except Exception as err:  # noqa: BLE001 - any failure means "cannot be had"
        raise RunError(f"the {judge} judge's model '{model}' cannot be loaded ({type(err).__name__}: {err}); give a "
                       f"local folder (judge={{name: {judge}, model: DIR}}) or run once with network access") from None  # fmt: skip
    return folder


def image_processor_class() -> Any:
    try:
        from transformers import CLIPImageProcessorPil  # transformers >= 5: the PIL backend has its own class

        return CLIPImageProcessorPil
    except ImportError:
        from transformers import CLIPImageProcessor  # transformers 4.x: the (slow) PIL/numpy processor

        return CLIPImageProcessor


@functools.lru_cache(maxsize=16)
def preprocessing(folder: Path) -> dict[str, Any]:
    """The image processor's settings as it reads them (old configs say ``size: 224``; it normalises that), i.e. what
    determines the pixels the model sees. Loading a processor reads no weights."""
    processor = image_processor_class().from_pretrained(str(folder))
    from PIL.Image import Resampling

    resample = Resampling(int(processor.resample)).name.lower()  # 3 → bicubic
    return {
        "processor": type(processor).__name__,
        "backend": "PIL",
        "resize": {**dict(processor.size), "resample": resample} if processor.do_resize else None,
        "center_crop": dict(processor.crop_size) if processor.do_center_crop else None,
        "rescale": processor.rescale_factor if processor.do_rescale else None,
        "normalize": {"mean": list(processor.image_mean), "std": list(processor.image_std)}
        if processor.do_normalize
        else None,
        "convert_rgb": bool(getattr(processor, "do_convert_rgb", True)),
        "images_per_forward": 1,
    }


def embedding_judge(config: CLIPConfig, device: str) -> CLIPJudge:
    """The plain ``clip`` judge of the same model, revision and dtype: the image embeddings that judges built on CLIP
    (clip_zeroshot, q16) read, cached under the ``clip`` judge's own settings."""
    return CLIPJudge(CLIPConfig(model=config.model, revision=config.revision, dtype=config.dtype), device)


class CLIPJudge(Judge):
    name = "clip"
    config_cls = CLIPConfig
    config: CLIPConfig

    @classmethod
    def preflight(cls, config: CLIPConfig) -> None:
        ensure_pretrained_available(config.model, config.revision, "the CLIP judge's model")

    def folder(self) -> Path:
        return model_folder(self.config.model, self.config.revision)

    def load(self) -> None:
        from transformers import AutoTokenizer, CLIPModel

        folder = self.folder()
        self._tokenizer = AutoTokenizer.from_pretrained(str(folder))
        self._processor = image_processor_class().from_pretrained(str(folder))
        model = CLIPModel.from_pretrained(str(folder))  # then cast: the same call on transformers 4.x and 5
        self._model = model.eval().to(self.device, DTYPES[self.config.dtype])
        self.context_length = int(model.config.text_config.max_position_embeddings)

    def settings(self) -> dict[str, Any]:
        folder = self.folder()
        local = os.path.isdir(self.config.model)
        return {
            "judge": "clip",
            "model": self.config.model,
            "revision": self.config.revision,
            "commit": None if local else folder.name,
            **({"weights_sha256": weight_digests(folder)} if local else {}),
            "dtype": self.config.dtype,
            "image_preprocessing": preprocessing(folder),
            "text": "tokenizer of the model, truncated to the text encoder's context (end-of-text token kept)",
            "embedding": "projected CLIP embedding, L2-normalised, stored as float32",
            "transformers_version": version("transformers"),
        }

    @staticmethod
    def _normalised(features: Any) -> np.ndarray:
        tensor = features if isinstance(features, torch.Tensor) else features.pooler_output  # transformers 5: output
        vector = tensor[0].double()
        return (vector / vector.norm()).float().cpu().numpy()

    @torch.no_grad()
    def judge_batch(self, images: list[Image]) -> list[dict[str, Any]]:
        out = []
        for image in images:
            pixels = self._processor(images=[image.convert("RGB")], return_tensors="pt")["pixel_values"]
            features = self._model.get_image_features(pixel_values=pixels.to(self.device, self._model.dtype))
            out.append({"embedding": self._normalised(features)})
        return out

    def logit_scale(self) -> float:
        """exp of the model's learned logit scale (100 for OpenAI's CLIPs): what ``logits_per_image`` multiplies by."""
        self.ensure_loaded()
        return float(self._model.logit_scale.detach().double().exp().cpu())

    @torch.no_grad()
    def embed_text(self, text: str) -> tuple[np.ndarray, bool]:
        """The caption's L2-normalised embedding, and whether it had to be truncated to the model's context."""
        self.ensure_loaded()
        full = self._tokenizer(text, truncation=False, verbose=False)["input_ids"]
        tokens = self._tokenizer(text, truncation=True, max_length=self.context_length, return_tensors="pt")
        features = self._model.get_text_features(input_ids=tokens["input_ids"].to(self.device),
                                                 attention_mask=tokens["attention_mask"].to(self.device))  # fmt: skip
        return self._normalised(features), len(full) > self.context_length


class OnCLIPEmbedding(Judge):
    """A judge computed from the ``clip`` judge's image embedding of the same model (Q16, CLIP zero-shot): the
    embedding is its one part, cached under the ``clip`` judge's own settings."""

    config: CLIPConfig

    def __init__(self, config: CLIPConfig, device: str = "cpu") -> None:
        super().__init__(config, device)
        self.clip = embedding_judge(config, device)

    @classmethod
    def preflight(cls, config: CLIPConfig) -> None:
        CLIPJudge.preflight(config)

    def parts(self) -> dict[str, Judge]:
        return {"clip": self.clip}
