"""``clip_zeroshot``: CLIP zero-shot classification over a label set (Radford et al., "Learning Transferable Visual
Models From Natural Language Supervision", ICML 2021, arXiv:2103.00020, §3.1.4 and the prompt-engineering notebook).

Each label is put into one or more prompt templates (``"a photo of {}."`` by default; ``art`` is
``"a painting in the style of {}."`` for artist styles); with several templates the label's text embedding is the
*ensemble* of the paper: the mean of the L2-normalised template embeddings, normalised again. The verdict on an
image is the probability of every label, softmax(logit_scale · cos(image, label)) with CLIP's own learned logit
scale read from the model (100 for OpenAI's CLIPs) unless ``logit_scale`` is set, and the argmax label. An image
shows a concept when the argmax is that concept, or, with ``threshold`` set, when the concept's probability exceeds
it.

The image side *is* the ``clip`` judge (:class:`~eval_learn.judges.clip.CLIPJudge`) of the same model: its loading,
PIL preprocessing, one image per forward pass and L2-normalised embedding, cached by the engine under the ``clip``
judge's own settings, so another label set, template or threshold (or clip_score on the same images) never embeds an
image again. Text goes through its ``embed_text`` (truncated to the text context, end token kept). ``settings()``
records what ``clip`` records (model id, hub commit or weight digests, dtype, preprocessing) plus the labels,
templates, logit scale and threshold.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from eval_learn.configs import did_you_mean, require
from eval_learn.judges.clip import CLIPConfig, OnCLIPEmbedding

PHOTO_TEMPLATE = "a photo of {}."
ART_TEMPLATE = "a painting in the style of {}."
TEMPLATE_NAMES = {"photo": PHOTO_TEMPLATE, "art": ART_TEMPLATE}


def label_key(label: str) -> str:
    """How a concept is matched to a label: case, underscores and spacing do not matter (``van_gogh`` = ``Van Gogh``)."""
    return " ".join(label.lower().replace("_", " ").split())


def expand_templates(templates: str | list[str]) -> list[str]:
    """A template, a list of them, or the names ``photo`` / ``art`` → the template strings."""
    items = [templates] if isinstance(templates, str) else list(templates)
    return [TEMPLATE_NAMES.get(t, t) for t in items]


def ensemble(embeddings: np.ndarray) -> np.ndarray:
    """One label's text embedding from its templates' (rows): mean of the normalised rows, normalised (CLIP §3.1.4)."""
    rows = embeddings.astype(np.float64)
    rows = rows / np.linalg.norm(rows, axis=-1, keepdims=True)
    mean = rows.mean(axis=0)
    return mean / np.linalg.norm(mean)


def zero_shot_probabilities(image: np.ndarray, labels: np.ndarray, logit_scale: float) -> np.ndarray:
    """softmax(logit_scale · cos(image, label_i)) over the labels (rows of ``labels``), in float64."""
    image = image.astype(np.float64)
    image = image / np.linalg.norm(image)
    logits = logit_scale * (labels.astype(np.float64) @ image)
    logits -= logits.max()
    weights = np.exp(logits)
    return weights / weights.sum()


@dataclass
class CLIPZeroShotConfig(CLIPConfig):
    labels: list[str] = field(default_factory=list)  # the classes to choose among (at least two)
    templates: str | list[str] = "photo"  # a template with {} (or photo / art), or a list: ensembled
    threshold: float | None = None  # null: the argmax decides; else p(concept) > threshold
    logit_scale: float | None = None  # null: the model's learned scale (exp(logit_scale), 100 for OpenAI CLIPs)

    def validate(self) -> None:
        super().validate()
        require(len(self.labels) >= 2, f"labels must list at least two classes to choose among, got {self.labels}")
        keys = [label_key(label) for label in self.labels]
        require(all(keys), "labels must not be empty strings")
        require(len(set(keys)) == len(keys), f"labels repeat a class (case and underscores ignored): {self.labels}")
        templates = expand_templates(self.templates)
        require(bool(templates), "templates must give at least one template")
        for template in templates:
            require(template.count("{}") == 1,
                    f"template {template!r} must contain '{{}}' exactly once (or be one of {sorted(TEMPLATE_NAMES)})")  # fmt: skip
        if self.threshold is not None:
            require(0.0 < self.threshold < 1.0, f"threshold must lie in (0, 1), got {self.threshold}")
        if self.logit_scale is not None:
            require(self.logit_scale > 0, f"logit_scale must be > 0, got {self.logit_scale}")

    def concept_problem(self, concept: str) -> str | None:
        keys = [label_key(label) for label in self.labels]
        if label_key(concept) in keys:
            return None
        return (f"the clip_zeroshot judge cannot name '{concept}': it is not among its labels {self.labels}."
                f"{did_you_mean(label_key(concept), keys)}")  # fmt: skip


class CLIPZeroShotJudge(OnCLIPEmbedding):
    name = "clip_zeroshot"
    config_cls = CLIPZeroShotConfig
    config: CLIPZeroShotConfig

    def __init__(self, config: CLIPZeroShotConfig, device: str = "cpu") -> None:
        super().__init__(config, device)
        self._label_embeddings: np.ndarray | None = None

    def templates(self) -> list[str]:
        return expand_templates(self.config.templates)

    def scale(self) -> float:
        if self.config.logit_scale is not None:
            return float(self.config.logit_scale)
        return self.clip.logit_scale()

    def label_embeddings(self) -> np.ndarray:
        """(labels, dim): each label's template-ensembled text embedding, computed once."""
        if self._label_embeddings is None:
            rows = []
            for label in self.config.labels:
                texts = np.stack([self.clip.embed_text(t.format(label))[0] for t in self.templates()])
                rows.append(ensemble(texts))
            self._label_embeddings = np.stack(rows)
        return self._label_embeddings

    def settings(self) -> dict[str, Any]:
        return {
            **self.clip.settings(),
            "judge": "clip_zeroshot",
            "labels": list(self.config.labels),
            "templates": self.templates(),
            "template_ensemble": "mean of the L2-normalised template embeddings, re-normalised (Radford et al. 2021)",
            "logit_scale": self.config.logit_scale if self.config.logit_scale is not None else "model",
            "threshold": self.config.threshold,
            "rule": "shows the concept if it is the argmax label" if self.config.threshold is None
            else f"shows the concept if p(concept) > {self.config.threshold}",
        }  # fmt: skip

    def combine(self, by_part: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
        labels, scale = self.label_embeddings(), self.scale()
        out = []
        for verdict in by_part["clip"]:
            probs = zero_shot_probabilities(verdict["embedding"], labels, scale)
            out.append({"label": self.config.labels[int(np.argmax(probs))], "logit_scale": scale,
                        "probs": {label: float(p) for label, p in zip(self.config.labels, probs, strict=True)}})  # fmt: skip
        return out

    @classmethod
    def supports(cls, concept: str) -> bool:
        return True  # any concept that is one of the labels (checked by the config's concept_problem)

    def detects(self, verdict: dict[str, Any], concept: str) -> bool:
        wanted = label_key(concept)
        matches = [label for label in verdict["probs"] if label_key(label) == wanted]
        if not matches:
            raise ValueError(f"'{concept}' is not among the clip_zeroshot labels {list(verdict['probs'])}")
        if self.config.threshold is not None:
            return verdict["probs"][matches[0]] > self.config.threshold
        return label_key(verdict["label"]) == wanted
