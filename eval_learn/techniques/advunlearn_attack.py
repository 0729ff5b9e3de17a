"""AdvUnlearn's inner attack: a soft prompt of ``k`` free token embeddings, placed in the concept's prompt, optimised
so that the model being unlearned predicts, for that prompt, the noise the original model predicts for the concept.

It lives beside the technique (not in :mod:`eval_learn.attacks`, a sibling layer the techniques may not import) and
follows OPTML-Group/AdvUnlearn ``train-scripts/utils/attack_util.py`` (``soft_prompt_attack``, ``split_embd``,
``construct_embd``, ``construct_id``), including what its training depends on:

- the prompt is split by its number of *words* (``len(prompt.split())``), not tokens: [start token | n words | k
  slots | the rest]; the k slots' own tokens (padding for a short prompt) are dropped and the k free rows take their
  place where the insertion puts them;
- the attack's gradient is never zeroed, so each Adam step sees the sum of all gradients so far (``fast_at`` takes
  the sign of that sum, in place);
- the rows returned are those built at the start of the last step, before its update.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

Insertion = Literal["prefix_k", "suffix_k", "replace_k", "add", "mid_k", "insert_k", "per_k_words"]
AttackMethod = Literal["pgd", "fast_at"]


@contextmanager
def _token_rows(text_encoder: Any, rows: torch.Tensor) -> Iterator[None]:
    handle = text_encoder.get_input_embeddings().register_forward_hook(lambda _m, _i, _o: rows)
    try:
        yield
    finally:
        handle.remove()


def encode_rows(text_encoder: Any, ids: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """The text encoder's last hidden state for token-embedding ``rows`` [batch, tokens, dim] in place of the
    looked-up ones; the encoder's own forward adds positions, causal mask and final norm (as the release's
    ``CustomTextEncoder`` does, without an attention mask)."""
    with _token_rows(text_encoder, rows.to(text_encoder.get_input_embeddings().weight.dtype)):
        return text_encoder(ids.to(rows.device))[0]


def _split(seq: torch.Tensor, n_words: int, k: int) -> tuple[torch.Tensor, ...]:
    return torch.split(seq, [1, n_words, k, seq.shape[1] - 1 - n_words - k], dim=1)


def _repeat_first(seq: torch.Tensor, count: int) -> torch.Tensor:
    return seq[:, :1].expand(-1, count, *seq.shape[2:])


def _place(sot: torch.Tensor, mid: torch.Tensor, adv: torch.Tensor, eot: torch.Tensor, insertion: Insertion,
           k: int) -> torch.Tensor:  # fmt: skip
    """[start | words | slots | rest] reassembled with ``adv`` (k entries) where ``insertion`` puts them; works on
    token ids [1, L] and on embedding rows [1, L, D] alike (the release's construct_id / construct_embd)."""
    n = mid.shape[1]
    if insertion == "prefix_k":
        parts = [sot, adv, mid, eot]
    elif insertion == "suffix_k":
        parts = [sot, mid, adv, eot]
    elif insertion == "replace_k":
        parts = [sot, adv, _repeat_first(eot, n), eot]
    elif insertion == "mid_k":
        parts = [sot, mid[:, : n // 2], adv, mid[:, n // 2 :], eot]
    elif insertion == "insert_k":
        step = n // (k + 1)
        parts = [sot]
        for i in range(k):
            parts += [mid[:, step * i : step * (i + 1)], adv[:, i : i + 1]]
        parts += [mid[:, step * k :], eot]
    elif insertion == "per_k_words":
        parts = [sot]
        for i in range(k - 1):
            parts += [adv[:, i : i + 1], mid[:, 3 * i : 3 * (i + 1)]]
        parts += [adv[:, k - 1 :], mid[:, 3 * (k - 1) :], eot]
    else:
        raise ValueError(f"unknown insertion '{insertion}'")
    return torch.cat(parts, dim=1)


def adversarial_prompt(ids: torch.Tensor, rows: torch.Tensor, adv: torch.Tensor, n_words: int,
                       insertion: Insertion) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """The prompt's token ids [1, L] and embedding rows [1, L, D] with the k adversarial rows ``adv`` [1, k, D]
    inserted. ``add`` adds them to the words' rows instead (k = the number of words) and pads with the end token."""
    k = adv.shape[1]
    sot_i, mid_i, slot_i, eot_i = _split(ids, n_words, k)
    sot_r, mid_r, _, eot_r = _split(rows, n_words, k)
    if insertion == "add":
        return (torch.cat([sot_i, mid_i, _repeat_first(eot_i, k), eot_i], dim=1),
                torch.cat([sot_r, adv + mid_r, _repeat_first(eot_r, k), eot_r], dim=1))  # fmt: skip
    return _place(sot_i, mid_i, slot_i, eot_i, insertion, k), _place(sot_r, mid_r, adv, eot_r, insertion, k)


@dataclass
class SoftPromptAttack:
    """``steps`` Adam steps (lr ``lr``) on the adversarial rows; ``method`` pgd steps on the (accumulated) gradient,
    fast_at on its sign."""

    steps: int
    lr: float
    method: AttackMethod = "pgd"

    def run(
        self,
        adv_init: torch.Tensor,
        build: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
        loss_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
        """``build(adv)`` gives (ids, rows) of the adversarial prompt, ``loss_of(ids, rows)`` the attack loss of one
        step (each call draws its own x_t and timestep). Returns the last step's (ids, rows), detached, and the
        loss of every step."""
        adv = adv_init.detach().clone().requires_grad_(True)
        optimizer = torch.optim.Adam([adv], lr=self.lr)
        losses: list[float] = []
        ids = rows = adv_init
        for _ in range(self.steps):
            ids, rows = build(adv)
            loss = loss_of(ids, rows)
            loss.backward()  # never zeroed between steps, as in the release
            if self.method == "fast_at":
                adv.grad.sign_()
            optimizer.step()
            losses.append(loss.item())
        return ids.detach(), rows.detach(), losses


def attack_loss(prediction: torch.Tensor, concept_target: torch.Tensor) -> torch.Tensor:
    """The attack's objective: the model under attack should predict what the original predicts for the concept."""
    return F.mse_loss(prediction, concept_target)
