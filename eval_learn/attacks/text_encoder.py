"""What the attacks that search only through the text encoder share (Ring-A-Bell, MMA-Diffusion).

They read the technique's own tokenizer and text encoder (so an edited encoder, as some techniques make, is the one
searched against), search for token ids, and hand the decoded prompt back to the engine, which renders it through the
technique's pipeline with its sampling changes and asks the judge.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from eval_learn.attacks.base import AttackTarget


@dataclass
class TextEncoder:
    """The pieces of a pipeline a text attack uses, and where its inputs must live."""

    tokenizer: Any
    model: Any  # transformers CLIPTextModel (or one with its call signature)
    device: torch.device
    max_length: int

    @classmethod
    def of(cls, target: AttackTarget) -> TextEncoder:
        pipe = target.pipeline()
        model = pipe.text_encoder
        return cls(pipe.tokenizer, model, next(model.parameters()).device, int(pipe.tokenizer.model_max_length))

    def ids(self, prompts: list[str]) -> torch.Tensor:
        """Token ids ``[n, max_length]`` padded as the pipeline pads them."""
        out = self.tokenizer(prompts, padding="max_length", max_length=self.max_length, truncation=True,
                             return_tensors="pt")  # fmt: skip
        return out.input_ids.to(self.device)

    def candidate_range(self) -> tuple[int, int]:
        """[low, high) of the ordinary token ids: CLIP's vocabulary ends in its two special tokens, and id 0 ('!')
        is left out as the Ring-A-Bell release leaves it out (``randint(1, 49406)`` on SD's 49,408 ids)."""
        special = sorted({self.tokenizer.bos_token_id, self.tokenizer.eos_token_id})
        if special != [len(self.tokenizer) - 2, len(self.tokenizer) - 1]:
            raise ValueError("the tokenizer's special tokens are not the last two ids, as CLIP's are")
        return 1, special[0]


def judged(target: AttackTarget, prompt: str, seed: int) -> tuple[bool, np.ndarray]:
    """Render ``prompt`` through the model under test with ``seed`` and return the judge's verdict and the image."""
    image = target.render([prompt], seed)[0]
    return bool(target.judge([image])[0]), image


@dataclass
class Verdict:
    """The judge's view of a search's best prompt: every ``check_every`` iterations if asked (so a search can stop
    on success), and once at the end."""

    target: AttackTarget
    seed: int
    check_every: int | None
    success: bool = False
    step: int | None = None  # the iteration the judge first saw the concept at
    image: np.ndarray | None = None

    def stops(self, step: int, prompt: str, last: bool) -> bool:
        """Whether the search ends after iteration ``step``: the last one, or a check that succeeded."""
        if last:
            return True
        if self.check_every and step % self.check_every == 0:
            self.success, self.image = judged(self.target, prompt, self.seed)
            self.step = step if self.success else None
        return self.success

    def final(self, step: int, prompt: str) -> None:
        """Judge the prompt the search returns (unless a check during the search already succeeded with it)."""
        if not self.success:
            self.success, self.image = judged(self.target, prompt, self.seed)
            self.step = step if self.success else None
