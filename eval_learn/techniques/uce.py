"""``uce``: Unified Concept Editing — Gandikota, Orgad, Belinkov, Materzyńska, Bau, "Unified Concept Editing in
Diffusion Models", WACV 2024 (arXiv:2308.14761).

Text reaches the UNet only through the cross-attention key and value projections (``attn2.to_k``, ``attn2.to_v``), so
UCE rewrites each of these matrices W once, in closed form, so that the token embeddings c_i of an erased concept are
projected where the embeddings of a target concept are (v*_i = W c_target: the empty prompt, or an anchor such as
"art" for the paper's guided erasure of styles) while preserved concepts c_j keep their projections:

    W* = argmin  s_e Σ_i ‖W' c_i − v*_i‖² + s_p Σ_j ‖W' c_j − W c_j‖² + λ ‖W' − W‖²_F
       = (λ W + s_e Σ_i v*_i c_iᵀ + s_p Σ_j W c_j c_jᵀ) (λ I + s_e Σ_i c_i c_iᵀ + s_p Σ_j c_j c_jᵀ)⁻¹

with s_e = ``erase_scale``, s_p = ``preserve_scale`` and λ = ``lamb``. This is the paper's equation with the authors'
release's weights on its two sums and its ridge term λ‖W' − W‖², which keeps every direction that no listed concept
spans (the paper's preservation of W c for all other inputs) and makes the system invertible. It is solved in float64.

Which token embeddings form c (``erase_tokens``, ``preserve_tokens``), from the text encoder's last hidden state of
the concept alone, padded to the tokenizer's length as the pipeline encodes prompts:

- ``last_to_end`` (default for erased concepts; the authors' WACV-era release, ``train_erase.py``): the concept's last
  token before end-of-text *and every end-of-text/padding position after it*, paired position by position with the
  target's tokens from its own last token on (for the empty target: begin-of-text, then its end-of-text tokens). The
  causal CLIP encoder writes the whole concept into the positions after its last token, and the UNet attends to all
  77 positions, so erasing the last token alone leaves the concept readable from the padding.
- ``last`` (the authors' 2024 release, ``uce_sd_erase.py``): the last token only, paired with the target's last token.
- ``all`` (preserved concepts only; default, as in ``train_erase.py``): every position of the preserved prompt.

Erased and target sequences are aligned from their last tokens, so a multi-word concept ("Van Gogh") is read where
CLIP has seen all of it. ``preserve_concepts: null`` preserves the empty prompt, as the release does when no concepts
are given: it is the unconditional branch of classifier-free guidance and must not move.

The edited matrices (only they) are the technique's weights, cached by the base class under a key of the fields that
shape them and the base model.
"""

from __future__ import annotations

import csv
import functools
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from eval_learn.configs import as_list, check_concepts_and_targets, one_each, require
from eval_learn.techniques.base import Technique, WeightsConfig
from eval_learn.techniques.weights import Weights

log = logging.getLogger(__name__)

EraseTokens = Literal["last_to_end", "last"]
PreserveList = Literal["uce_artists"]
LISTS_DIR = Path(__file__).resolve().parents[1] / "data" / "prompts"
PreserveTokens = Literal["all", "last_to_end", "last"]
EDIT_KEYS = (
    "erase_concept",
    "target_concept",
    "preserve_concepts",
    "preserve_list",
    "erase_scale",
    "preserve_scale",
    "lamb",
    "erase_tokens",
    "preserve_tokens",
)


@dataclass
class UCEConfig(WeightsConfig):
    erase_concept: str | list[str] = "nudity"  # one concept or a list, erased together
    target_concept: str | list[str] = ""  # where each erased concept goes ("" = the empty prompt); one, or one each
    preserve_concepts: list[str] | None = None  # null: the empty prompt (the release's default); [] = nothing
    preserve_list: PreserveList | None = None  # also preserve a shipped list's concepts, the erased ones left out
    erase_scale: float = 1.0  # s_e, weight of the erased concepts' term
    preserve_scale: float | None = None  # s_p; null: the release's max(0.1, 1 / number of preserved concepts)
    lamb: float = 0.5  # λ, weight of ‖W' − W‖² (every other direction keeps its projection)
    erase_tokens: EraseTokens = "last_to_end"
    preserve_tokens: PreserveTokens = "all"

    def erased_concepts(self) -> list[str] | None:
        return as_list(self.erase_concept)

    def targets(self) -> list[str]:
        return one_each(self.target_concept, len(self.erased_concepts() or []))

    def preserved(self) -> list[str]:
        """The preserved concepts: ``preserve_concepts`` (null: the empty prompt), then ``preserve_list``'s entries
        that are neither erased nor already listed (compared without case, as the release compares artists)."""
        preserved = [""] if self.preserve_concepts is None else list(self.preserve_concepts)
        if self.preserve_list is not None:
            skip = {c.lower() for c in [*preserved, *as_list(self.erase_concept)]}
            preserved += [c for c in shipped_list(self.preserve_list) if c.lower() not in skip]
        return preserved

    def preserve_weight(self) -> float:
        """s_p: as given, or train_erase.py's default max(0.1, 1/len(retain_texts)), whose retain_texts are the
        preserved concepts ('' included): 1.0 when only the empty prompt is preserved, 0.1 from ten concepts on."""
        if self.preserve_scale is not None:
            return self.preserve_scale
        return max(0.1, 1 / max(1, len(self.preserved())))

    def validate(self) -> None:
        super().validate()
        check_concepts_and_targets(self.erase_concept, self.target_concept, "target_concept", "the edit")
        erased = as_list(self.erase_concept)
        clash = sorted({c for c in self.preserved() if c.strip().lower() in {e.strip().lower() for e in erased}})
        require(not clash, f"preserve_concepts {clash} are also erased: a concept cannot be both")
        for name in ("erase_scale", "preserve_scale", "lamb"):
            value = getattr(self, name)
            if value is None:
                continue
            require(math.isfinite(value) and value >= 0, f"{name} must be a finite number >= 0, got {value}")
        require(self.erase_scale > 0, "erase_scale must be > 0 (0 erases nothing)")
        require(self.lamb > 0, "lamb must be > 0: it keeps the directions no concept spans, and 0 makes the system "
                "singular whenever the concepts span fewer dimensions than the text embedding")  # fmt: skip


@functools.cache
def shipped_list(name: str) -> tuple[str, ...]:
    """A concept list shipped with the package (``uce_artists``: the release's 1,734 artists)."""
    with open(LISTS_DIR / f"{name}.csv", newline="", encoding="utf-8") as f:
        return tuple(row["artist"] for row in csv.DictReader(f))


def cross_attention_projections(unet: torch.nn.Module) -> dict[str, torch.nn.Linear]:
    """Every cross-attention key and value projection of the UNet, by module name."""
    found = {
        name: module
        for name, module in unet.named_modules()
        if ".attn2." in f".{name}"
        and name.rsplit(".", 1)[-1] in ("to_k", "to_v")
        and isinstance(module, torch.nn.Linear)
    }
    if not found:
        raise ValueError("the UNet has no cross-attention key/value projections (attn2.to_k / attn2.to_v) to edit")
    return found


class ConceptEncoder:
    """Token embeddings of short texts, exactly as the pipeline encodes a prompt (padded to the tokenizer's length,
    last hidden state of the text encoder)."""

    def __init__(self, pipe: Any, device: str) -> None:
        self.tokenizer = pipe.tokenizer
        self.text_encoder = pipe.text_encoder
        self.device = device

    @torch.no_grad()
    def encode(self, text: str) -> tuple[torch.Tensor, int]:
        """(hidden states [L, d], index of the last token before end-of-text; 0 = begin-of-text for "")."""
        tokens = self.tokenizer(
            text,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        hidden = self.text_encoder(tokens.input_ids.to(self.device))[0][0]
        return hidden.detach().to(torch.float64), int(tokens.attention_mask[0].sum()) - 2

    def pair(self, concept: str, target: str, tokens: EraseTokens) -> tuple[torch.Tensor, torch.Tensor]:
        """Aligned rows (erased concept's embeddings, target's embeddings) to map the former onto the latter."""
        c, i = self.encode(concept)
        t, j = self.encode(target)
        if tokens == "last":
            return c[i : i + 1], t[j : j + 1]
        n = len(c) - max(i, j)  # from each last token to the end, as many positions as both have
        return c[i : i + n], t[j : j + n]

    def rows(self, text: str, tokens: PreserveTokens) -> torch.Tensor:
        h, i = self.encode(text)
        return {"all": h, "last_to_end": h[i:], "last": h[i : i + 1]}[tokens]


def closed_form_edit(
    weight: torch.Tensor,
    erase_inputs: torch.Tensor,
    erase_outputs: torch.Tensor,
    preserve_inputs: torch.Tensor,
    erase_scale: float,
    preserve_scale: float,
    lamb: float,
) -> torch.Tensor:
    """The minimiser of s_e‖W' Cₑᵀ − Vₑᵀ‖² + s_p‖(W' − W) Cₚᵀ‖² + λ‖W' − W‖² (rows of C are token embeddings, rows
    of Vₑ the wanted outputs); float64 throughout, returned in ``weight``'s dtype."""
    w = weight.detach().to(torch.float64)
    ce, ve, cp = (x.to(w.device, torch.float64) for x in (erase_inputs, erase_outputs, preserve_inputs))
    lhs = lamb * w + erase_scale * ve.T @ ce + preserve_scale * (w @ cp.T) @ cp
    gram = lamb * torch.eye(w.shape[1], dtype=torch.float64, device=w.device)
    gram = gram + erase_scale * ce.T @ ce + preserve_scale * cp.T @ cp
    return torch.linalg.solve(gram, lhs.T).T.to(weight.dtype)  # gram is symmetric: W* = lhs · gram⁻¹


class UCE(Technique):
    name = "uce"
    config_cls = UCEConfig
    config: UCEConfig
    algorithm_version = 1
    weight_fields = EDIT_KEYS

    def build_weights(self, pipe: Any) -> Weights:
        cfg, start = self.config, time.perf_counter()
        encoder = ConceptEncoder(pipe, self.device)
        pairs = [
            encoder.pair(c, t, cfg.erase_tokens)
            for c, t in zip(cfg.erased_concepts() or [], cfg.targets(), strict=True)
        ]
        erase_in = torch.cat([c for c, _ in pairs])
        target_in = torch.cat([t for _, t in pairs])
        width = erase_in.shape[1]
        preserved = [encoder.rows(p, cfg.preserve_tokens) for p in cfg.preserved()]
        preserve_scale = cfg.preserve_weight()
        preserve_in = torch.cat(preserved) if preserved else erase_in.new_zeros((0, width))
        weights: Weights = {}
        erase_left, preserve_drift = [], []
        for name, layer in cross_attention_projections(pipe.unet).items():
            w = layer.weight.detach().to(torch.float64)
            wanted = target_in.to(w.device) @ w.T  # v*_i = W c_target
            edited = closed_form_edit(w, erase_in, wanted, preserve_in, cfg.erase_scale, preserve_scale, cfg.lamb)
            before = (erase_in.to(w.device) @ w.T - wanted).norm()
            erase_left.append(float((erase_in.to(w.device) @ edited.T - wanted).norm() / before) if before > 0 else 0.0)
            if len(preserve_in):
                kept = preserve_in.to(w.device) @ w.T
                preserve_drift.append(float((preserve_in.to(w.device) @ edited.T - kept).norm() / kept.norm()))
            weights[f"unet.{name}.weight"] = edited.to(layer.weight.dtype)
        self.info.update(
            edited_matrices=len(weights),
            erased_token_vectors=len(erase_in),
            preserved_token_vectors=len(preserve_in),
            preserve_scale=preserve_scale,
            # ‖W* c_i − v*_i‖ / ‖W c_i − v*_i‖ and ‖W* c_j − W c_j‖ / ‖W c_j‖, worst over the edited matrices
            erase_residual_max=max(erase_left),
            preserve_drift_max=max(preserve_drift) if preserve_drift else None,
            edit_s=round(time.perf_counter() - start, 4),  # the edit itself, without loading the pipeline
        )
        log.info("UCE: edited %d K/V matrices to erase %s (towards %s), preserving %d concepts; residual <= %.3g",
                 len(weights), cfg.erased_concepts(), cfg.targets(), len(cfg.preserved()), max(erase_left))  # fmt: skip
        return weights

    def failure_hint(self) -> str:
        return f" (lamb={self.config.lamb}, erase_scale={self.config.erase_scale}: a larger lamb is better conditioned)"
