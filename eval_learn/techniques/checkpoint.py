"""Training that survives a kill: a technique's training loop saves its state now and then, and a rerun of the same
command continues from the last save instead of from step 0, ending with the same weights bit for bit.

What is saved is everything the next step depends on: the trained tensors, the optimiser's state, the random
generators' states, the step and the losses so far (and whatever else a technique adds, e.g. CA's anchor latents).
The file sits next to the cached weights, under the same key (every setting that shapes the weights, the algorithm
version and the base model), so a changed setting never resumes from another run's state; it is written atomically
(a kill during a save leaves the previous save) and removed once the finished weights are cached.

It is read with ``torch.load(weights_only=True)``: tensors, numbers, strings and lists only, never code.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from eval_learn.errors import RunError
from eval_learn.storage import atomic_write, remove_quietly

log = logging.getLogger(__name__)


class TrainingCheckpoint:
    """Periodic saves of one training run's state (at most one every ``every_s`` seconds, and at ``save_at`` steps)."""

    def __init__(self, path: Path, every_s: float = 60.0, save_at: set[int] | None = None) -> None:
        self.path = path
        self.every_s = every_s
        self.save_at = save_at or set()
        self._last = time.monotonic()
        self.resumed_from: int | None = None
        self.saves = 0
        self.disabled = False
        self._save_s = 0.0
        self._companions: list[TrainingCheckpoint] = []

    def companion(self, name: str) -> TrainingCheckpoint:
        """A second saved state of the same run, saved when asked (e.g. CA's anchor images, made once before
        training: too large to write again with every save), discarded with this one."""
        other = TrainingCheckpoint(self.path.with_name(f"{self.path.name.split('.')[0]}.{name}.pt"), float("inf"))
        self._companions.append(other)
        return other

    def load(self) -> dict[str, Any] | None:
        """The last saved state, or None (none saved, unreadable, or saved by other library versions, whose
        tensors or optimiser state may not fit: then training starts over)."""
        self._remove_temporaries()  # a kill during a save leaves its temporary file (gigabytes for a full UNet)
        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
            if not isinstance(state, dict) or state.get("versions") != _versions() or "step" not in state:
                raise ValueError(f"saved by other library versions ({state.get('versions')}, now {_versions()})"
                                 if isinstance(state, dict) else "not a training state")  # fmt: skip
        except Exception as err:  # noqa: BLE001 - a damaged partial state only costs the steps it saved
            log.warning("Training checkpoint %s cannot be used (%s): training starts over", self.path, err)
            remove_quietly(self.path)
            return None
        self.resumed_from = int(state["step"])
        log.info("Resuming training from step %d (%s)", self.resumed_from, self.path)
        return state

    def maybe_save(self, step: int, state: Callable[[], Mapping[str, Any]], force: bool = False) -> None:
        """Save ``state()`` after ``step`` steps if enough time has passed (or ``step`` is in ``save_at``, or
        ``force``). Saving never costs more than a tenth of the training time (a full UNet with Adam's state is
        gigabytes: the interval grows with what a save takes), and a save that fails (a full disk) only ends the
        saving, never the training."""
        if self.disabled:
            return
        wait = max(self.every_s, 10 * self._save_s)
        if not force and step not in self.save_at and time.monotonic() - self._last < wait:
            return
        start = time.monotonic()
        try:
            buffer = io.BytesIO()
            torch.save({**state(), "step": step, "versions": _versions()}, buffer)
            atomic_write(self.path, buffer.getvalue())
        except (OSError, RunError) as err:
            log.warning("Training state could not be saved (%s): training goes on without resume points", err)
            self.disabled = True
            return
        self._last = time.monotonic()
        self._save_s = self._last - start
        self.saves += 1

    def discard(self) -> None:
        remove_quietly(self.path)
        self._remove_temporaries()
        for other in self._companions:
            other.discard()

    def _remove_temporaries(self) -> None:
        for tmp in self.path.parent.glob(f".{self.path.name}.*.tmp"):  # atomic_write's temporary names
            remove_quietly(tmp)


def _versions() -> dict[str, str]:
    """The libraries whose changes could make a saved state not fit (parameter names, optimiser state layout)."""
    from importlib.metadata import version

    return {"torch": str(torch.__version__), "diffusers": version("diffusers"), "transformers": version("transformers")}


def optimiser_state(optimizer: torch.optim.Optimizer, params: Mapping[str, torch.Tensor],
                    generators: Mapping[str, torch.Generator], losses: list[float]) -> dict[str, Any]:  # fmt: skip
    """The usual training state: trained tensors (by name), optimiser, generators, losses."""
    return {
        "params": {name: p.detach().to("cpu").clone() for name, p in params.items()},
        "optimizer": optimizer.state_dict(),
        "generators": {name: g.get_state() for name, g in generators.items()},
        "losses": list(losses),
    }


def restore_optimiser_state(state: Mapping[str, Any], optimizer: torch.optim.Optimizer,
                            params: Mapping[str, torch.Tensor], generators: Mapping[str, torch.Generator]) -> list[float]:  # fmt: skip
    """Put a saved :func:`optimiser_state` back; returns the losses so far."""
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(state["params"][name].to(p.device, p.dtype))
    optimizer.load_state_dict(state["optimizer"])
    for name, g in generators.items():
        g.set_state(state["generators"][name])
    return list(state["losses"])
