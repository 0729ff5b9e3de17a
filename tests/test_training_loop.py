"""The shared training loop (ESD, CA and MACE call it with their losses): it steps, clips, stops on a non-finite
loss before the optimiser moves, and resumes from a saved state to the same tensors."""

from __future__ import annotations

import pytest
import torch

from eval_learn.errors import NonFiniteError
from eval_learn.techniques.checkpoint import TrainingCheckpoint
from eval_learn.techniques.training import TrainingLoop


def quadratic(steps: int, **kwargs) -> tuple[TrainingLoop, torch.nn.Parameter]:
    weight = torch.nn.Parameter(torch.tensor([3.0, -2.0]))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    return TrainingLoop("toy", steps, optimizer, {"w": weight}, "learning_rate=0.1", **kwargs), weight


def test_it_takes_one_optimiser_step_per_loss_and_returns_the_losses() -> None:
    loop, weight = quadratic(3)
    losses = loop.run(lambda: (weight**2).sum())
    # SGD on |w|²: each step multiplies w by 1 - 2·lr = 0.8
    assert losses == pytest.approx([13.0, 13.0 * 0.64, 13.0 * 0.64**2])
    assert weight.detach().tolist() == pytest.approx([3.0 * 0.8**3, -2.0 * 0.8**3])


def test_the_gradient_norm_is_clipped_before_the_step() -> None:
    loop, weight = quadratic(1, max_grad_norm=1.0)
    loop.run(lambda: (weight**2).sum())  # gradient (6, -4), norm 7.2: clipped to norm 1, so w moves by 0.1
    moved = torch.tensor([3.0, -2.0]) - weight.detach()
    assert float(moved.norm()) == pytest.approx(0.1, rel=1e-5)


def test_a_non_finite_loss_stops_before_the_optimiser_moves() -> None:
    calls: list[int] = []
    loop, weight = quadratic(5, after_step=lambda: calls.append(1))

    def loss() -> torch.Tensor:
        return (weight**2).sum() * (float("nan") if len(calls) == 2 else 1.0)

    with pytest.raises(NonFiniteError, match=r"toy: the loss became nan at step 3 of 5 \(learning_rate=0.1\)"):
        loop.run(loss)
    assert len(calls) == 2 and weight.detach().tolist() == pytest.approx([3.0 * 0.8**2, -2.0 * 0.8**2])


def test_a_resumed_run_ends_where_an_uninterrupted_one_does(tmp_path) -> None:
    def noisy(weight: torch.nn.Parameter, generator: torch.Generator):
        return lambda: ((weight - torch.randn(2, generator=generator)) ** 2).sum()

    clean, w_clean = quadratic(6)
    g_clean = torch.Generator().manual_seed(1)
    clean.generators = {"g": g_clean}
    expected = clean.run(noisy(w_clean, g_clean))

    first, w_first = quadratic(3, checkpoint=TrainingCheckpoint(tmp_path / "state.pt", save_at={3}))
    g_first = torch.Generator().manual_seed(1)
    first.generators = {"g": g_first}
    first.run(noisy(w_first, g_first))  # "killed" after step 3, its state saved

    checkpoint = TrainingCheckpoint(tmp_path / "state.pt")
    again, w_again = quadratic(6, checkpoint=checkpoint)
    g_again = torch.Generator().manual_seed(99)  # restored from the saved state
    again.generators = {"g": g_again}
    assert again.run(noisy(w_again, g_again)) == expected
    assert checkpoint.resumed_from == 3 and torch.equal(w_again.detach(), w_clean.detach())
