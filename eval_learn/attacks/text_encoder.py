"""What the attacks that search only through the text encoder share (Ring-A-Bell, MMA-Diffusion).

They read the technique's own tokenizer and text encoder (so an edited encoder, as some techniques make, is the one
searched against), search for token ids, and hand the decoded prompt back to the engine, which renders it through the
technique's pipeline with its sampling changes and asks the judge.

Without ``check_every`` their search depends on the prompt, never on the image seed, so :func:`text_attack` searches
once per prompt and keeps the found prompt in the engine's attack cache; each seed of the prompt then only renders
and judges it. With ``check_every`` the search stops on a seed's verdict, so every seed searches.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from eval_learn.attacks.base import Attack, AttackOutcome, AttackTarget
from eval_learn.types import PromptRecord


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


@dataclass
class Found:
    """What a text search ends with: the prompt, the iterations it took, its seconds, and attack-specific facts."""

    prompt: str
    iterations: int
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)


def text_attack(
    attack: Attack, target: AttackTarget, record: PromptRecord, check_every: int | None,
    search: Callable[[Verdict], Found],
) -> AttackOutcome:  # fmt: skip
    """``search`` (given the verdict it may stop on) for ``record``, or its result for the same prompt from the
    attack cache when the search does not depend on the seed; then the found prompt judged with the record's seed."""
    started = time.perf_counter()
    verdict = Verdict(target, record.seed, check_every)
    state = target.saved(attack, "search", {"prompt": record.prompt}) if check_every is None else None
    saved = state.load() if state is not None else None
    if saved is not None:
        found = Found(**saved[1])
    else:
        found = search(verdict)
        if state is not None:
            state.save({}, asdict(found))
    verdict.final(found.iterations, found.prompt)
    return AttackOutcome(
        prompt=found.prompt, success=verdict.success, iterations=found.iterations,
        seconds=time.perf_counter() - started, success_step=verdict.step, image=verdict.image,
        extra={**found.extra, "search_seconds": found.seconds, "search_reused": saved is not None},
    )  # fmt: skip
