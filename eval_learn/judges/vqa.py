"""``vqa``: a visual-question-answering model that answers TIFA's multiple-choice questions about an image, with
TIFA's rule for turning a free-form answer into one of the choices.

After the TIFA release (Yushi-Hu/tifa ``tifascore/vqa_models.py`` and ``mc_sbert.py``, commit 8e37050f):

- **Answering.** ``kind: blip`` (default): ``BlipForQuestionAnswering`` with its processor, image and question in,
  ``generate(max_length=50)`` greedy, decoded without special tokens — the release's ``BLIP`` class
  (``blip-large`` = ``Salesforce/blip-vqa-capfilt-large``, the default here; ``blip-base`` =
  ``Salesforce/blip-vqa-base``). ``kind: image_text_to_text``: any ``AutoModelForImageTextToText`` (BLIP-2,
  LLaVA, ...) given ``prompt`` with the question and the comma-joined choices filled in (default: the release's BLIP-2
  multiple-choice prompt "Answer the multiple-choice question. Question: {question} Choices: {choices} Answer:"),
  greedy, at most ``max_new_tokens`` new tokens, and the new tokens decoded.
- **Mapping to a choice** (the release's ``VQAModel.multiple_choice_vqa``): the free-form answer if it is one of the
  choices (exact string), else the choice whose SBERT embedding is closest to the answer's: ``sbert`` (default
  ``sentence-transformers/all-mpnet-base-v2``, the release's) through ``AutoModel``, mean pooling over the attention
  mask, L2 normalisation, argmax of the dot product (the first choice on a tie).

TIFA's paper default VQA model is mPLUG-large (``damo/mplug_visual-question-answering_coco_large_en``), which runs
only through ModelScope, not ``transformers``; BLIP VQA (capfilt-large) is the strongest of the release's
``transformers`` models. Scores of different VQA models are not comparable (the paper's Table 2 reports each).

Verdicts depend on the question as well as the image, so this judge is called by the ``tifa`` metric per question
(:meth:`VQAJudge.answer`), not through the judgement cache. ``settings()`` records the model, its commit or weight
digests, the kind, generation settings, prompt, the SBERT model and its commit or digests, and preprocessing.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL.Image import Image

from eval_learn.configs import require
from eval_learn.judges.base import Judge, JudgeConfig
from eval_learn.judges.clip import DTYPES, model_folder, weight_digests
from eval_learn.judges.vlm import processor_settings
from eval_learn.models import ensure_pretrained_available

RELEASE = "Yushi-Hu/tifa tifascore/vqa_models.py, mc_sbert.py @8e37050f44ab4ee681e4251f3c8a9d4cc86e901e"
BLIP2_PROMPT = "Answer the multiple-choice question. Question: {question} Choices: {choices} Answer:"


@dataclass
class VQAConfig(JudgeConfig):
    model: str = "Salesforce/blip-vqa-capfilt-large"  # a hub id or a local folder
    revision: str | None = None
    kind: Literal["blip", "image_text_to_text"] = "blip"  # BlipForQuestionAnswering | AutoModelForImageTextToText
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    max_length: int = 50  # blip: generate(max_length=...), as the release
    max_new_tokens: int = 10  # image_text_to_text: new tokens generated
    prompt: str = BLIP2_PROMPT  # image_text_to_text: {question} and {choices} (comma-joined) are filled in
    sbert: str = "sentence-transformers/all-mpnet-base-v2"  # maps a free-form answer to the nearest choice
    sbert_revision: str | None = None

    def validate(self) -> None:
        require(bool(self.model.strip()) and bool(self.sbert.strip()), "model and sbert must name a model")
        require(self.max_length > 1 and self.max_new_tokens > 0, "max_length must be > 1 and max_new_tokens > 0")
        require("{question}" in self.prompt, f"prompt must contain '{{question}}': {self.prompt!r}")


def _recorded(model: str, folder: Path) -> dict[str, Any]:
    if os.path.isdir(model):
        return {"commit": None, "weights_sha256": weight_digests(folder)}
    return {"commit": folder.name}


class VQAJudge(Judge):
    name = "vqa"
    config_cls = VQAConfig
    config: VQAConfig

    @classmethod
    def preflight(cls, config: VQAConfig) -> None:
        ensure_pretrained_available(config.model, config.revision, "the vqa judge's model")
        ensure_pretrained_available(config.sbert, config.sbert_revision, "the vqa judge's SBERT model")

    def folder(self) -> Path:
        return model_folder(self.config.model, self.config.revision, "vqa")

    def sbert_folder(self) -> Path:
        return model_folder(self.config.sbert, self.config.sbert_revision, "vqa")

    def load(self) -> None:
        from transformers import AutoModel, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

        folder = self.folder()
        self._processor = AutoProcessor.from_pretrained(str(folder))
        if self.config.kind == "blip":
            from transformers import BlipForQuestionAnswering

            model = BlipForQuestionAnswering.from_pretrained(str(folder))
        else:
            model = AutoModelForImageTextToText.from_pretrained(str(folder))
        self._model = model.eval().to(self.device, DTYPES[self.config.dtype])
        self._sbert_tokenizer = AutoTokenizer.from_pretrained(str(self.sbert_folder()))
        self._sbert = AutoModel.from_pretrained(str(self.sbert_folder())).eval().to(self.device)

    def settings(self) -> dict[str, Any]:
        folder, sbert = self.folder(), self.sbert_folder()
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        generation = {"max_length": self.config.max_length} if self.config.kind == "blip" else {
            "max_new_tokens": self.config.max_new_tokens, "prompt": self.config.prompt}  # fmt: skip
        return {
            "judge": "vqa",
            "model": self.config.model,
            "revision": self.config.revision,
            **_recorded(self.config.model, folder),
            "architecture": (config.get("architectures") or [None])[0],
            "kind": self.config.kind,
            "dtype": self.config.dtype,
            "generation": {"decoding": "greedy", **generation},
            "image_preprocessing": {**processor_settings(folder), "images_per_call": 1, "questions_per_call": 1},
            "choice_mapping": "the answer if it is a choice (exact string), else the nearest choice by SBERT "
            "(mean pooling, L2-normalised, argmax dot product)",
            "sbert": {
                "model": self.config.sbert,
                "revision": self.config.sbert_revision,
                **_recorded(self.config.sbert, sbert),
            },  # fmt: skip
            "release": RELEASE,
            "transformers_version": version("transformers"),
        }

    def _to_device(self, inputs: Any) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device, self._model.dtype) if v.is_floating_point() else v.to(self.device)
                for k, v in inputs.items()}  # fmt: skip

    @torch.no_grad()
    def answer(self, image: Image, question: str, choices: list[str]) -> str:
        """The model's free-form answer (greedy)."""
        self.ensure_loaded()
        image = image.convert("RGB")
        if self.config.kind == "blip":
            inputs = self._to_device(self._processor(images=image, text=question, return_tensors="pt"))
            ids = self._model.generate(**inputs, max_length=self.config.max_length, do_sample=False, num_beams=1)
            return self._processor.batch_decode(ids, skip_special_tokens=True)[0]
        text = self.config.prompt.format(question=question, choices=", ".join(choices))
        inputs = self._to_device(self._processor(images=image, text=text, return_tensors="pt"))
        ids = self._model.generate(**inputs, max_new_tokens=self.config.max_new_tokens, do_sample=False, num_beams=1)
        # A decoder-only language model returns the prompt too; an encoder-decoder one (BLIP-2 Flan-T5) only the answer.
        if not getattr(self._model.config.get_text_config(), "is_encoder_decoder", False):
            ids = ids[:, inputs["input_ids"].shape[1] :]
        return self._processor.batch_decode(ids, skip_special_tokens=True)[0].strip()

    @torch.no_grad()
    def embed(self, sentences: list[str]) -> np.ndarray:
        """SBERT sentence embeddings: mean of the token states over the attention mask, L2-normalised."""
        self.ensure_loaded()
        encoded = self._sbert_tokenizer(sentences, padding=True, truncation=True, return_tensors="pt")
        encoded = {k: v.to(self.device) for k, v in encoded.items()}
        states = self._sbert(**encoded)[0].double()
        mask = encoded["attention_mask"].unsqueeze(-1).double()
        pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, p=2, dim=1).cpu().numpy()

    def choose(self, answer: str, choices: list[str]) -> tuple[str, str]:
        """(the choice the answer maps to, how: ``exact`` or ``sbert``), as the release does."""
        if answer in choices:
            return answer, "exact"
        similarity = self.embed(choices) @ self.embed([answer])[0]
        return choices[int(np.argmax(similarity))], "sbert"

    def judge_batch(self, images: list[Image]) -> list[dict[str, Any]]:
        raise NotImplementedError("the vqa judge answers questions: call answer(image, question, choices)")
