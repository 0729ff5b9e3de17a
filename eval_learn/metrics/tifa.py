"""``tifa``: text-to-image faithfulness by question answering — TIFA (Hu et al., "TIFA: Accurate and Interpretable
Text-to-Image Faithfulness Evaluation with Question Answering", ICCV 2023), after its release (Yushi-Hu/tifa
``tifascore/tifa_score.py``, commit 8e37050f).

Each caption of the ``tifa`` prompt set comes with multiple-choice questions about what it asks for (objects,
counts, colours, activities, ...). The ``vqa`` judge answers each question about the caption's image; the free-form
answer is mapped to a choice as the release does (itself if it is a choice, else the nearest choice by SBERT), and a
question scores 1 when that choice is the expected answer. An image's score is the mean over its caption's questions;
the value is the mean over images (the release's ``tifa_average``: one image per caption) with the standard
deviation and a 95 % Student-t interval of the mean; the details give the accuracy per question type (the release's
``accuracy_by_type``, pooled over questions), the question-level accuracy, and how many answers were exact choices.
Higher is better.

What the predecessor did wrong and this does not: it compared the generated answer with the expected one by
case-insensitive exact string match, so "two dogs" for "2", or any answer not spelt as the choice, counted as wrong;
TIFA asks multiple-choice questions and maps answers to choices. What differs from the release: the VQA model is
BLIP VQA by default (the paper's mPLUG-large needs ModelScope; see :mod:`eval_learn.judges.vqa`), and questions are
answered in the configured dtype, one at a time.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any, ClassVar

from PIL.Image import Image

from eval_learn.configs import ConfigError
from eval_learn.judges.vqa import VQAJudge
from eval_learn.metrics.mean_score import MeanScore, MeanScoreConfig
from eval_learn.types import PromptRecord


@dataclass
class TIFAConfig(MeanScoreConfig):
    """prompts auto: tifa (the shipped sample; TIFA v1.0: protocol=tifa_v1 with {name: tifa, path: FILE}); judge
    auto: vqa ({name: vqa, model: ..., kind: blip | image_text_to_text, sbert: ..., dtype: ...})."""

    unlisted: ClassVar[tuple[str, ...]] = ("prompts_path",)  # refused: the questions file comes as prompts


class TIFAMetric(MeanScore):
    name = "tifa"
    config_cls = TIFAConfig
    judge_cls = VQAJudge
    default_prompts = "tifa"
    bounds = (0.0, 1.0)
    formula = "mean over images of the fraction of the caption's questions answered correctly (multiple choice)"

    @classmethod
    def resolve_config(cls, config: TIFAConfig, context: Any, erased: list[str] | None) -> Any:
        if config.prompts_path is not None:
            raise ConfigError("tifa reads questions, not a prompt file: prompts={name: tifa, path: FILE.json}")
        resolved = super().resolve_config(config, context, erased)
        if resolved.prompts["name"] != "tifa":
            raise ConfigError(
                f"tifa needs the tifa prompts (captions with questions), not '{resolved.prompts['name']}'"
            )
        return resolved

    def questions(self) -> dict[str, dict[str, Any]]:
        if not hasattr(self, "_questions"):
            self._questions = self.prompt_set().questions()  # type: ignore[attr-defined]
        return self._questions

    def update(self, images: list[Image], records: list[PromptRecord]) -> list[dict[str, Any]]:
        """Each image's questions go to the VQA judge with the image (the questions depend on the record, so this
        metric asks the judge itself instead of reading cached per-image verdicts)."""
        if len(images) != len(records):
            raise ValueError(f"{len(images)} images for {len(records)} prompts")
        repeated = [r.index for r in records if r.index in self.judgements.items]
        if repeated:
            raise ValueError(f"images {repeated[:5]} were judged twice")
        judge = self.judges["judge"]
        out = []
        for image, record in zip(images, records, strict=True):
            caption_id = record.extra["tifa_id"]
            answers = []
            for q in self.questions()[caption_id]["questions"]:
                free = judge.answer(image, q["question"], q["choices"])  # type: ignore[attr-defined]
                choice, how = judge.choose(free, q["choices"])  # type: ignore[attr-defined]
                answers.append({"question": q["question"], "element_type": q["element_type"], "free_form": free,
                                "choice": choice, "matched_by": how, "answer": q["answer"],
                                "correct": choice == q["answer"]})  # fmt: skip
            entry = {"tifa_id": caption_id, "score": sum(a["correct"] for a in answers) / len(answers),
                     "questions": answers, "prompt_id": record.index - record.extra.get("sample", 0)}  # fmt: skip
            self.judgements.add(record.index, entry)
            out.append(entry)
        return out

    def extra_details(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        by_type: dict[str, list[bool]] = defaultdict(list)
        for record in records:
            for answer in record["questions"]:
                by_type[answer["element_type"]].append(answer["correct"])
        answers = [a for r in records for a in r["questions"]]
        return {
            "question_accuracy": sum(a["correct"] for a in answers) / len(answers),
            "questions": len(answers),
            "accuracy_by_type": {t: sum(v) / len(v) for t, v in sorted(by_type.items())},
            "questions_by_type": {t: len(v) for t, v in sorted(by_type.items())},
            "exact_choice_answers": sum(a["matched_by"] == "exact" for a in answers),
            "vqa_model": self.judges["judge"].config.model,  # type: ignore[attr-defined]
            "source": "Yushi-Hu/tifa tifascore/tifa_score.py @8e37050f (tifa_average, accuracy_by_type)",
        }
