"""The one training loop the techniques that train (ESD, CA, MACE) share: each gives its loss, this does the rest.

A step draws its inputs and computes the loss (the technique's ``step_loss``), stops the training at once on a
non-finite loss (nothing is cached), back-propagates, clips the gradient norm if asked, steps the optimiser and runs
the technique's ``after_step`` (CA puts back the token rows that must not move). The losses go to the progress bar
and are returned; with a :class:`~eval_learn.techniques.checkpoint.TrainingCheckpoint` the loop first restores a
killed run's saved state (trained tensors, optimiser, random generators, losses) and saves it now and then, so a
rerun continues where the killed one stopped and ends with the same weights bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from eval_learn.errors import NonFiniteError
from eval_learn.techniques.checkpoint import TrainingCheckpoint, optimiser_state, restore_optimiser_state


@dataclass
class TrainingLoop:
    """``steps`` optimiser steps of ``optimizer`` over ``params``. ``label`` names the training in the progress bar
    and in the divergence message, ``hint`` the settings that message names (``learning_rate=...``)."""

    label: str
    steps: int
    optimizer: torch.optim.Optimizer
    params: Mapping[str, torch.Tensor]
    hint: str
    max_grad_norm: float | None = None
    checkpoint: TrainingCheckpoint | None = None
    # the random generators a step draws from: saved and restored with the checkpoint
    generators: Mapping[str, torch.Generator] = field(default_factory=dict)
    after_step: Callable[[], None] | None = None
    # runs between back-propagation and the optimiser step (a constraint that edits the gradient, as some releases do)
    before_step: Callable[[], None] | None = None

    def run(self, step_loss: Callable[[], torch.Tensor]) -> list[float]:
        """Train; returns every step's loss (a resumed run's saved ones first)."""
        losses: list[float] = []
        if self.checkpoint is not None and (saved := self.checkpoint.load()) is not None:
            losses = restore_optimiser_state(saved, self.optimizer, self.params, self.generators)
        bar = tqdm(range(len(losses), self.steps), desc=self.label, leave=False, mininterval=2.0,
                   initial=len(losses), total=self.steps)  # fmt: skip
        for step in bar:
            self.optimizer.zero_grad(set_to_none=True)
            loss = step_loss()
            if not torch.isfinite(loss):
                raise NonFiniteError(
                    f"{self.label}: the loss became {loss.item()} at step {step + 1} of {self.steps} ({self.hint}); "
                    f"training stopped and nothing was cached. A smaller learning rate usually fixes it."
                )
            loss.backward()
            if self.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(list(self.params.values()), self.max_grad_norm)
            if self.before_step is not None:
                self.before_step()
            self.optimizer.step()
            if self.after_step is not None:
                self.after_step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.4g}", refresh=False)
            if self.checkpoint is not None:
                self.checkpoint.maybe_save(
                    step + 1, lambda: optimiser_state(self.optimizer, self.params, self.generators, losses)
                )
        return losses
