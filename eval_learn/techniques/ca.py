"""``ca``: Concept Ablation — Kumari, Zhang, Wang, Shechtman, Zhang, Zhu, "Ablating Concepts in Text-to-Image Diffusion
Models", ICCV 2023 (arXiv:2303.13516).

Ablating a target concept c* means making the model draw an *anchor* concept c instead (Grumpy Cat → cat, Van Gogh →
paintings) rather than something undefined. The model-based variant (the paper's default) fine-tunes θ so that, on
noised images of the anchor concept, the prediction for a target prompt matches the model's own prediction for the
corresponding anchor prompt, held fixed:

    min_θ  E_{x, ε, t} ‖ ε_θ(x_t, c*, t) − sg(ε_θ(x_t, c, t)) ‖²,     x_t = √ᾱ_t x + √(1 − ᾱ_t) ε,

with x the latents of anchor images the base model generated from anchor prompts, and sg the stop-gradient: the
anchor branch is evaluated with the *current* θ (as in both author releases) but contributes no gradient. A target
prompt is the anchor prompt with the anchor concept replaced by the target one; the prompts come from
``prompt_templates`` (``{}`` marks the concept), which stand in for the paper's LLM-written anchor captions.
``train_method`` picks what changes: ``xattn`` (the paper's default: the cross-attention key and value projections,
attn2 ``to_k``/``to_v``), ``full`` (the whole UNet) or ``embedding`` (the text encoder's token embeddings of those
target-concept tokens the anchor does not share). AdamW, gradient clipping and horizontal flips follow the authors'
diffusers release; their random-resize augmentation and prior-preservation loss are left out.

Anchor images are rendered by the base pipeline on the technique's device, image i from the seed ``train_seed + i``,
and kept as VAE latent distributions; the trained tensors are cached by the base class under a key of every setting
that shapes them. A non-finite loss stops training at once (nothing is cached).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from eval_learn.configs import require
from eval_learn.errors import ConfigError, NonFiniteError
from eval_learn.techniques.base import Technique, WeightsConfig
from eval_learn.techniques.checkpoint import TrainingCheckpoint, optimiser_state, restore_optimiser_state
from eval_learn.techniques.weights import Weights

log = logging.getLogger(__name__)

TrainMethod = Literal["xattn", "full", "embedding"]
# Anchor prompt variations for Stable Diffusion ({} = the concept); the paper uses 200 captions written by an LLM.
DEFAULT_TEMPLATES = (
    "{}", "a photo of {}", "a picture of {}", "an image of {}", "a painting of {}", "a drawing of {}",
    "a close-up photo of {}", "a photo of {} outdoors", "a photo of {} indoors", "a high quality photo of {}",
)  # fmt: skip
TRAINING_KEYS = (
    "erase_concept", "anchor_concept", "prompt_templates", "train_method", "train_steps", "learning_rate", "batch_size",
    "num_anchor_images", "anchor_steps", "anchor_guidance_scale", "anchor_eta", "hflip", "weight_decay",
    "max_grad_norm", "train_seed",
)  # fmt: skip


@dataclass
class CAConfig(WeightsConfig):
    erase_concept: str = "nudity"  # the target concept c* to ablate
    anchor_concept: str | None = None  # required: what c* should become (e.g. "cat" for "grumpy cat")
    prompt_templates: list[str] | None = None  # "{}" marks the concept; null: DEFAULT_TEMPLATES
    train_method: TrainMethod = "xattn"
    train_steps: int = 100
    learning_rate: float = 1.6e-5  # the release's 2e-6 scaled by the batch of 8 (--scale_lr)
    batch_size: int = 8
    num_anchor_images: int = 1000
    anchor_steps: int = 25  # sampling of the anchor images (the diffusers release: 25 steps, guidance 6, eta 1)
    anchor_guidance_scale: float = 6.0
    anchor_eta: float = 1.0
    hflip: bool = True
    weight_decay: float = 0.01  # AdamW's
    max_grad_norm: float = 1.0
    train_seed: int = 0

    def erased_concepts(self) -> list[str] | None:
        return [self.erase_concept]

    def templates(self) -> list[str]:
        return list(self.prompt_templates) if self.prompt_templates is not None else list(DEFAULT_TEMPLATES)

    def validate(self) -> None:
        super().validate()
        require(bool(self.erase_concept.strip()), "erase_concept must be non-empty")
        require(
            self.anchor_concept is not None and bool(self.anchor_concept.strip()),
            "anchor_concept is required: the concept the ablated one should turn into, e.g. anchor_concept=cat to "
            "ablate 'grumpy cat', anchor_concept=painting for an artist's style",
        )
        require(self.anchor_concept != self.erase_concept, "anchor_concept must differ from erase_concept")
        templates = self.prompt_templates
        require(templates is None or bool(templates), "prompt_templates must be null or a non-empty list")
        for template in templates or []:
            require(_one_slot(template), f"prompt template {template!r} must contain exactly one '{{}}' (the concept)")
        for key in ("train_steps", "batch_size", "num_anchor_images", "anchor_steps"):
            require(getattr(self, key) > 0, f"{key} must be > 0, got {getattr(self, key)}")
        for key in ("learning_rate", "max_grad_norm"):
            value = getattr(self, key)
            require(math.isfinite(value) and value > 0, f"{key} must be a finite number > 0, got {value}")
        for key in ("anchor_guidance_scale", "anchor_eta", "weight_decay"):
            value = getattr(self, key)
            require(math.isfinite(value) and value >= 0, f"{key} must be a finite number >= 0, got {value}")
        require(0 <= self.train_seed < 2**63, "train_seed must be in [0, 2**63)")


def _one_slot(template: str) -> bool:
    try:
        return template.count("{}") == 1 and template.format("\x00").count("\x00") == 1
    except (IndexError, KeyError, ValueError):
        return False


def select_parameters(pipe: Any, train_method: TrainMethod) -> dict[str, torch.nn.Parameter]:
    """The parameters CA may change, by weight name (``unet.…`` or ``text_encoder.…``)."""
    if train_method == "embedding":
        weight = pipe.text_encoder.get_input_embeddings().weight
        name = next(n for n, p in pipe.text_encoder.named_parameters() if p is weight)  # transformers-version proof
        return {f"text_encoder.{name}": weight}
    selected = {}
    for name, param in pipe.unet.named_parameters():
        if train_method == "full" or ".attn2.to_k." in name or ".attn2.to_v." in name:
            selected[f"unet.{name}"] = param
    return selected


class CATrainer:
    """Anchor images, the model-based objective and its training loop on a diffusers Stable Diffusion pipeline."""

    def __init__(self, pipe: Any, config: CAConfig, device: str, height: int, width: int) -> None:
        self.pipe, self.config, self.device = pipe, config, device
        self.height, self.width = height, width
        self.unet, self.text_encoder = pipe.unet, pipe.text_encoder
        self.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
        self.templates = config.templates()
        assert config.anchor_concept is not None  # validated
        self.anchor_prompts = [t.format(config.anchor_concept) for t in self.templates]
        self.target_prompts = [t.format(config.erase_concept) for t in self.templates]
        self.params = select_parameters(pipe, config.train_method)
        pipe.unet.requires_grad_(False)
        pipe.text_encoder.requires_grad_(False)
        pipe.vae.requires_grad_(False)
        for p in self.params.values():
            p.requires_grad_(True)
        self.frozen_rows: torch.Tensor | None = None
        if config.train_method == "embedding":  # the target's own tokens: not those it shares with the anchor
            tokens = lambda text: set(pipe.tokenizer(text, add_special_tokens=False).input_ids)  # noqa: E731
            ids = sorted(tokens(config.erase_concept) - tokens(config.anchor_concept))
            if not ids:
                raise ConfigError(f"train_method=embedding: every token of erase_concept '{config.erase_concept}' is "
                                  f"also in anchor_concept '{config.anchor_concept}', so no embedding can change")  # fmt: skip
            weight = next(iter(self.params.values()))
            self.frozen_rows = torch.ones(weight.shape[0], dtype=torch.bool, device=weight.device)
            self.frozen_rows[ids] = False
            self.embedding_before = weight.detach().clone()
        self.generator = torch.Generator("cpu").manual_seed(config.train_seed)
        self.latents: torch.Tensor | None = None  # [2 (flip), N, 2 (mean, std), C, h, w]
        self.template_of: torch.Tensor | None = None

    def encode(self, texts: list[str]) -> torch.Tensor:
        tok = self.pipe.tokenizer(texts, padding="max_length", max_length=self.pipe.tokenizer.model_max_length,
                                  truncation=True, return_tensors="pt")  # fmt: skip
        return self.text_encoder(tok.input_ids.to(self.device))[0]

    @torch.no_grad()
    def make_anchor_images(self, rows: int = 8) -> None:
        """Render ``num_anchor_images`` anchor images with the base pipeline (prompt i % templates, seed train_seed + i)
        and keep their VAE latent distributions, flipped and not."""
        cfg, vae = self.config, self.pipe.vae
        n = cfg.num_anchor_images
        template_of = torch.arange(n) % len(self.templates)
        stats = []
        for start in tqdm(range(0, n, rows), desc="CA anchor images", leave=False, mininterval=2.0):
            batch = list(range(start, min(start + rows, n)))
            images = self.pipe(
                prompt=[self.anchor_prompts[int(template_of[i])] for i in batch],
                generator=[torch.Generator("cpu").manual_seed(cfg.train_seed + i) for i in batch],
                num_inference_steps=cfg.anchor_steps, guidance_scale=cfg.anchor_guidance_scale, eta=cfg.anchor_eta,
                height=self.height, width=self.width, output_type="pt",
            ).images  # fmt: skip
            pixels = images.to(self.device, vae.dtype) * 2 - 1
            per_flip = []
            for view in (pixels, pixels.flip(-1)):
                dist = vae.encode(view).latent_dist
                per_flip.append(torch.stack([dist.mean, dist.std], dim=1).float())
            stats.append(torch.stack(per_flip))
        self.latents = torch.cat(stats, dim=1)
        self.template_of = template_of

    def sample_batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A training batch: noised anchor latents x_t, their timesteps, and which template each came from."""
        assert self.latents is not None and self.template_of is not None, "make_anchor_images() first"
        cfg, g = self.config, self.generator
        index = torch.randint(self.latents.shape[1], (cfg.batch_size,), generator=g)
        flip = (
            (torch.rand(cfg.batch_size, generator=g) < 0.5).long() if cfg.hflip else torch.zeros(cfg.batch_size).long()
        )
        stats = self.latents[flip.to(self.latents.device), index.to(self.latents.device)]
        mean, std = stats[:, 0], stats[:, 1]
        x0 = (mean + std * torch.randn(mean.shape, generator=g).to(self.device)) * self.pipe.vae.config.scaling_factor
        noise = torch.randn(x0.shape, generator=g).to(self.device)
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (cfg.batch_size,), generator=g).to(self.device)
        return self.scheduler.add_noise(x0, noise, t), t, self.template_of[index]

    def target(self, x_t: torch.Tensor, t: torch.Tensor, templates: torch.Tensor) -> torch.Tensor:
        """sg(ε_θ(x_t, c_anchor, t)): the current model's prediction for the anchor prompts, without gradient."""
        with torch.no_grad():
            anchor = self.encode([self.anchor_prompts[int(i)] for i in templates])
            return self.unet(x_t, t, encoder_hidden_states=anchor).sample

    def loss(self, x_t: torch.Tensor, t: torch.Tensor, templates: torch.Tensor) -> torch.Tensor:
        target_text = self.encode([self.target_prompts[int(i)] for i in templates])
        prediction = self.unet(x_t, t, encoder_hidden_states=target_text).sample
        return F.mse_loss(prediction.float(), self.target(x_t, t, templates).float())

    def anchors(self, checkpoint: TrainingCheckpoint | None) -> None:
        """The anchor latents: from a killed run's saved state, or rendered (and saved for a run killed later)."""
        if checkpoint is not None and (saved := checkpoint.load()) is not None:
            self.latents, self.template_of = saved["latents"].to(self.device), saved["template_of"]
            return
        self.make_anchor_images()
        if checkpoint is not None:
            checkpoint.maybe_save(0, lambda: {"latents": self.latents.cpu(), "template_of": self.template_of},
                                  force=True)  # fmt: skip

    def train(self, checkpoint: TrainingCheckpoint | None = None) -> list[float]:
        cfg = self.config
        optimizer = torch.optim.AdamW(self.params.values(), lr=cfg.learning_rate, betas=(0.9, 0.999),
                                      weight_decay=cfg.weight_decay, eps=1e-8)  # fmt: skip
        losses: list[float] = []
        generators = {"train": self.generator}
        if checkpoint is not None and (saved := checkpoint.load()) is not None:
            losses = restore_optimiser_state(saved, optimizer, self.params, generators)
        self.unet.train()
        steps = tqdm(range(len(losses), cfg.train_steps), desc="CA steps", leave=False, mininterval=2.0,
                     initial=len(losses), total=cfg.train_steps)  # fmt: skip
        for step in steps:
            x_t, t, templates = self.sample_batch()
            optimizer.zero_grad(set_to_none=True)
            loss = self.loss(x_t, t, templates)
            if not torch.isfinite(loss):
                raise NonFiniteError(
                    f"CA: the loss became {loss.item()} at step {step + 1} of {cfg.train_steps} "
                    f"(learning_rate={cfg.learning_rate}, train_method={cfg.train_method}); training stopped and "
                    f"nothing was cached. A smaller learning rate usually fixes it."
                )
            loss.backward()
            torch.nn.utils.clip_grad_norm_(list(self.params.values()), cfg.max_grad_norm)
            optimizer.step()
            if self.frozen_rows is not None:  # only the target concept's token rows may move (weight decay too)
                weight = next(iter(self.params.values()))
                with torch.no_grad():
                    weight[self.frozen_rows] = self.embedding_before[self.frozen_rows]
            losses.append(loss.item())
            steps.set_postfix(loss=f"{losses[-1]:.4g}", refresh=False)
            if checkpoint is not None:
                checkpoint.maybe_save(step + 1, lambda: optimiser_state(optimizer, self.params, generators, losses))
        self.unet.eval()
        for p in self.params.values():
            p.requires_grad_(False)
        return losses

    def trained_state(self) -> Weights:
        return {name: p.detach().to("cpu", torch.float32).contiguous() for name, p in self.params.items()}


class ConceptAblation(Technique):
    name = "ca"
    config_cls = CAConfig
    config: CAConfig
    algorithm_version = 1
    weight_fields = TRAINING_KEYS

    def build_weights(self, pipe: Any) -> Weights:
        cfg, model = self.config, self.context.model
        trainer = CATrainer(pipe, cfg, self.device, model.height, model.width)
        log.info("CA: %d anchor images of '%s', then %d steps on %d tensors (%s) to ablate '%s'",
                 cfg.num_anchor_images, cfg.anchor_concept, cfg.train_steps, len(trainer.params), cfg.train_method,
                 cfg.erase_concept)  # fmt: skip
        start = time.perf_counter()
        trainer.anchors(self.checkpoint.companion("anchors") if self.checkpoint else None)
        anchors_s = time.perf_counter() - start
        losses = trainer.train(self.checkpoint)
        self.info.update(anchor_images_s=round(anchors_s, 3), training_s=round(time.perf_counter() - start - anchors_s, 3),
                         trained_tensors=len(trainer.params), first_loss=losses[0], last_loss=losses[-1],
                         losses=losses)  # fmt: skip
        return trainer.trained_state()

    def failure_hint(self) -> str:
        return f" (learning_rate={self.config.learning_rate}, train_method={self.config.train_method})"
