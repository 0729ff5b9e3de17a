"""``classifier``: an image classifier as a judge of objects (the ESD/UCE object-erasure protocol: ResNet-50 on the
Imagenette classes, an image shows the object when the classifier's top-1 class is it).

Any ``AutoModelForImageClassification`` works (``model``: a hub id — ``microsoft/resnet-50`` by default — or a local
folder), with its own image processor (its PIL path: resize and centre-crop as the model was trained; no
torchvision). A concept is matched against the classifier's label names (``"garbage truck"`` is ImageNet's
``"garbage truck, dustcart"``); ``top_k`` > 1 counts an image when the concept is among the k best classes.
``model: tiny`` is a random small ResNet over the Imagenette labels built in code (offline runs on ``model=tiny``:
every path runs, the verdicts mean nothing).

Verdicts are cached under ``settings()``, which records what they depend on: the hub commit the revision resolved to
(the model loads from that snapshot folder), or each weight file's SHA-256 for a local folder, or for ``tiny`` the
digest of the weights as built (they come from transformers' initialisation code), and the transformers version.
One image per forward pass, as the ``clip`` judge: a batched convolution may round differently from a single one,
which can reorder near-tied classes, and a cached verdict must not depend on the batch it was computed in.
"""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch
from PIL.Image import Image

from eval_learn.configs import require
from eval_learn.judges.base import Judge, JudgeConfig
from eval_learn.judges.clip import model_folder, weight_digests
from eval_learn.models.availability import ensure_pretrained_available


@dataclass
class ClassifierConfig(JudgeConfig):
    model: str = "microsoft/resnet-50"
    revision: str | None = None
    top_k: int = 1

    def validate(self) -> None:
        require(bool(self.model.strip()), "model must name a hub id or a local folder")
        require(self.top_k >= 1, f"top_k must be >= 1, got {self.top_k}")


def label_names(label: str) -> set[str]:
    """ImageNet labels list synonyms: ``"church, church building"`` → {"church", "church building"}."""
    return {" ".join(part.lower().replace("_", " ").split()) for part in label.split(",") if part.strip()}


@functools.lru_cache(maxsize=1)
def tiny_weights_sha256() -> str:
    """SHA-256 over the ``tiny`` classifier's parameters and buffers as built (names, dtypes, shapes, values)."""
    from eval_learn.judges.tiny import tiny_classifier

    model, _ = tiny_classifier()
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        array = tensor.detach().cpu().contiguous().numpy()
        digest.update(f"{name}:{array.dtype}:{tuple(array.shape)};".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


class ClassifierJudge(Judge):
    name = "classifier"
    config_cls = ClassifierConfig
    config: ClassifierConfig

    @classmethod
    def preflight(cls, config: ClassifierConfig) -> None:
        if config.model == "tiny":
            return
        ensure_pretrained_available(config.model, config.revision, "the classifier judge's model")

    def load(self) -> None:
        if self.config.model == "tiny":
            from eval_learn.judges.tiny import tiny_classifier

            self._model, self._processor = tiny_classifier()
            self._model.to(self.device)
            return
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        folder = str(self.folder())  # the snapshot whose commit settings() records
        self._processor = AutoImageProcessor.from_pretrained(folder)
        self._model = AutoModelForImageClassification.from_pretrained(folder)
        self._model.eval().to(self.device)

    def folder(self) -> Path:
        return model_folder(self.config.model, self.config.revision, "classifier")

    def settings(self) -> dict[str, Any]:
        weights: dict[str, Any] = {}
        if self.config.model == "tiny":
            weights["built"] = "in code: random weights over the Imagenette labels (eval_learn.judges.tiny)"
            weights["weights_sha256"] = tiny_weights_sha256()
        elif os.path.isdir(self.config.model):  # a local folder: its weights' digests identify it
            weights["weights_sha256"] = weight_digests(Path(self.config.model))
        else:
            weights["commit"] = self.folder().name
        return {"judge": "classifier", "model": self.config.model, "revision": self.config.revision,
                "top_k": self.config.top_k, **weights, "images_per_forward": 1,
                "transformers_version": version("transformers"),
                "rule": "the image shows the concept if it is among the top_k classes"}  # fmt: skip

    @torch.no_grad()
    def judge_batch(self, images: list[Image]) -> list[dict[str, Any]]:
        labels = self._model.config.id2label
        out = []
        for image in images:  # one per forward pass: a verdict must not depend on its batch
            inputs = self._processor(images=[image.convert("RGB")], return_tensors="pt")
            probs = self._model(pixel_values=inputs["pixel_values"].to(self.device)).logits.float()[0].softmax(-1)
            top = probs.topk(min(max(5, self.config.top_k), probs.shape[-1]))
            out.append({"top": [{"label": labels[int(i)], "p": round(float(p), 4)}
                                for p, i in zip(top.values, top.indices, strict=True)]})  # fmt: skip
        return out

    @classmethod
    def supports(cls, concept: str) -> bool:
        return True  # any concept that is one of the classifier's labels; checked against them when it loads

    def detects(self, verdict: dict[str, Any], concept: str) -> bool:
        wanted = " ".join(concept.lower().replace("_", " ").split())
        return any(wanted in label_names(entry["label"]) for entry in verdict["top"][: self.config.top_k])
