"""``pickscore``: the PickScore preference model (Kirstain et al., "Pick-a-Pic: An Open Dataset of User Preferences
for Text-to-Image Generation", NeurIPS 2023, arXiv:2305.01569) as a judge.

PickScore is a CLIP-H/14 fine-tuned on human preferences (``yuvalkirstain/PickScore_v1``); the release loads it as a
``transformers`` ``CLIPModel`` and takes its tokenizer and image processor from the CLIP it was fine-tuned from
(``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``), as the usage example in the README of yuvalkirstain/PickScore
(commit f79607ff) does. The score of an image for a prompt is ``logit_scale.exp() · cos(image, text)``: the model's
own learned scale times the cosine of the L2-normalised projected embeddings (about 20 for a good match).

This judge is the ``clip`` judge (same loading, PIL preprocessing, one image per forward pass, L2-normalised image
embedding as the verdict, text truncated to 77 tokens with the end token kept) with the tokenizer and image processor
read from ``processor`` (a hub id or folder; null: the model's own folder). The ``pickscore`` metric turns its
embeddings into scores. Differences from the release: the release embeds a batch of images in one pass (ours one at a
time, so a cached verdict does not depend on its batch; cosines agree to ~1e-6) and runs in the model's dtype as
loaded; ours in ``dtype`` (float32 by default).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eval_learn.judges.clip import DTYPES, CLIPConfig, CLIPJudge, image_processor_class, model_folder, preprocessing
from eval_learn.models import ensure_pretrained_available

PICKSCORE_MODEL = "yuvalkirstain/PickScore_v1"
PICKSCORE_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
RELEASE = "yuvalkirstain/PickScore README.md (calc_probs) @f79607ff68609c1e6dfa78cba38afeea4c248df1"


@dataclass
class PickScoreConfig(CLIPConfig):
    model: str = PICKSCORE_MODEL  # the preference-tuned CLIPModel: a hub id or a local folder
    # where the tokenizer and image processor come from: a hub id or a folder; null = the model's own folder
    processor: str | None = PICKSCORE_PROCESSOR
    processor_revision: str | None = None


class PickScoreJudge(CLIPJudge):
    name = "pickscore"
    config_cls = PickScoreConfig
    config: PickScoreConfig

    @classmethod
    def preflight(cls, config: PickScoreConfig) -> None:
        ensure_pretrained_available(config.model, config.revision, "the PickScore judge's model")
        if config.processor:
            ensure_pretrained_available(config.processor, config.processor_revision, "the PickScore judge's processor")

    def folder(self) -> Path:
        return model_folder(self.config.model, self.config.revision, "pickscore")

    def processor_folder(self) -> Path:
        if not self.config.processor:
            return self.folder()
        return model_folder(self.config.processor, self.config.processor_revision, "pickscore")

    def load(self) -> None:
        from transformers import AutoTokenizer, CLIPModel

        processor = self.processor_folder()
        self._tokenizer = AutoTokenizer.from_pretrained(str(processor))
        self._processor = image_processor_class().from_pretrained(str(processor))
        model = CLIPModel.from_pretrained(str(self.folder()))
        self._model = model.eval().to(self.device, DTYPES[self.config.dtype])
        self.context_length = int(model.config.text_config.max_position_embeddings)

    def settings(self) -> dict[str, Any]:
        processor = self.processor_folder()
        local = not self.config.processor or Path(self.config.processor).is_dir()
        return {
            **super().settings(),
            "judge": "pickscore",
            "processor": self.config.processor,
            "processor_revision": self.config.processor_revision,
            "processor_commit": None if local else processor.name,
            "image_preprocessing": preprocessing(processor),
            "score": "logit_scale.exp() * cos(image, text), L2-normalised projected embeddings",
            "release": RELEASE,
        }
