"""``rece``: Reliable and Efficient Concept Erasure — Gong, Chen, Wei, Chen, Jiang, "Reliable and Efficient Concept
Erasure of Text-to-Image Diffusion Models", ECCV 2024 (arXiv:2407.12383).

RECE hardens UCE (:mod:`eval_learn.techniques.uce`) against prompts that find their way back to an erased concept. It
starts from UCE's closed-form edit of every cross-attention key and value projection (the release loads a UCE
checkpoint), then for ``epochs`` rounds:

1. **Adversarial embedding, in closed form.** The token embeddings e that make the *edited* projections W'_l
   reproduce what the *original* projections W_l made of the concept's embeddings c:

       e* = argmin_e Σ_l ‖W'_l e − W_l c‖² + λ_r ‖e‖² = (λ_r I + Σ_l W'_lᵀ W'_l)⁻¹ (Σ_l W'_lᵀ W_l) c

   over every key and value projection l, for each of the concept's token positions (the release's
   ``close_form_emb_regzero``; λ_r = ``regular_scale``). e* is the embedding an attacker would look for: through
   the edited model it still means the concept.
2. **UCE on it.** Each projection is edited again with UCE's closed form (imported from
   :func:`eval_learn.techniques.uce.closed_form_edit`), mapping e* onto the target's embeddings under the current
   weights and keeping the preserved prompts' projections (the release's ``edit_model_adversarial``, "replace").

The defaults are the release's nudity recipe (``train.py`` as its README and ``scripts/nudity.sh`` run it): three
rounds, λ_r = 0.1, erase scale 1, preserve scale 0.1 and λ = 0.1 on the edit, the empty prompt as target and as the
preserved prompt, after UCE's default nudity edit (our ``uce`` recipe ``wacv_nudity``, the checkpoint the release
starts from). The release judges images after every round and keeps the round with the lowest nudity rate; here every
round is run (selection by a judge would tie the weights to a metric), and the round count is part of the cache key.
Solved in float64.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import torch

from eval_learn.configs import as_list, check_concepts_and_targets, one_each, require
from eval_learn.techniques.base import Technique, WeightsConfig
from eval_learn.techniques.uce import UCE, ConceptEncoder, UCEConfig, closed_form_edit, cross_attention_projections
from eval_learn.techniques.weights import Weights

log = logging.getLogger(__name__)

EDIT_KEYS = (
    "erase_concept",
    "target_concept",
    "preserve_concepts",
    "epochs",
    "regular_scale",
    "erase_scale",
    "preserve_scale",
    "lamb",
    "uce_first",
    "uce_erase_scale",
    "uce_preserve_scale",
    "uce_lamb",
)


@dataclass
class RECEConfig(WeightsConfig):
    erase_concept: str | list[str] = "nudity"  # one concept or a list, erased together
    target_concept: str | list[str] = ""  # where each erased concept goes ("" = the empty prompt); one, or one each
    preserve_concepts: list[str] | None = None  # null: the empty prompt (the release's); [] = nothing
    epochs: int = 3  # rounds of (adversarial embedding, edit)
    regular_scale: float = 0.1  # λ_r, the adversarial embedding's ridge term
    erase_scale: float = 1.0  # s_e of each round's edit
    preserve_scale: float = 0.1  # s_p of each round's edit
    lamb: float = 0.1  # λ of each round's edit (‖W' − W‖², W the current weights)
    uce_first: bool = True  # start from UCE's edit (the release's --target_ckpt); false: from the base model
    uce_erase_scale: float = 1.0  # the UCE edit's settings (UCE's default recipe)
    uce_preserve_scale: float | None = None  # null: UCE's rule, max(0.1, 1 / number of preserved concepts)
    uce_lamb: float = 0.5

    def erased_concepts(self) -> list[str] | None:
        return as_list(self.erase_concept)

    def targets(self) -> list[str]:
        return one_each(self.target_concept, len(self.erased_concepts() or []))

    def preserved(self) -> list[str]:
        return [""] if self.preserve_concepts is None else list(self.preserve_concepts)

    def uce_config(self) -> UCEConfig:
        """UCE's edit that RECE starts from: UCE's default recipe for the same concepts, targets and preserved set."""
        return UCEConfig(erase_concept=self.erase_concept, target_concept=self.target_concept,
                         preserve_concepts=self.preserve_concepts, erase_scale=self.uce_erase_scale,
                         preserve_scale=self.uce_preserve_scale, lamb=self.uce_lamb, device=self.device)  # fmt: skip

    def validate(self) -> None:
        super().validate()
        check_concepts_and_targets(self.erase_concept, self.target_concept, "target_concept", "the edit")
        erased = {c.strip().lower() for c in as_list(self.erase_concept)}
        clash = sorted({c for c in self.preserved() if c.strip().lower() in erased})
        require(not clash, f"preserve_concepts {clash} are also erased: a concept cannot be both")
        require(self.epochs >= 1, f"epochs must be >= 1 (rounds after UCE's edit; uce is RECE without them), "
                f"got {self.epochs}")  # fmt: skip
        for name in ("regular_scale", "erase_scale", "preserve_scale", "lamb", "uce_erase_scale",
                     "uce_preserve_scale", "uce_lamb"):  # fmt: skip
            value = getattr(self, name)
            if value is not None:
                require(math.isfinite(value) and value >= 0, f"{name} must be a finite number >= 0, got {value}")
        for name in ("regular_scale", "erase_scale", "lamb", "uce_erase_scale", "uce_lamb"):
            require(getattr(self, name) > 0, f"{name} must be > 0, got {getattr(self, name)}")
        if self.uce_first:
            self.uce_config().validate()


def adversarial_embedding(
    edited: list[torch.Tensor], original: list[torch.Tensor], concept: torch.Tensor, regular_scale: float
) -> torch.Tensor:
    """Rows e* = (λ_r I + Σ_l W'_lᵀ W'_l)⁻¹ (Σ_l W'_lᵀ W_l) c for each row c of ``concept`` [L, d]: the minimiser of
    Σ_l ‖W'_l e − W_l c‖² + λ_r ‖e‖² (float64)."""
    width = concept.shape[1]
    gram = regular_scale * torch.eye(width, dtype=torch.float64, device=concept.device)
    cross = torch.zeros_like(gram)
    for w_edited, w_original in zip(edited, original, strict=True):
        we, wo = w_edited.to(torch.float64), w_original.to(w_edited.device, torch.float64)
        gram = gram + we.T @ we
        cross = cross + we.T @ wo
    return torch.linalg.solve(gram, cross @ concept.to(torch.float64).T).T


def edit_rounds(
    current: dict[str, torch.Tensor],
    original: dict[str, torch.Tensor],
    concepts: list[torch.Tensor],
    targets: torch.Tensor,
    preserve_in: torch.Tensor,
    cfg: RECEConfig,
) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """RECE's rounds on the projections ``current`` (by name; ``original``: the base model's): each round derives
    every concept's adversarial embedding [L, d] from the current weights, then edits every projection so that it
    maps them onto ``targets``' projections while ``preserve_in`` keeps its own. Returns the weights and per-round
    facts for the report."""
    names = list(current)
    current = dict(current)
    rounds = []
    for epoch in range(cfg.epochs):
        edited, base = [current[n] for n in names], [original[n] for n in names]
        erase_in = torch.cat([adversarial_embedding(edited, base, c, cfg.regular_scale) for c in concepts])
        before = {n: (erase_in @ current[n].T - targets @ current[n].T).norm() for n in names}
        for n in names:
            w = current[n]
            current[n] = closed_form_edit(w, erase_in, targets @ w.T, preserve_in, cfg.erase_scale,
                                          cfg.preserve_scale, cfg.lamb)  # fmt: skip
        left = max(float((erase_in @ current[n].T - targets @ current[n].T).norm() / before[n]) for n in names)
        rounds.append({"epoch": epoch, "adversarial_norm": float(erase_in.norm()), "erase_residual_max": left})
        log.info("RECE round %d/%d: adversarial embedding norm %.4g, residual after the edit <= %.3g",
                 epoch + 1, cfg.epochs, float(erase_in.norm()), left)  # fmt: skip
    return current, rounds


class RECE(Technique):
    name = "rece"
    config_cls = RECEConfig
    config: RECEConfig
    algorithm_version = 1
    weight_fields = EDIT_KEYS

    def build_weights(self, pipe: Any) -> Weights:
        cfg, start = self.config, time.perf_counter()
        layers = cross_attention_projections(pipe.unet)
        original = {name: layer.weight.detach().to(torch.float64).clone() for name, layer in layers.items()}
        current = dict(original)
        if cfg.uce_first:
            uce = UCE(cfg.uce_config(), self.context)
            for key, tensor in uce.build_weights(pipe).items():
                current[key.removeprefix("unet.").removesuffix(".weight")] = tensor.to(torch.float64)
            self.info["uce"] = uce.info
        encoder = ConceptEncoder(pipe, self.device)
        concepts = [encoder.encode(c)[0] for c in cfg.erased_concepts() or []]
        targets = torch.cat([encoder.encode(t)[0] for t in cfg.targets()])
        preserved = [encoder.encode(p)[0] for p in cfg.preserved()]
        preserve_in = torch.cat(preserved) if preserved else targets.new_zeros((0, targets.shape[1]))
        current, rounds = edit_rounds(current, original, concepts, targets, preserve_in, cfg)
        self.info.update(
            edited_matrices=len(layers),
            rounds=rounds,
            edit_s=round(time.perf_counter() - start, 4),
        )
        return {f"unet.{n}.weight": current[n].to(layers[n].weight.dtype) for n in layers}

    def failure_hint(self) -> str:
        return f" (regular_scale={self.config.regular_scale}, lamb={self.config.lamb}: larger values are better conditioned)"
