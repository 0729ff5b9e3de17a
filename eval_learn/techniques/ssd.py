"""``ssd``: Selective Synaptic Dampening — Foster, Schoepf, Brintrup, "Fast Machine Unlearning Without Retraining
Through Selective Synaptic Dampening", AAAI 2024 (arXiv:2308.07707), adapted from classifiers to diffusion models.

SSD needs no training loop. It measures how important each parameter is to the data to forget and to the whole
training data with the diagonal of the Fisher information (squared gradients of the loss), then shrinks the
parameters that matter far more to the forget data than to the rest:

    where []_f > α · []_D:   θ ← θ · min(λ · []_D / []_f, 1)

with α = ``selection_weighting`` and λ = ``dampening_constant``; every other parameter keeps its value exactly, and a
dampened one only shrinks in magnitude. The rule and its defaults (α 10, λ 1) follow the authors' release
(github.com/if-loops/selective-synaptic-dampening, ``src/ssd.py`` ``ParameterPerturber``): importances are the mean
over batches of the squared gradient of each batch's mean loss, and D is the whole training set (the retain data and
the forget data together, ``importance_data: full``).

For a text-to-image model the loss is the denoising loss ‖ε − ε_θ(x_t, c, t)‖² and the data are images the base
model renders from the forget prompts (the concept) and the retain prompts, as the SD releases of other unlearning
methods (SalUn) make their forget and retain sets; t is uniform over the training timesteps. Every UNet parameter
may be dampened (the release: every parameter of the model). The eval-learn predecessor's documentation described
another rule (r = F_r / (F_r + α·F_f), θ ← θ·max(0, 1 − λ(1 − r)) on every parameter); this module implements the
paper's.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from eval_learn.configs import require
from eval_learn.errors import NonFiniteError
from eval_learn.techniques import prompt_images
from eval_learn.techniques.base import Technique, WeightsConfig
from eval_learn.techniques.checkpoint import TrainingCheckpoint
from eval_learn.techniques.weights import Weights

log = logging.getLogger(__name__)

ImportanceData = Literal["full", "retain"]
DEFAULT_RETAIN = ["a photo of a person wearing clothes", "a photo of a city street", "a photo of a dog", ""]


@dataclass
class SSDConfig(WeightsConfig):
    erase_concept: str = "nudity"
    forget_prompts: list[str] | None = None  # the forget data's prompts; null: [erase_concept]
    retain_prompts: list[str] = field(default_factory=lambda: list(DEFAULT_RETAIN))
    selection_weighting: float = 10.0  # α: a parameter is selected where []_f > α · []_D
    dampening_constant: float = 1.0  # λ: a selected parameter is multiplied by min(λ · []_D / []_f, 1)
    importance_data: ImportanceData = "full"  # D: retain and forget images (the release) | retain images only
    images_per_prompt: int = 8
    image_steps: int = 50
    image_guidance_scale: float = 7.5
    train_batch_size: int = (
        8  # images per importance batch (the loss is averaged over a batch, then squared-gradiented)
    )
    passes: int = 1  # passes over the images (each with fresh timesteps and noise)
    train_seed: int = 0

    def erased_concepts(self) -> list[str] | None:
        return [self.erase_concept]

    def forget(self) -> list[str]:
        return list(self.forget_prompts) if self.forget_prompts is not None else [self.erase_concept]

    def validate(self) -> None:
        super().validate()
        require(bool(self.erase_concept.strip()), "erase_concept must be non-empty")
        require(self.forget_prompts is None or bool(self.forget_prompts), "forget_prompts must be null or non-empty")
        require(bool(self.retain_prompts), "retain_prompts must be a non-empty list")
        for key in ("selection_weighting", "dampening_constant"):
            value = getattr(self, key)
            require(math.isfinite(value) and value > 0, f"{key} must be a finite number > 0, got {value}")
        for key in ("images_per_prompt", "image_steps", "train_batch_size", "passes"):
            require(getattr(self, key) > 0, f"{key} must be > 0, got {getattr(self, key)}")
        require(math.isfinite(self.image_guidance_scale) and self.image_guidance_scale >= 0,
                "image_guidance_scale must be a finite number >= 0")  # fmt: skip
        require(0 <= self.train_seed < 2**63, "train_seed must be in [0, 2**63)")


def importance(params: Mapping[str, torch.Tensor], losses: Iterable[Callable[[], torch.Tensor]],
               total: dict[str, torch.Tensor] | None = None) -> tuple[dict[str, torch.Tensor], int]:  # fmt: skip
    """The release's ``calc_importance``: for each batch's loss, the squared gradient of every parameter, summed
    (onto ``total`` when given); returns the sums and the number of batches (divide to get the mean)."""
    total = total if total is not None else {n: torch.zeros_like(p) for n, p in params.items()}
    count = 0
    for loss_of_batch in losses:
        for p in params.values():
            p.grad = None
        loss = loss_of_batch()
        if not torch.isfinite(loss):
            raise NonFiniteError(f"SSD: the loss of an importance batch is {loss.item()}; nothing was cached")
        loss.backward()
        for name, p in params.items():
            if p.grad is not None:
                total[name] += p.grad.detach().pow(2)
        count += 1
    return total, count


@torch.no_grad()
def dampen(params: Mapping[str, torch.Tensor], forget: Mapping[str, torch.Tensor],
           original: Mapping[str, torch.Tensor], alpha: float, lam: float) -> dict[str, int]:  # fmt: skip
    """The paper's rule in place: where ``forget > alpha · original``, multiply by min(lam · original / forget, 1).
    Returns how many entries of each tensor were dampened (tensors with none are left out)."""
    counts: dict[str, int] = {}
    for name, p in params.items():
        f, o = forget[name], original[name]
        where = f > o * alpha
        if not bool(where.any()):
            continue
        factor = (o * lam / f)[where].clamp(max=1.0)  # bounded by 1: no parameter may grow
        p[where] = p[where] * factor
        counts[name] = int(where.sum())
    return counts


class SSDEstimator:
    """The forget and retain images, the denoising loss and the two importances on a diffusers pipeline."""

    def __init__(self, pipe: Any, config: SSDConfig, device: str, height: int, width: int) -> None:
        self.pipe, self.config, self.device = pipe, config, device
        self.height, self.width = height, width
        self.unet = pipe.unet
        self.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
        self.prompts = config.forget() + list(config.retain_prompts)
        for module in (pipe.unet, pipe.text_encoder, pipe.vae):
            module.requires_grad_(False)
        self.params = dict(self.unet.named_parameters())
        self.images: prompt_images.PromptImages | None = None
        self.generator = torch.Generator("cpu").manual_seed(config.train_seed)

    def encode(self, texts: list[str]) -> torch.Tensor:
        tok = self.pipe.tokenizer(texts, padding="max_length", max_length=self.pipe.tokenizer.model_max_length,
                                  truncation=True, return_tensors="pt")  # fmt: skip
        with torch.no_grad():
            return self.pipe.text_encoder(tok.input_ids.to(self.device))[0]

    def render(self) -> None:
        cfg = self.config
        self.images = prompt_images.render(self.pipe, self.prompts, cfg.images_per_prompt, steps=cfg.image_steps,
                                           guidance_scale=cfg.image_guidance_scale, seed=cfg.train_seed,
                                           height=self.height, width=self.width, desc="SSD images")  # fmt: skip

    def batches(self) -> list[tuple[str, list[int]]]:
        """(set, image indices) of every importance batch in order: the forget images, then D (the release's
        ConcatDataset of retain then forget data, or the retain images alone), each cut into unshuffled batches."""
        cfg = self.config
        assert self.images is not None
        is_forget = (self.images.prompt_of < len(cfg.forget())).tolist()
        forget = [i for i, f in enumerate(is_forget) if f]
        retain = [i for i, f in enumerate(is_forget) if not f]
        original = retain + forget if cfg.importance_data == "full" else retain
        out: list[tuple[str, list[int]]] = []
        for which, images in (("forget", forget), ("original", original)):
            for _ in range(cfg.passes):
                out += [
                    (which, images[i : i + cfg.train_batch_size]) for i in range(0, len(images), cfg.train_batch_size)
                ]
        return out

    def loss(self, images: list[int]) -> torch.Tensor:
        """The denoising loss of one batch: mean squared error between ε and ε_θ(x_t, c, t), t uniform."""
        assert self.images is not None
        g, index = self.generator, torch.tensor(images)
        x0 = self.images.sample(index, g, self.pipe.vae.config.scaling_factor)
        noise = torch.randn(x0.shape, generator=g).to(self.device)
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (len(images),), generator=g).to(self.device)
        prompts = [self.prompts[int(self.images.prompt_of[i])] for i in images]
        x_t = self.scheduler.add_noise(x0, noise, t)
        prediction = self.unet(x_t, t, encoder_hidden_states=self.encode(prompts)).sample
        return F.mse_loss(prediction.float(), noise.float())

    def estimate(self, checkpoint: TrainingCheckpoint | None = None) -> dict[str, dict[str, torch.Tensor]]:
        """The mean importances ``{"forget": ..., "original": ...}``, resumable batch by batch."""
        saved = checkpoint.load() if checkpoint is not None else None
        images_saved = checkpoint.companion("images") if checkpoint is not None else None
        if images_saved is not None and (state := images_saved.load()) is not None:
            self.images = prompt_images.PromptImages.from_state(state, self.device)
        else:
            self.render()
            if images_saved is not None:
                images_saved.maybe_save(0, self.images.state, force=True)  # type: ignore[union-attr]
        batches = self.batches()
        sums = {w: {n: torch.zeros_like(p) for n, p in self.params.items()} for w in ("forget", "original")}
        done = 0
        if saved is not None:
            done = int(saved["step"])
            for which in sums:
                for name, tensor in saved["sums"][which].items():
                    sums[which][name].copy_(tensor.to(self.device))
            self.generator.set_state(saved["generator"])
        for p in self.params.values():
            p.requires_grad_(True)
        self.unet.eval()
        steps = tqdm(range(done, len(batches)), desc="SSD importances", leave=False, mininterval=2.0, initial=done,
                     total=len(batches))  # fmt: skip
        for step in steps:
            which, images = batches[step]
            importance(self.params, [lambda images=images: self.loss(images)], sums[which])
            if checkpoint is not None:
                checkpoint.maybe_save(step + 1, lambda: {
                    "sums": {w: {n: t.cpu() for n, t in s.items()} for w, s in sums.items()},
                    "generator": self.generator.get_state(),
                })  # fmt: skip
        for p in self.params.values():
            p.requires_grad_(False)
            p.grad = None
        counts = {w: sum(1 for which, _ in batches if which == w) for w in sums}
        return {w: {n: t / float(counts[w]) for n, t in s.items()} for w, s in sums.items()}


class SSD(Technique):
    name = "ssd"
    config_cls = SSDConfig
    config: SSDConfig
    weight_fields = ("erase_concept", "forget_prompts", "retain_prompts", "selection_weighting",
                     "dampening_constant", "importance_data", "images_per_prompt", "image_steps",
                     "image_guidance_scale", "train_batch_size", "passes", "train_seed")  # fmt: skip

    def build_weights(self, pipe: Any) -> Weights:
        cfg, model = self.config, self.context.model
        estimator = SSDEstimator(pipe, cfg, self.device, model.height, model.width)
        log.info("SSD: importances of %d UNet tensors on %d forget and %d retain prompts", len(estimator.params),
                 len(cfg.forget()), len(cfg.retain_prompts))  # fmt: skip
        imp = estimator.estimate(self.checkpoint)
        counts = dampen(estimator.params, imp["forget"], imp["original"], cfg.selection_weighting,
                        cfg.dampening_constant)  # fmt: skip
        total = sum(p.numel() for p in estimator.params.values())
        self.info.update(dampened_tensors=len(counts), dampened_entries=sum(counts.values()), unet_entries=total)
        log.info("SSD: dampened %d of %d UNet entries in %d tensors", sum(counts.values()), total, len(counts))
        return {f"unet.{n}": estimator.params[n].detach().to("cpu", torch.float32).contiguous() for n in counts}

    def failure_hint(self) -> str:
        return f" (selection_weighting={self.config.selection_weighting})"
