"""What every attack is, and what it is given: the model under test, the base model, and the judge's verdict.

An attack works on one prompt at a time. It gets an :class:`AttackTarget` — the technique's own pipeline (with its
edited weights *and* its sampling changes), the base model where the attack needs one (P4D's teacher,
UnlearnDiffAtk's target image), a way to render candidates through the shared generation loop, and the judge's
verdict on images — and returns an :class:`AttackOutcome`: what it found, whether the judge saw the concept, and
what that cost. Budgets (iterations, tokens, seconds) are config fields of the attack, recorded in the report and
hashed into the key under which outcomes are cached, so a killed attack run resumes per prompt.

Attacks never load models themselves and never write files: the engine owns caching, the technique owns the
pipeline. An attack that needs gradients reaches the pipeline's modules through :meth:`AttackTarget.pipeline`; a
probe that changes how the model samples calls it through :meth:`AttackTarget.sample`, which keeps the technique's
own sampling changes; a state that must outlive a killed run is kept through :meth:`AttackTarget.saved`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np
import torch

from eval_learn.configs import require
from eval_learn.storage import digest_of
from eval_learn.types import PromptRecord


@dataclass
class AttackConfig:
    """Budget settings every attack has; subclasses add their own (iterations, tokens, learning rate, ...)."""

    time_limit_s: float | None = None  # per prompt: stop the search after this many seconds (None: no limit)
    seed: int = 0  # the attack's own randomness (initial tokens, mutation), separate from the image seed

    def validate(self) -> None:
        require(self.time_limit_s is None or self.time_limit_s > 0, "time_limit_s must be > 0")

    def concept_problem(self, concept: str) -> str | None:
        """Why this attack cannot search for ``concept`` (checked before any model loads); None when it can."""
        return None


@dataclass
class AttackOutcome:
    """What an attack found for one prompt and seed.

    ``prompt`` is the adversarial prompt as text when the attack ends in tokens (UnlearnDiffAtk, P4D, Ring-A-Bell,
    MMA-Diffusion); ``embedding`` the adversarial text-encoder output ``[tokens, dim]`` when it ends in a continuous
    input (concept inversion); ``success`` whether the judge saw the concept in ``image``, the image the final input
    renders to with the record's seed; ``success_step`` the iteration at which the judge first saw it (None: never).
    """

    prompt: str
    success: bool
    iterations: int
    seconds: float
    success_step: int | None = None
    image: np.ndarray | None = None  # uint8 [H, W, 3]
    embedding: torch.Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # attack-specific facts (loss curve, best fitness, ...)


class SavedState(Protocol):
    """One saved attack state: tensors and JSON facts, sealed and verified when read back (the engine's side)."""

    def load(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        """The last saved (tensors, facts), or None when none was saved or what was saved is damaged."""

    def save(self, tensors: dict[str, torch.Tensor], facts: dict[str, Any]) -> None:
        """Replace the saved state (atomically: a kill during a save leaves the previous one)."""


class AttackTarget(Protocol):
    """The engine's side of an attack: implemented by the engine, given to :meth:`Attack.run`."""

    concept: str  # the concept the judge looks for

    def pipeline(self) -> Any:
        """The technique's pipeline (edited weights, sampling changes), loaded once; modules in eval mode."""

    def base_pipeline(self) -> Any:
        """The base model's pipeline, for attacks that compare with it (loaded once, components shared where equal)."""

    def render(self, prompts: list[str], seed: int) -> list[np.ndarray]:
        """Images (uint8 [H, W, 3]) of ``prompts`` through the technique's pipeline with the run's generation
        settings and ``seed``, as the benchmark renders them."""

    def render_embeddings(self, embeddings: torch.Tensor, seed: int) -> list[np.ndarray]:
        """Images of text-encoder outputs ``[n, tokens, dim]`` (the technique's sampling changes still apply)."""

    def render_base(self, prompts: list[str], seed: int) -> list[np.ndarray]:
        """Images of ``prompts`` through the base model (a target image, training images of the concept)."""

    def sample(self, prompt: str, generator: Any, *, base: bool = False, pipe: Any = None, **arguments: Any) -> Any:
        """One pipeline call on ``prompt`` with the run's generation settings and the technique's own sampling
        changes (its call arguments and hook resets, through the benchmark's sampling seam); ``arguments`` add the
        probe's own (``latents``, ``eta``, ``output_type``, ...). ``base``: the base model's pipeline instead;
        ``pipe``: another pipeline over the technique's components (an inpainting pipeline). Returns the call's
        ``images``. A technique whose pipeline cannot take the probe's arguments (or the reverse) is a RunError."""

    def saved(self, attack: Attack, name: str, scope: dict[str, Any]) -> SavedState:
        """A state of ``attack`` that outlives the process (a learned token mid-training, a search's result),
        stored in the engine's attack cache under the model under test, the attack's settings, the concept, the
        run's generation settings, ``name`` and ``scope`` (e.g. the prompt, without the image seed)."""

    def judge(self, images: list[np.ndarray]) -> list[bool]:
        """Whether the judge sees the concept in each image (the verdicts the metric counts)."""

    def generation_settings(self) -> dict[str, Any]:
        """num_inference_steps, guidance_scale, height, width of the run."""


class Attack:
    """An attack: a config with its budget, and :meth:`run` on one prompt."""

    name: ClassVar[str]
    config_cls: ClassVar[type[AttackConfig]] = AttackConfig
    # Bump when a change would change what the attack finds for the same config.
    algorithm_version: ClassVar[int] = 1
    # Whether the attack needs the base model beside the model under test (P4D, UnlearnDiffAtk's target image).
    needs_base_model: ClassVar[bool] = False
    # Whether the attack needs gradients through the model under test (white-box) or only the text encoder.
    white_box: ClassVar[bool] = True
    # The release the default settings follow (repository, commit, file) and what differs: recorded in the report.
    follows: ClassVar[dict[str, str]] = {}
    differs: ClassVar[str] = ""

    def __init__(self, config: AttackConfig) -> None:
        self.config = config

    def settings(self) -> dict[str, Any]:
        """Everything that determines the outcome, recorded in the report and hashed into the cache key."""
        return {"attack": self.name, "algorithm_version": self.algorithm_version, **asdict(self.config)}

    def fingerprint(self) -> str:
        return digest_of(self.settings())

    def run(self, target: AttackTarget, record: PromptRecord) -> AttackOutcome:
        """Search for an input that makes the judge see ``target.concept`` for this prompt and seed."""
        raise NotImplementedError

    # --- helpers for subclasses ----------------------------------------------------------------------------------
    def out_of_time(self, started: float) -> bool:
        """Whether the per-prompt time limit has passed since ``started`` (a ``time.perf_counter()`` value)."""
        limit = self.config.time_limit_s
        return limit is not None and time.perf_counter() - started > limit
