"""``unlearndiffatk``: UnlearnDiffAtk (Zhang et al., "To Generate or Not? Safety-Driven Unlearned Diffusion Models
Are Still Easy To Generate Unsafe Images ... For Now", ECCV 2024).

The erased model is used as its own diffusion classifier: the attack looks for k prefix tokens that make the
model's noise prediction, conditioned on "tokens + prompt", explain a *target image* of the concept — the base
model's image for the prompt — at one timestep after another. Tokens are a relaxed one-hot ``u ∈ [0,1]^{k×V}`` on
the probability simplex; each step samples one token per row from ``u`` (straight-through: the gradient of the
sampled one-hot, clipped to [-1, 1], is ``u``'s gradient), takes an Adam step and projects back onto the simplex.
After each timestep's iterations the argmax tokens are decoded, the prompt is rendered through the technique's own
pipeline and judged; the search stops at the first success.

Followed: OPTML-Group/Diffusion-MU-Attack @ 5a3e5d37fb8787113e5d479204ab593a60e303e0,
``src/attackers/text_grad_.py`` (the attack), ``src/tasks/classifier_.py`` (loss and timestep schedule),
``configs/nudity/text_grad_esd_nudity_classifier.json`` (k = 5 prefix tokens, 40 iterations, Adam lr 0.01, weight
decay 0.1, L2 loss, sequential over timesteps). The schedule: ``n = 50`` timesteps ``t = T/n/2 + i·T/n`` (10, 30,
..., 990 for T = 1000), ascending; the noise of each step is fresh Gaussian noise on the target image's VAE latent
(the posterior mean). As in the release, the random stream (token sampling, then noise, per step) restarts from the
image's seed at every timestep, past one latent-sized draw (the release reseeds torch's global generator when it
renders each candidate); the attack's own ``seed`` is added to the image's (0: the release's stream).

What differs, on purpose: the target image is rendered by the base model through the shared sampling loop (the
release reads pre-generated images; the same thing, made here); candidates render through the technique's pipeline
with its sampling changes (the release re-implements SD sampling with LMS, and SLD's variants, itself); the loss uses
the technique's UNet and text encoder without its sampling changes, as the release does (for SLD it attacks the base
UNet, since SLD changes no weights); prompts longer than ``77 - 2 - k`` tokens are cut to fit (the release drops
them from its data set); randomness runs on a CPU generator, so an attack is the same on every device.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from eval_learn.attacks.base import Attack, AttackConfig, AttackOutcome, AttackTarget
from eval_learn.configs import require
from eval_learn.models.soft_prompt import encode_rows
from eval_learn.types import PromptRecord

log = logging.getLogger(__name__)

RELEASE = {
    "repo": "OPTML-Group/Diffusion-MU-Attack",
    "commit": "5a3e5d37fb8787113e5d479204ab593a60e303e0",
    "file": "src/attackers/text_grad_.py",
    "config": "configs/nudity/text_grad_esd_nudity_classifier.json",
}


@dataclass
class UnlearnDiffAtkConfig(AttackConfig):
    k: int = 5  # adversarial tokens
    insertion: Literal["prefix_k", "suffix_k"] = "prefix_k"  # before or after the prompt's tokens
    iterations: int = 40  # optimisation steps per timestep
    timesteps: int = 50  # timesteps visited in turn (the release's n_samples); the search ends after the last
    lr: float = 0.01
    weight_decay: float = 0.1
    criterion: Literal["l2", "l1"] = "l2"
    projection_tolerance: float = 1e-5  # the simplex projection's bisection stops at this interval width

    def validate(self) -> None:
        super().validate()
        require(self.k >= 1, "k must be >= 1")
        require(self.iterations >= 1, "iterations must be >= 1")
        require(self.timesteps >= 1, "timesteps must be >= 1")
        require(self.lr > 0, "lr must be > 0")
        require(self.weight_decay >= 0, "weight_decay must be >= 0")
        require(self.projection_tolerance > 0, "projection_tolerance must be > 0")


def timestep_schedule(num_train_timesteps: int, n: int) -> list[int]:
    """The release's timesteps: ``n`` evenly spaced, starting half a stride in (10, 30, ..., 990 for 1000 and 50)."""
    stride = num_train_timesteps // n
    return list(range(stride // 2, num_train_timesteps, stride))[:n]


def project_simplex(rows: torch.Tensor, tolerance: float) -> torch.Tensor:
    """Each row projected onto ``{u: 0 ≤ u ≤ 1, Σu = 1}``: ``clip(a − μ, 0, 1)`` with μ found by bisection on
    ``[min(a) − 1, max(a)]`` until the interval is ``tolerance`` wide (a row already on it is only clipped)."""
    out = []
    for a in rows:
        clipped = a.clamp(0, 1)
        if abs(clipped.sum().item() - 1) <= tolerance:
            out.append(clipped)
            continue
        low, high = (a - 1).min().item(), a.max().item()
        mu = (low + high) / 2
        while abs(high - low) > tolerance:
            mu = (low + high) / 2
            excess = (a - mu).clamp(0, 1).sum() - 1  # decreasing in mu
            if excess == 0:
                break
            if excess > 0:
                low = mu
            else:
                high = mu
        out.append((a - mu).clamp(0, 1))
    return torch.stack(out)


class _SampledOneHot(torch.autograd.Function):
    """One token per row drawn from the row's weights; the gradient passes straight through, clipped to [-1, 1]."""

    @staticmethod
    def forward(ctx: Any, weights: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        drawn = torch.multinomial(weights.detach().to("cpu", torch.float32), 1, generator=generator).view(-1)
        return F.one_hot(drawn, weights.shape[-1]).to(weights)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return F.hardtanh(grad), None


class UnlearnDiffAtk(Attack):
    name = "unlearndiffatk"
    config_cls = UnlearnDiffAtkConfig
    config: UnlearnDiffAtkConfig
    needs_base_model = True
    white_box = True
    follows = RELEASE
    differs = (
        "target image rendered by the base model through the shared sampling loop (the release reads pre-generated "
        "images); candidates rendered through the technique's pipeline with its sampling changes; prompts longer "
        "than 77-2-k tokens cut to fit (the release drops them); randomness on a CPU generator"
    )

    def run(self, target: AttackTarget, record: PromptRecord) -> AttackOutcome:
        cfg = self.config
        started = time.perf_counter()
        pipe = target.pipeline()
        tokenizer, text_encoder, unet, vae = pipe.tokenizer, pipe.text_encoder, pipe.unet, pipe.vae
        device, dtype = unet.device, unet.dtype
        # the target image: the base model's image of the prompt, with the record's seed and guidance
        x_tgt = target.render_base([record.prompt], record.seed)[0]
        pixels = torch.from_numpy(np.asarray(x_tgt, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
        with torch.no_grad():
            x0 = vae.encode(pixels.to(device, vae.dtype)).latent_dist.mean * vae.config.scaling_factor
        x0 = x0.to(dtype)
        prompt_ids, cut = self._prompt_ids(tokenizer, record.prompt)
        vocabulary = text_encoder.get_input_embeddings().weight  # [V, D]
        context = torch.tensor(self._context(tokenizer, prompt_ids), device=vocabulary.device)
        alphas = pipe.scheduler.alphas_cumprod.to(torch.float32)
        schedule = timestep_schedule(int(pipe.scheduler.config.num_train_timesteps), cfg.timesteps)
        latent_shape = (1, unet.config.in_channels, x0.shape[-2], x0.shape[-1])

        weights = torch.full((cfg.k, vocabulary.shape[0]), 1.0 / vocabulary.shape[0])
        weights = project_simplex(weights, cfg.projection_tolerance).to(device).requires_grad_(True)
        optimizer = torch.optim.Adam([weights], lr=cfg.lr, weight_decay=cfg.weight_decay)
        loss_fn = torch.nn.MSELoss() if cfg.criterion == "l2" else torch.nn.L1Loss()
        generator = torch.Generator("cpu")
        saved = {m: [p.requires_grad for p in m.parameters()] for m in (unet, text_encoder)}
        for module in saved:
            module.requires_grad_(False)
        iterations, success_step, image, success = 0, None, None, False
        losses: list[float] = []
        tokens: list[list[int]] = []
        prompt = record.prompt
        try:
            for t in schedule:
                generator.manual_seed(record.seed + cfg.seed)
                torch.randn(latent_shape, generator=generator)  # the release's stream: past one latent draw
                total = 0.0
                for _ in range(cfg.iterations):
                    optimizer.zero_grad()
                    one_hot = _SampledOneHot.apply(weights, generator)
                    adversarial = one_hot.to(vocabulary.dtype) @ vocabulary
                    noise = torch.randn(latent_shape, generator=generator).to(device, dtype)
                    a = alphas[t]
                    noised = x0 * a.sqrt().to(dtype) + noise * (1 - a).sqrt().to(dtype)
                    with torch.enable_grad():
                        rows = self._sequence(vocabulary[context], adversarial, len(prompt_ids))
                        states = encode_rows(text_encoder, context[None], rows)
                        prediction = unet(noised, t, encoder_hidden_states=states).sample
                        loss = loss_fn(noise, prediction)
                        weights.grad = torch.autograd.grad(loss, [weights])[0]
                    optimizer.step()
                    with torch.no_grad():
                        weights.data = project_simplex(weights.detach(), cfg.projection_tolerance)
                    total += loss.item()
                    iterations += 1
                    if self.out_of_time(started):
                        break
                losses.append(total)
                chosen = weights.detach().argmax(dim=-1).tolist()
                tokens.append(chosen)
                prompt = self._decode(tokenizer, prompt_ids, chosen)
                image = target.render([prompt], record.seed)[0]
                success = target.judge([image])[0]
                if success:
                    success_step = iterations
                    break
                if self.out_of_time(started):
                    break
        finally:
            for module, flags in saved.items():
                for parameter, flag in zip(module.parameters(), flags, strict=True):
                    parameter.requires_grad_(flag)
        return AttackOutcome(
            prompt=prompt, success=success, iterations=iterations, seconds=time.perf_counter() - started,
            success_step=success_step, image=image,
            extra={"loss_per_timestep": losses, "timesteps": schedule[: len(losses)], "tokens": tokens,
                   "prompt_tokens_cut": cut},
        )  # fmt: skip

    # --- token bookkeeping ---------------------------------------------------------------------------------------
    def _prompt_ids(self, tokenizer: Any, prompt: str) -> tuple[list[int], int]:
        """The prompt's tokens without BOS/EOS, cut to leave room for k tokens in the 77-token context."""
        ids = tokenizer(prompt, truncation=True, max_length=tokenizer.model_max_length).input_ids[1:-1]
        room = tokenizer.model_max_length - 2 - self.config.k
        return ids[:room], max(0, len(ids) - room)

    def _context(self, tokenizer: Any, prompt_ids: list[int]) -> list[int]:
        """[BOS, prompt, EOS, EOS, ...] over the whole context: the release pads with EOS."""
        n = tokenizer.model_max_length
        return [tokenizer.bos_token_id, *prompt_ids] + [tokenizer.eos_token_id] * (n - 1 - len(prompt_ids))

    def _sequence(self, context: torch.Tensor, adversarial: torch.Tensor, length: int) -> torch.Tensor:
        """The context's embeddings with the k adversarial rows inserted after BOS (prefix) or after the prompt
        (suffix), dropping k of the EOS padding so the context keeps its length."""
        k = self.config.k
        bos, prompt, rest = context[:1], context[1 : 1 + length], context[1 + length + k :]
        parts = (
            (bos, adversarial, prompt, rest)
            if self.config.insertion == "prefix_k"
            else (bos, prompt, adversarial, rest)
        )
        return torch.cat(parts)[None]

    def _decode(self, tokenizer: Any, prompt_ids: list[int], chosen: list[int]) -> str:
        ids = chosen + prompt_ids if self.config.insertion == "prefix_k" else prompt_ids + chosen
        return tokenizer.decode(ids)
