"""``tifa``: the captions of the TIFA benchmark (Hu et al., "TIFA: Accurate and Interpretable Text-to-Image
Faithfulness Evaluation with Question Answering", ICCV 2023), each with its multiple-choice questions (``question``,
``choices``, ``answer``, ``element_type``, ``element``), in the release's question-answer JSON format
(Yushi-Hu/tifa ``tifa_v1.0/README.md``: one entry per question, grouped by the caption ``id``).

TIFA v1.0 (4,081 captions, about 25,000 questions) is Apache-2.0 licensed, but only the release's sample of it
(``sample/sample_question_answers.json``: 2 captions, 19 questions, commit 8e37050f) is shipped here: the full file
is not distributed through a package index and this project downloads nothing at run time. ``path: null`` uses the
sample (enough for a smoke test, not a benchmark number; the log says so); for TIFA v1.0 download
``tifa_v1.0/tifa_v1.0_question_answers.json`` from github.com/Yushi-Hu/tifa once and give ``path=FILE``. The file is
checked whole before any model loads: every entry has its fields, at least two distinct choices, and its answer among
them, and a caption id never changes caption.

Rows are the captions in the file's order, one per caption id, stratified by the id's source prefix (``coco``,
``drawbench``, ``partiprompt``, ...) so that ``limit`` keeps a mix; the questions stay with the file
(:meth:`TIFA.questions`), looked up by ``extra["tifa_id"]``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eval_learn.configs import ConfigError
from eval_learn.datasets.base import PromptRow, PromptSet, PromptSetConfig
from eval_learn.datasets.i2p import bundled_prompts

log = logging.getLogger(__name__)

SAMPLE = "tifa_v1.0_sample_question_answers.json"
FIELDS = ("id", "caption", "question", "choices", "answer", "element_type")
DOWNLOAD = "https://github.com/Yushi-Hu/tifa/raw/main/tifa_v1.0/tifa_v1.0_question_answers.json"


@dataclass
class TIFAConfig(PromptSetConfig):
    path: str | None = None  # tifa_v1.0_question_answers.json (the release's format); null = the shipped sample


def read_questions(path: Path) -> dict[str, dict[str, Any]]:
    """caption id → {caption, questions: [...]}, in the file's order; ConfigError naming the entry if malformed."""
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"TIFA questions '{path}' do not exist; download them once from {DOWNLOAD}") from None
    except (OSError, ValueError) as err:
        raise ConfigError(f"TIFA questions '{path}' cannot be read as JSON ({err})") from None
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"TIFA questions '{path}' must be a non-empty JSON list of question entries")
    out: dict[str, dict[str, Any]] = {}
    for i, entry in enumerate(entries):
        where = f"TIFA questions '{path}' entry {i}"
        if not isinstance(entry, dict) or any(k not in entry for k in FIELDS):
            raise ConfigError(f"{where}: needs the fields {', '.join(FIELDS)}")
        choices = entry["choices"]
        if not isinstance(choices, list) or len(set(map(str, choices))) < 2 or len(set(choices)) != len(choices):
            raise ConfigError(f"{where}: choices must list at least two distinct answers, got {choices!r}")
        if entry["answer"] not in choices:
            raise ConfigError(f"{where}: the answer {entry['answer']!r} is not among its choices {choices}")
        caption_id = str(entry["id"])
        caption = out.setdefault(caption_id, {"caption": str(entry["caption"]), "questions": []})
        if caption["caption"] != entry["caption"]:
            raise ConfigError(f"{where}: caption id {caption_id} has two captions")
        caption["questions"].append({"question": str(entry["question"]), "choices": [str(c) for c in choices],
                                     "answer": str(entry["answer"]), "element_type": str(entry["element_type"]),
                                     "element": str(entry.get("element", ""))})  # fmt: skip
    return out


class TIFA(PromptSet):
    name = "tifa"
    config_cls = TIFAConfig
    config: TIFAConfig

    def file(self) -> Path:
        return Path(self.config.path) if self.config.path else bundled_prompts(SAMPLE)

    @classmethod
    def preflight(cls, config: TIFAConfig) -> None:
        cls(config).questions()

    def questions(self) -> dict[str, dict[str, Any]]:
        if not hasattr(self, "_questions"):
            self._questions = read_questions(self.file())
            if not self.config.path:
                log.warning("tifa: the shipped sample of TIFA v1.0 (%d captions) stands in for the benchmark; for TIFA "
                            "v1.0 give prompts={name: tifa, path: tifa_v1.0_question_answers.json} (%s)",
                            len(self._questions), DOWNLOAD)  # fmt: skip
        return self._questions

    def rows(self) -> list[PromptRow]:
        return [PromptRow(entry["caption"], extra={"tifa_id": caption_id}, stratum=(caption_id.split("_")[0],))
                for caption_id, entry in self.questions().items()]  # fmt: skip

    def dataset_name(self) -> str:
        return "tifa_v1.0" if self.config.path else "tifa_sample"

    def metadata(self) -> dict[str, Any]:
        questions = self.questions()
        return {"source": str(self.config.path) if self.config.path else f"eval_learn/data/prompts/{SAMPLE}",
                "captions_available": len(questions),
                "questions_available": sum(len(e["questions"]) for e in questions.values()),
                "release": "Yushi-Hu/tifa @8e37050f44ab4ee681e4251f3c8a9d4cc86e901e (Apache-2.0)"}  # fmt: skip
