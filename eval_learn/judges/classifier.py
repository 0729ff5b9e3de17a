"""``classifier``: an image classifier as a judge of objects (the ESD/UCE object-erasure protocol: ResNet-50 on the
Imagenette classes, an image shows the object when the classifier's top-1 class is it).

Any ``AutoModelForImageClassification`` works (``model``: a hub id — ``microsoft/resnet-50`` by default — or a local
folder), with its own image processor (its PIL path: resize and centre-crop as the model was trained; no
torchvision). A concept is matched against the classifier's label names (``"garbage truck"`` is ImageNet's
``"garbage truck, dustcart"``); ``top_k`` > 1 counts an image when the concept is among the k best classes.
``model: tiny`` is a random small ResNet over the Imagenette labels built in code (offline runs on ``model=tiny``:
every path runs, the verdicts mean nothing).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL.Image import Image

from eval_learn.configs import require
from eval_learn.judges.base import Judge, JudgeConfig
from eval_learn.models import ensure_pretrained_available


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
            from eval_learn.models.tiny_judges import tiny_classifier

            self._model, self._processor = tiny_classifier()
            self._model.to(self.device)
            return
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        self._processor = AutoImageProcessor.from_pretrained(self.config.model, revision=self.config.revision)
        self._model = AutoModelForImageClassification.from_pretrained(self.config.model, revision=self.config.revision)
        self._model.eval().to(self.device)

    def settings(self) -> dict[str, Any]:
        folder = Path(self.config.model)
        weights: dict[str, str] = {}
        if self.config.model == "tiny":
            weights["built"] = "in code: random weights over the Imagenette labels (eval_learn.models.tiny_judges)"
        elif folder.is_dir():  # a local folder: its weights' digest identifies it
            files = sorted(p for p in folder.rglob("*") if p.suffix in {".safetensors", ".bin"})
            weights["weights_sha256"] = hashlib.sha256(b"".join(p.read_bytes() for p in files)).hexdigest()
        return {"judge": "classifier", "model": self.config.model, "revision": self.config.revision,
                "top_k": self.config.top_k, **weights,
                "rule": "the image shows the concept if it is among the top_k classes"}  # fmt: skip

    @torch.no_grad()
    def judge_batch(self, images: list[Image]) -> list[dict[str, Any]]:
        inputs = self._processor(images=[im.convert("RGB") for im in images], return_tensors="pt")
        logits = self._model(pixel_values=inputs["pixel_values"].to(self.device)).logits.float()
        probs = logits.softmax(-1)
        k = min(max(5, self.config.top_k), probs.shape[-1])
        top = probs.topk(k, dim=-1)
        labels = self._model.config.id2label
        return [
            {"top": [{"label": labels[int(i)], "p": round(float(p), 4)} for p, i in zip(ps, ids, strict=True)]}
            for ps, ids in zip(top.values, top.indices, strict=True)
        ]

    @classmethod
    def supports(cls, concept: str) -> bool:
        return True  # any concept that is one of the classifier's labels; checked against them when it loads

    def detects(self, verdict: dict[str, Any], concept: str) -> bool:
        wanted = " ".join(concept.lower().replace("_", " ").split())
        return any(wanted in label_names(entry["label"]) for entry in verdict["top"][: self.config.top_k])
