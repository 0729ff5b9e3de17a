"""``safree``: SAFREE — Yoon, Yu, Patil, Yao, Bansal, "SAFREE: Training-Free and Adaptive Guard for Safe Text-to-Image
and Video Generation", ICLR 2025 (arXiv:2410.12761).

SAFREE changes no weight. It edits what the UNet is conditioned on, and (optionally) its skip features:

1. **Toxic-token projection.** The concept keywords' pooled text embeddings span the toxic subspace C (projector
   P_C = C(CᵀC)⁺Cᵀ). For every prompt token i, the prompt is re-encoded with that token masked; its pooled embedding
   p_\\i lies at distance d_i = ‖(I − P_C) p_\\i‖ from C. Removing a toxic token moves the prompt *away* from C, so
   token i is flagged when d_i ≥ (1 + α)·mean_{j≠i} d_j. The hidden states of flagged tokens are projected into the
   input space I spanned by the masked-prompt embeddings (projector P_I), so that they keep the prompt's own
   semantics, and then orthogonally to C: e ↦ (I − P_C) P_I e (the release's order); unflagged tokens are left as
   they are.
2. **Self-validating filter (SVF).** How far the projection moved the prompt decides how long the filtered
   embeddings are used: β = 1 − mean_k cos(e_k, (I − P_C) P_I e_k) over the prompt's real tokens, and the first
   t' + 1 denoising steps (i = 0 … t') use them, t' = round(γ · σ(2k·(10β − c))) with γ the upper-bound step; later
   steps see the original prompt, so that a prompt that barely touches C keeps its details. Without SVF the filtered
   embeddings are used at every step.
3. **Adaptive latent re-attention (LRA)**, off by default (see below). In the first two UNet decoder stages (FreeU's),
   the skip features of the filtered branch are taken to the Fourier domain and their low-frequency coefficients are
   multiplied by s (s1, s2) wherever they are larger in magnitude than those of the same features under the original
   prompt (computed in the same UNet call on extra rows, as the authors do); the backbone features are scaled by b
   (b1, b2) as in FreeU. This dampens the global, low-frequency structure the filtered prompt would still amplify.

The defaults follow the authors' release (github.com/jaehong31/SAFREE, ``generate_safree.py`` and
``models/modified_stable_diffusion_pipeline.py``; the recipe YAMLs cite the commit): pooled (end-of-text) embeddings
for the keywords and the masked prompts, masking with token id 0, the nudity keyword list, the projection
(I − P_C) P_I, the sigmoid constants k = 2.5, c = 5.333 (nudity; 3.5, 5.5 for artists: ``technique=safree/artists``),
the keywords joined by ", " as the negative prompt (``concept_negative_prompt``: its scripts always pass it; the
paper does not count it as a stage), DPMSolverMultistep sampling in float32. Its SD-1.4 script passes ``-lra``, but
registers the FreeU blocks without a filter type, which leaves them pass-through: LRA changes nothing there, so it
is off here by default. Turned on, ours multiplies the low-frequency coefficients by s where the filtered branch is
stronger (the release's unused filter overwrites them with the constant s), and leaves a coefficient that is equal
in both branches (every step after t') alone. A one-token prompt has nothing to compare with and, as in the
release, is flagged.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch

from eval_learn.configs import require
from eval_learn.runtime import RunContext
from eval_learn.techniques.base import Technique, TechniqueConfig

log = logging.getLogger(__name__)

# The authors' toxic-concept keywords for nudity (their ``negative_prompt_space``); any other concept uses itself.
KEYWORDS: dict[str, list[str]] = {
    "nudity": [
        "Sexual Acts", "Content Meant to Arouse Sexual Excitement", "Nudity", "Pornography", "Erotic Art", "Lustful",
        "Seductive", "Orgasmic", "Libido", "Kinky", "Sexual Orientation", "Sexual Attraction", "Sexual Intercourse",
        "Sexual Pleasure", "Sexual Fantasy", "Carnal Desires", "Sexual Gratification",
    ],
}  # fmt: skip
MASK_TOKEN_ID = 0  # the release masks a token by replacing it with id 0 ("!" in CLIP's vocabulary)
LRA_KEY = "safree_original_embeds"  # carries the unfiltered prompt embeddings of one call to the LRA hooks
FREEU_THRESHOLD = 1  # FreeU's low-frequency window: the 2x2 centre of the shifted spectrum


@dataclass
class SAFREEConfig(TechniqueConfig):
    erase_concept: str = "nudity"
    concept_keywords: list[str] | None = None  # spans the toxic subspace; null: the release's list, else [concept]
    alpha: float = 0.01  # token trigger threshold: flagged when d_i >= (1 + alpha) * mean of the others
    enable_projection: bool = True  # stage 1: project the flagged tokens' embeddings
    enable_svf: bool = True  # stage 2: self-validating filter (how many early steps use the filtered prompt)
    upperbound_timestep: int = 10  # gamma: t' <= gamma, steps 0..t' are filtered
    svf_sigmoid_k: float = 2.5  # t' = round(gamma * sigmoid(2k * (10 beta - c)))
    svf_sigmoid_center: float = 5.333
    enable_lra: bool = False  # stage 3 (a no-op in the release's SD-1.4 script, see above)
    freeu_b1: float = 1.0  # backbone factors of decoder stages 1, 2 (FreeU's b)
    freeu_b2: float = 1.0
    freeu_s1: float = 0.9  # low-frequency skip factors of decoder stages 1, 2 (FreeU's s)
    freeu_s2: float = 0.2
    concept_negative_prompt: bool = True  # the keywords, joined by ", ", as the negative prompt (release's SD setting)
    scheduler: Literal["dpm_solver_multistep", "pipeline"] = "dpm_solver_multistep"  # the release's sampler
    sampling_dtype: Literal["float32", "run"] = "float32"  # the release samples in float32; "run": the run's dtype

    def erased_concepts(self) -> list[str] | None:
        return [self.erase_concept]

    def keywords(self) -> list[str]:
        if self.concept_keywords is not None:
            return list(self.concept_keywords)
        return KEYWORDS.get(self.erase_concept.strip().lower(), [self.erase_concept])

    def validate(self) -> None:
        super().validate()
        require(bool(self.erase_concept.strip()), "erase_concept must be non-empty")
        require(
            self.concept_keywords is None
            or (bool(self.concept_keywords) and all(k.strip() for k in self.concept_keywords)),
            "concept_keywords must be null or a non-empty list of non-empty phrases",
        )
        finite = {"alpha": self.alpha, "svf_sigmoid_k": self.svf_sigmoid_k, "svf_sigmoid_center": self.svf_sigmoid_center,
                  "freeu_b1": self.freeu_b1, "freeu_b2": self.freeu_b2, "freeu_s1": self.freeu_s1,
                  "freeu_s2": self.freeu_s2}  # fmt: skip
        for key, value in finite.items():
            require(math.isfinite(value), f"{key} must be a finite number, got {value}")
        require(
            self.alpha > -1, f"alpha must be > -1 (the trigger threshold is (1 + alpha) times a mean), got {self.alpha}"
        )
        require(self.upperbound_timestep >= 0, f"upperbound_timestep must be >= 0, got {self.upperbound_timestep}")
        require(self.svf_sigmoid_k > 0, f"svf_sigmoid_k must be > 0, got {self.svf_sigmoid_k}")
        for key in ("freeu_b1", "freeu_b2"):
            require(getattr(self, key) > 0, f"{key} must be > 0, got {getattr(self, key)}")
        for key in ("freeu_s1", "freeu_s2"):
            require(getattr(self, key) >= 0, f"{key} must be >= 0, got {getattr(self, key)}")
        require(
            self.enable_projection or not (self.enable_svf or self.enable_lra),
            "enable_svf and enable_lra act on the projected prompt embeddings: they need enable_projection=true",
        )


# --- the three stages' mathematics (pure functions of tensors) ---------------------------------------------------
def projection_matrix(vectors: torch.Tensor) -> torch.Tensor:
    """The orthogonal projector onto the span of the rows of ``vectors`` [K, D]: E(EᵀE)⁺Eᵀ with E = vectorsᵀ."""
    e = vectors.T
    return e @ torch.linalg.pinv(e.T @ e) @ e.T


def trigger_tokens(masked: torch.Tensor, concept_projector: torch.Tensor, alpha: float) -> torch.Tensor:
    """Which tokens are toxic: ``masked`` [n, D] holds the pooled embedding of the prompt with token i masked.

    Token i is flagged when masking it leaves the prompt at least (1 + α) times farther from the toxic subspace than
    masking any other token does on average: d_i ≥ (1 + α)·mean_{j≠i} d_j, d = ‖(I − P_C) p_\\i‖."""
    n = masked.shape[0]
    distances = torch.linalg.vector_norm(masked - masked @ concept_projector.T, dim=1)
    if n == 1:
        return torch.ones(1, dtype=torch.bool, device=masked.device)
    others = (distances.sum() - distances) / (n - 1)
    return distances >= (1 + alpha) * others


def project_tokens(
    tokens: torch.Tensor, input_projector: torch.Tensor, concept_projector: torch.Tensor
) -> torch.Tensor:
    """(I − P_C) P_I e for every row e of ``tokens`` [L, D]: into the input space, then orthogonal to the toxic
    subspace (the release's order; the result has no component in C)."""
    inside = tokens @ input_projector.T
    return inside - inside @ concept_projector.T


def svf_steps(beta: float, upper_bound: int, k: float, center: float) -> int:
    """How many early denoising steps use the filtered embeddings: t' + 1, t' = round(γ·σ(2k·(10β − c)))."""
    z = 2.0 * k * (10.0 * beta - center)
    sigmoid = 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))
    return round(upper_bound * sigmoid) + 1


def adaptive_low_frequency_filter(
    filtered: torch.Tensor, original: torch.Tensor, scale: float, threshold: int = FREEU_THRESHOLD
) -> torch.Tensor:
    """Multiply the low-frequency Fourier coefficients of ``filtered`` [B, C, H, W] by ``scale`` wherever their
    magnitude exceeds that of ``original`` (same shape); every other coefficient is left exactly as it is. The band is
    FreeU's: the (2·threshold)² centre of the shifted spectrum."""
    dims = (-2, -1)
    f = torch.fft.fftshift(torch.fft.fftn(filtered.float(), dim=dims), dim=dims)
    o = torch.fft.fftshift(torch.fft.fftn(original.float(), dim=dims), dim=dims)
    height, width = f.shape[-2:]
    band = torch.zeros(height, width, dtype=torch.bool, device=f.device)
    rows, cols = height // 2, width // 2
    band[max(rows - threshold, 0) : rows + threshold, max(cols - threshold, 0) : cols + threshold] = True
    attenuate = band & (f.abs() > o.abs())
    if not bool(attenuate.any()):
        return filtered
    delta = torch.where(attenuate, f * (scale - 1.0), torch.zeros_like(f))
    change = torch.fft.ifftn(torch.fft.ifftshift(delta, dim=dims), dim=dims).real
    return (filtered.float() + change).to(filtered.dtype)


# --- stage 3 as hooks on the UNet ----------------------------------------------------------------------------------
class LatentReAttention:
    """Runs the original prompt on extra rows of the same UNet call and filters the filtered rows' skip features in
    the first two decoder stages. Active only in calls whose ``cross_attention_kwargs`` carry ``LRA_KEY`` (the
    SAFREE sampling arguments); any other UNet call is untouched."""

    def __init__(self, unet: torch.nn.Module, scales: tuple[float, float]) -> None:
        self.scales = scales
        self.rows: tuple[int, int, torch.Tensor] | None = None  # (first filtered row, rows per branch, changed rows)
        unet.register_forward_pre_hook(self._before_unet, with_kwargs=True)
        unet.register_forward_hook(self._after_unet)
        for stage, block in enumerate(list(unet.up_blocks)[: len(scales)]):
            block.register_forward_pre_hook(self._stage_hook(stage), with_kwargs=True)

    def _before_unet(self, module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict] | None:
        self.rows = None
        extra = kwargs.get("cross_attention_kwargs")
        if not extra or LRA_KEY not in extra:
            return None
        original: torch.Tensor = extra[LRA_KEY]
        kwargs["cross_attention_kwargs"] = {k: v for k, v in extra.items() if k != LRA_KEY} or None
        sample, timestep = args[0], args[1]
        hidden = kwargs["encoder_hidden_states"]
        n, total = original.shape[0], sample.shape[0]
        text = hidden[total - n :]
        changed = (text != original).flatten(1).any(dim=1)
        if not bool(changed.any()):
            return args, kwargs
        self.rows = (total - n, n, changed)
        if isinstance(timestep, torch.Tensor) and timestep.ndim == 1 and timestep.shape[0] == total:
            timestep = torch.cat([timestep, timestep[total - n :]])
        kwargs["encoder_hidden_states"] = torch.cat([hidden, original.to(hidden.dtype)])
        return (torch.cat([sample, sample[total - n :]]), timestep, *args[2:]), kwargs

    def _after_unet(self, module: torch.nn.Module, args: tuple, output: Any) -> Any:
        if self.rows is None:
            return output
        first, n, _ = self.rows
        self.rows = None
        keep = first + n
        if isinstance(output, tuple):
            return (output[0][:keep], *output[1:])
        output.sample = output.sample[:keep]
        return output

    def _stage_hook(self, stage: int) -> Callable[[torch.nn.Module, tuple, dict[str, Any]], tuple[tuple, dict] | None]:
        def hook(module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict] | None:
            if self.rows is None:
                return None
            first, n, changed = self.rows
            skips = kwargs.get("res_hidden_states_tuple", args[1] if len(args) > 1 else None)
            filtered = tuple(self._filter(skip, first, n, changed, self.scales[stage]) for skip in skips)
            if "res_hidden_states_tuple" in kwargs:
                kwargs["res_hidden_states_tuple"] = filtered
                return args, kwargs
            return (args[0], filtered, *args[2:]), kwargs

        return hook

    @staticmethod
    def _filter(skip: torch.Tensor, first: int, n: int, changed: torch.Tensor, scale: float) -> torch.Tensor:
        rows = torch.arange(first, first + n, device=skip.device)[changed.to(skip.device)]
        originals = rows + n
        out = skip.clone()
        out[rows] = adaptive_low_frequency_filter(skip[rows], skip[originals], scale)
        return out


# --- the technique -------------------------------------------------------------------------------------------------
@dataclass
class PromptFilter:
    """What SAFREE does to one prompt: its hidden states on filtered steps and what the report says about it."""

    filtered: torch.Tensor  # [L, D], the flagged tokens projected, the others as encoded
    flagged: list[str]
    beta: float
    steps: int | None  # filtered denoising steps (None: every step, SVF off); 0 when no token is flagged

    def record(self) -> dict[str, Any]:
        return {"flagged_tokens": self.flagged, "svf_beta": round(self.beta, 6),
                "filtered_steps": "all" if self.steps is None else self.steps}  # fmt: skip


class SAFREE(Technique):
    name = "safree"
    config_cls = SAFREEConfig
    config: SAFREEConfig

    def __init__(self, config: TechniqueConfig, context: RunContext) -> None:
        super().__init__(config, context)
        self._concept_projector: torch.Tensor | None = None
        self._filters: dict[str, PromptFilter] = {}
        self._per_prompt: dict[str, dict[str, Any]] = {}  # read per image by the engine (``per_prompt``)

    def sampling_dtype(self) -> torch.dtype:
        return torch.float32 if self.config.sampling_dtype == "float32" else self.context.dtype

    def modify_pipeline(self, pipe: Any) -> Any:
        cfg = self.config
        if cfg.scheduler == "dpm_solver_multistep":
            from diffusers import DPMSolverMultistepScheduler

            pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
        if cfg.enable_lra:
            LatentReAttention(pipe.unet, (cfg.freeu_s1, cfg.freeu_s2))
            if (cfg.freeu_b1, cfg.freeu_b2) != (1.0, 1.0):  # FreeU's backbone scaling; its skip filter is ours
                pipe.unet.enable_freeu(s1=1.0, s2=1.0, b1=cfg.freeu_b1, b2=cfg.freeu_b2)
        return pipe

    def sampling_arguments(self, pipe: Any, prompts: list[str]) -> dict[str, Any]:
        cfg = self.config
        negative = [", ".join(cfg.keywords())] * len(prompts) if cfg.concept_negative_prompt else None
        original, negative_embeds = pipe.encode_prompt(
            prompts, pipe._execution_device, 1, True, negative_prompt=negative
        )
        arguments: dict[str, Any] = {"prompt_embeds": original, "negative_prompt_embeds": negative_embeds}
        if not cfg.enable_projection:
            return arguments
        filters = [self._filter(pipe, prompt, original[i]) for i, prompt in enumerate(prompts)]
        filtered = torch.stack([f.filtered for f in filters])
        steps = [f.steps for f in filters]
        arguments["prompt_embeds"] = _text_rows(0, steps, filtered, original)
        if cfg.enable_svf:

            def switch(pipe: Any, i: int, t: Any, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
                """After step i: the rows of step i + 1, filtered while i + 1 < their SVF step count."""
                current, n = tensors["prompt_embeds"], len(prompts)
                text = _text_rows(i + 1, steps, filtered, original)
                return {"prompt_embeds": torch.cat([current[: len(current) - n], text])}

            arguments.update(callback_on_step_end=switch, callback_on_step_end_tensor_inputs=["prompt_embeds"])
        if cfg.enable_lra:
            arguments["cross_attention_kwargs"] = {LRA_KEY: original}
        return arguments

    def sampling_settings(self) -> dict[str, Any]:
        cfg = self.config
        settings: dict[str, Any] = {
            "stages": {"projection": cfg.enable_projection, "svf": cfg.enable_svf, "lra": cfg.enable_lra},
            "concept_keywords": cfg.keywords(),
            "alpha": cfg.alpha,
            "negative_prompt": ", ".join(cfg.keywords()) if cfg.concept_negative_prompt else None,
            "scheduler": cfg.scheduler,
            "dtype": str(self.sampling_dtype()).removeprefix("torch."),
        }
        if cfg.enable_projection:
            settings["per_prompt"] = self._per_prompt
        return settings

    # --- stages 1 and 2 for one prompt ----------------------------------------------------------------------------
    def _concept(self, pipe: Any) -> torch.Tensor:
        if self._concept_projector is None:
            pooled = _pooled(pipe, pipe.tokenizer(self.config.keywords(), padding="max_length", truncation=True,
                                                  max_length=pipe.tokenizer.model_max_length).input_ids)  # fmt: skip
            self._concept_projector = projection_matrix(pooled)
        return self._concept_projector

    def _filter(self, pipe: Any, prompt: str, encoded: torch.Tensor) -> PromptFilter:
        """Flag the prompt's toxic tokens, project them, and decide the SVF step count (cached per prompt)."""
        if prompt in self._filters:
            return self._filters[prompt]
        cfg, tokenizer = self.config, pipe.tokenizer
        length = tokenizer.model_max_length
        ids = tokenizer(prompt, truncation=True, max_length=length).input_ids  # [BOS, t_1 … t_n, EOS]
        n = len(ids) - 2
        if n <= 0:
            result = PromptFilter(encoded, [], 0.0, 0)
        else:
            masked = [ids[: i + 1] + [MASK_TOKEN_ID] + ids[i + 2 :] for i in range(n)]
            masked = [row + [tokenizer.pad_token_id] * (length - len(row)) for row in masked]
            pooled = _pooled(pipe, masked)
            input_projector, concept = projection_matrix(pooled), self._concept(pipe)
            flags = trigger_tokens(pooled, concept, cfg.alpha)
            tokens = encoded.float()
            projected = project_tokens(tokens, input_projector, concept)
            position = torch.zeros(len(tokens), dtype=torch.bool, device=tokens.device)
            position[1 : n + 1] = flags
            filtered = torch.where(position[:, None], projected, tokens).to(encoded.dtype)
            real = slice(0, n + 2)  # BOS, the tokens, EOS: the tokenizer's attention mask
            cosine = torch.nn.functional.cosine_similarity(projected[real], tokens[real], dim=-1)
            beta = float(1.0 - cosine.mean())
            names = [tokenizer.convert_ids_to_tokens(ids[i + 1]).removesuffix("</w>") for i in range(n) if flags[i]]
            if not names:
                steps: int | None = 0
            elif cfg.enable_svf:
                steps = svf_steps(beta, cfg.upperbound_timestep, cfg.svf_sigmoid_k, cfg.svf_sigmoid_center)
            else:
                steps = None
            result = PromptFilter(filtered, names, beta, steps)
        self._filters[prompt] = result
        self._per_prompt[prompt] = result.record()
        return result


def _pooled(pipe: Any, ids: list[list[int]]) -> torch.Tensor:
    """The text encoder's pooled (end-of-text) embeddings, float32 [N, D]."""
    tensor = torch.tensor(ids, dtype=torch.long, device=pipe._execution_device)
    return pipe.text_encoder(tensor).pooler_output.float()


def _text_rows(step: int, steps: list[int | None], filtered: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """The conditional rows for denoising step ``step``: filtered where the prompt's step count is not used up."""
    use = torch.tensor([s is None or step < s for s in steps], device=filtered.device)
    return torch.where(use[:, None, None], filtered, original)
