"""``p4d``: Prompting4Debugging — Chin, Jiang, Huang, Chen, Chiu, "Prompting4Debugging: Red-Teaming Text-to-Image
Diffusion Models by Finding Problematic Prompts", ICML 2024 (arXiv:2309.06135).

P4D learns a prompt for the *erased* model whose noise prediction matches the *base* model's prediction for the
original prompt: on a noised latent of the base model's image of the prompt,

    min_P  ‖ ε_erased(x_t, t, E(P)) − ε_base(x_t, t, E(prompt)) ‖²

with P a sequence of soft token embeddings that are projected to their nearest vocabulary tokens (cosine) before
every forward pass; the gradient taken at the projected tokens updates the soft ones (PEZ's straight-through rule),
with AdamW. ``variant: n`` (P4D-N) learns ``prompt_len`` free tokens; ``variant: k`` (P4D-K) keeps the prompt's
tokens and inserts one learnable token before every ``every_k`` of them (the release's layout: positions 0, k+1,
2(k+1), ... of the learned sequence), whose gradients alone are non-zero. Every ``eval_step`` iterations (step 0
included) the projected prompt is rendered through the model under test and judged; the search stops at the first
image the judge flags.

Follows joycenerd/P4D @ 2cf3cda9d458373619989ec5e45150c67fed1e8c: ``prompt_optimization/optimize_n.py`` and
``optimize_k.py`` (initialisation, projection, loss, update) and ``configs/esd_nudity_optmz_config.json`` (defaults).
What differs, on purpose: the learned prompt is encoded by the model under test's own text encoder (the release uses
the base model's, which equals it for the UNet-only erasures it attacks); the release's target image is the most
NudeNet-unsafe of 3 base images, ours the base model's image with the record's seed; the release keeps the prompt
with the best CLIP ViT-H-14 similarity to the target image and judges it once at the end, we judge at every
evaluation (the benchmark's judge, early stop) and, without a success, keep the evaluated prompt with the lowest loss;
its ``--filter`` mode (the erased model's negative-prompt or SLD guidance inside the loss) is not reproduced: for a
technique that only changes sampling the loss sees its UNet, while the judged renders carry its sampling changes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from eval_learn.attacks.base import Attack, AttackConfig, AttackOutcome, AttackTarget
from eval_learn.configs import require
from eval_learn.models.soft_prompt import encode_rows, nearest_tokens
from eval_learn.types import PromptRecord

log = logging.getLogger(__name__)

Variant = Literal["n", "k"]
RELEASE = {
    "repository": "https://github.com/joycenerd/P4D",
    "commit": "2cf3cda9d458373619989ec5e45150c67fed1e8c",
    "files": "prompt_optimization/optimize_n.py, prompt_optimization/optimize_k.py, "
    "configs/esd_nudity_optmz_config.json, run_p4dn.py",
}


@dataclass
class P4DConfig(AttackConfig):
    variant: Variant = "n"  # n: P4D-N (prompt_len free tokens); k: P4D-K (a token before every every_k prompt tokens)
    prompt_len: int = 16  # P4D-N's learned tokens
    every_k: int = 3  # P4D-K's spacing
    iterations: int = 3000
    lr: float = 0.1
    weight_decay: float = 0.1
    eval_step: int = 50  # render and judge the projected prompt every this many iterations (step 0 included)
    # The release encodes its target image from [0, 1] pixels (torchvision ToTensor, no rescaling to the VAE's
    # [-1, 1]); "signed" rescales as the VAE was trained.
    target_pixels: Literal["unit", "signed"] = "unit"
    pad_token_id: int = 0  # the release pads the learned sequence with id 0, not the tokenizer's padding token

    def validate(self) -> None:
        super().validate()
        require(self.variant in ("n", "k"), f"variant must be 'n' (P4D-N) or 'k' (P4D-K), got {self.variant!r}")
        require(self.prompt_len > 0, "prompt_len must be > 0")
        require(self.every_k > 0, "every_k must be > 0")
        require(self.iterations > 0, "iterations must be > 0")
        require(self.lr > 0, "lr must be > 0")
        require(self.weight_decay >= 0, "weight_decay must be >= 0")
        require(self.eval_step > 0, "eval_step must be > 0")
        require(self.target_pixels in ("unit", "signed"), "target_pixels must be 'unit' or 'signed'")
        require(self.pad_token_id >= 0, "pad_token_id must be >= 0")


@dataclass
class Layout:
    """Where the learned tokens sit: ``ids`` is the full encoder input ``[1, length]`` (BOS, learned span, padding),
    the span starts at position 1, and ``frozen`` lists span positions that hold the prompt's own tokens (P4D-K)."""

    ids: torch.Tensor
    span: int
    frozen: list[int] = field(default_factory=list)
    frozen_ids: list[int] = field(default_factory=list)


def layout(tokenizer: Any, prompt: str, cfg: P4DConfig) -> Layout:
    """The release's sequence: [BOS] + learned span + ... padded with ``pad_token_id`` to the context length."""
    length = tokenizer.model_max_length
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    if cfg.variant == "n":
        require(cfg.prompt_len + 2 <= length, f"prompt_len must leave room for BOS and EOS in {length} tokens")
        ids = [bos] + [cfg.pad_token_id] * cfg.prompt_len + [eos]
        return Layout(torch.tensor([ids + [cfg.pad_token_id] * (length - len(ids))]), cfg.prompt_len)
    text = tokenizer(prompt, add_special_tokens=False).input_ids
    while text and len(text) + len(text) // cfg.every_k + 1 + 2 > length:  # keep the span inside the context
        text = text[:-1]
    span = len(text) + len(text) // cfg.every_k + 1
    frozen = [i for i in range(span) if i % (cfg.every_k + 1) != 0]
    # The release writes the span over [BOS] + prompt + [EOS] + padding, so its EOS is overwritten by learned rows.
    ids = [bos] + text + [eos]
    return Layout(torch.tensor([ids + [cfg.pad_token_id] * (length - len(ids))]), span, frozen, text)


class P4DSearch:
    """One prompt's optimisation state; :meth:`step` is one iteration given its randomness (latent, noise, timestep),
    so that the loop can be held to the release's numbers step by step."""

    def __init__(self, base: Any, erased: Any, prompt: str, cfg: P4DConfig, initial_ids: torch.Tensor) -> None:
        self.base, self.erased, self.cfg = base, erased, cfg
        self.layout = layout(erased.tokenizer, prompt, cfg)
        self.device = erased.unet.device
        self.vocabulary = erased.text_encoder.get_input_embeddings().weight
        rows = self.vocabulary[initial_ids.to(self.device)].detach().float().clone()
        if self.layout.frozen:
            rows[self.layout.frozen] = self.vocabulary[torch.tensor(self.layout.frozen_ids, device=self.device)].float()
        self.soft = rows.unsqueeze(0).detach().requires_grad_(True)  # [1, span, dim]
        self.optimizer = torch.optim.AdamW([self.soft], lr=cfg.lr, weight_decay=cfg.weight_decay)
        ids = self.layout.ids.to(self.device)
        with torch.no_grad():
            self.template = erased.text_encoder.get_input_embeddings()(ids).float()  # the fixed rows around the span
            tokens = base.tokenizer(prompt, padding="max_length", max_length=base.tokenizer.model_max_length,
                                    truncation=True, return_tensors="pt").input_ids  # fmt: skip
            self.target_text = base.text_encoder(tokens.to(base.unet.device))[0]

    def projected(self) -> torch.Tensor:
        """The token ids ``[span]`` the soft rows project to now."""
        return nearest_tokens(self.soft[0], self.vocabulary)

    def step(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> tuple[float, torch.Tensor]:
        """One iteration; returns (loss, the projected ids the loss was taken at)."""
        ids = self.projected()
        hard = self.vocabulary[ids].detach().float().unsqueeze(0).requires_grad_(True)
        rows = torch.cat([self.template[:, :1], hard, self.template[:, 1 + self.layout.span :]], dim=1)
        noisy = self.base.scheduler.add_noise(latents, noise, timesteps)
        with torch.no_grad():
            unet = self.base.unet
            target = unet(noisy.to(unet.device, unet.dtype), timesteps.to(unet.device), self.target_text).sample
        unet = self.erased.unet
        text = encode_rows(self.erased.text_encoder, self.layout.ids.to(self.device), rows)
        pred = unet(noisy.to(unet.device, unet.dtype), timesteps.to(unet.device), text.to(unet.dtype)).sample
        loss = F.mse_loss(pred.float(), target.float().to(pred.device))
        (grad,) = torch.autograd.grad(loss, [hard])
        if self.layout.frozen:
            grad[0, self.layout.frozen] = 0.0
        self.soft.grad = grad.to(self.soft.dtype)
        self.optimizer.step()
        self.optimizer.zero_grad()
        return loss.item(), ids


def target_latents(pipe: Any, image: np.ndarray, pixels: str, generator: torch.Generator) -> torch.Tensor:
    """The VAE latent (sampled, scaled) of a uint8 image, from [0, 1] (the release) or [-1, 1] pixels."""
    x = torch.from_numpy(np.asarray(image)).permute(2, 0, 1).unsqueeze(0).float() / 255.0
    if pixels == "signed":
        x = x * 2 - 1
    vae = pipe.vae
    with torch.no_grad():
        sample = vae.encode(x.to(vae.device, vae.dtype)).latent_dist.sample(generator=generator)
    return sample.float() * vae.config.scaling_factor


class P4D(Attack):
    name = "p4d"
    config_cls = P4DConfig
    config: P4DConfig
    needs_base_model = True
    follows = RELEASE
    differs = (
        "learned prompt encoded by the model under test's text encoder; target image = base model's image with the "
        "record's seed (release: most NudeNet-unsafe of 3); judged at every evaluation with early stop (release: best "
        "CLIP similarity, judged once); no --filter mode (sampling-time guidance inside the loss)"
    )

    def run(self, target: AttackTarget, record: PromptRecord) -> AttackOutcome:
        cfg = self.config
        started = time.perf_counter()
        erased, base = target.pipeline(), target.base_pipeline()
        rng = torch.Generator().manual_seed(cfg.seed)  # initial tokens, the latent's sample, timesteps
        noise_rng = torch.Generator().manual_seed(record.seed)  # the release seeds its noise with the prompt's seed
        image = target.render_base([record.prompt], record.seed)[0]
        latents = target_latents(base, image, cfg.target_pixels, rng).to(erased.unet.device)
        span = layout(erased.tokenizer, record.prompt, cfg).span
        initial = torch.randint(erased.tokenizer.vocab_size, (span,), generator=rng)
        search = P4DSearch(base, erased, record.prompt, cfg, initial)
        train_steps = base.scheduler.config.num_train_timesteps
        evaluations: list[dict[str, Any]] = []
        best: tuple[float, str, np.ndarray] | None = None
        success_step, steps = None, 0
        for step in tqdm(range(cfg.iterations), desc=f"p4d-{cfg.variant} prompt {record.index}", leave=False):
            noise = torch.randn(latents.shape, generator=noise_rng).to(latents)
            timesteps = torch.randint(0, train_steps, (1,), generator=rng).to(latents.device)
            loss, ids = search.step(latents, noise, timesteps)
            steps = step + 1
            if step % cfg.eval_step == 0:
                text = erased.tokenizer.decode(ids.tolist())
                rendered = target.render([text], record.seed)[0]
                flagged = target.judge([rendered])[0]
                evaluations.append({"step": step, "loss": loss, "prompt": text, "success": flagged})
                if best is None or loss < best[0] or flagged:
                    best = (loss, text, rendered)
                if flagged:
                    success_step = step
                    break
            if self.out_of_time(started):
                break
        assert best is not None  # step 0 is always evaluated
        return AttackOutcome(
            prompt=best[1],
            success=success_step is not None,
            iterations=steps,
            seconds=time.perf_counter() - started,
            success_step=success_step,
            image=best[2],
            extra={"variant": cfg.variant, "evaluations": evaluations, "base_image_seed": record.seed},
        )
