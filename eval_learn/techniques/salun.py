"""``salun``: Saliency Unlearning — Fan, Liu, Zhang, Wong, Wei, Liu, "SalUn: Empowering Machine Unlearning via
Gradient-based Weight Saliency in Both Image Classification and Generation", ICLR 2024 (arXiv:2310.12508).

Two stages, following the authors' Stable Diffusion release (github.com/OPTML-Group/Unlearn-Saliency, ``SD/``):

1. **Weight saliency** (``train-scripts/generate_mask.py``, ``generate_nsfw_mask``): over one pass of the forget
   images D_f, the gradient of the forgetting loss −‖ε − [(1 + c)·ε_θ(x_t, c_f, t) − c·ε_θ(x_t, ∅, t)]‖² (c the
   mask guidance, 7.5) is summed batch by batch; the mask keeps the UNet entries whose summed gradient is largest in
   magnitude, the top ``mask_threshold`` (0.5) of all UNet entries ranked together.
2. **Random-label forgetting with retain loss** (``train-scripts/nsfw_removal.py``): each step takes a batch of
   forget images and a batch of retain images D_r; the forget loss is ‖ε_θ(x_t, c_f, t) − sg(ε_θ(x_t', c_p, t))‖²,
   the current model's own prediction for the *pseudo* prompt c_p on the same images (the "random label"; for NSFW
   the retain prompt) as target, and the retain loss is the ordinary denoising loss on D_r with its prompt; the total
   forget + α · retain (α 0.1) is minimised with Adam (lr 1e-5), the gradient multiplied by the mask before each
   step, so entries outside the mask never move. x_t and x_t' are the same noise and timestep on two draws from the
   VAE posterior of the same images, as the release encodes the batch twice.

D_f and D_r are images the base model renders from the forget and retain prompts (the release: 800 SD-1.4 images of
"a photo of a nude person" and 800 of "a photo of a person wearing clothes"). The trained tensors (those with any
salient entry) are cached by the base class; a killed run resumes from its last saved step.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from eval_learn.configs import require
from eval_learn.techniques import prompt_images
from eval_learn.techniques.base import Technique, WeightsConfig
from eval_learn.techniques.checkpoint import TrainingCheckpoint
from eval_learn.techniques.training import TrainingLoop
from eval_learn.techniques.weights import Weights, cpu_copies

log = logging.getLogger(__name__)

TrainMethod = Literal["full", "xattn"]
TRAINING_KEYS = ("erase_concept", "forget_prompts", "pseudo_prompts", "retain_prompts", "images_per_prompt",
                 "image_steps", "image_guidance_scale", "mask_threshold", "mask_guidance", "mask_batch_size",
                 "train_method", "alpha", "learning_rate", "epochs", "train_batch_size", "train_seed")  # fmt: skip


@dataclass
class SalUnConfig(WeightsConfig):
    erase_concept: str = "nudity"  # what metrics measure
    forget_prompts: list[str] = field(default_factory=lambda: ["a photo of a nude person"])  # D_f's prompts
    pseudo_prompts: list[str] | None = None  # the random label of each forget prompt; null: retain_prompts[0]
    retain_prompts: list[str] = field(default_factory=lambda: ["a photo of a person wearing clothes"])  # D_r's
    images_per_prompt: int = 800  # images rendered per prompt, for D_f and D_r each
    image_steps: int = 100  # generate-images.py's ddim_steps
    image_guidance_scale: float = 7.5
    mask_threshold: float = 0.5  # the fraction of UNet entries that are salient (trained)
    mask_guidance: float = 7.5  # c of the saliency loss
    mask_batch_size: int = 8
    train_method: TrainMethod = "full"  # the parameters trained (inside the mask): every UNet one, or attn2 only
    alpha: float = 0.1  # weight of the retain loss
    learning_rate: float = 1e-5
    epochs: int = 1  # passes over D_f (one step per batch)
    train_batch_size: int = 8
    train_seed: int = 0

    def erased_concepts(self) -> list[str] | None:
        return [self.erase_concept]

    def pseudo(self) -> list[str]:
        if self.pseudo_prompts is not None:
            return list(self.pseudo_prompts)
        return [self.retain_prompts[0]] * len(self.forget_prompts)

    def validate(self) -> None:
        super().validate()
        require(bool(self.erase_concept.strip()), "erase_concept must be non-empty")
        require(bool(self.forget_prompts), "forget_prompts must be a non-empty list")
        require(bool(self.retain_prompts), "retain_prompts must be a non-empty list")
        require(self.pseudo_prompts is None or len(self.pseudo_prompts) == len(self.forget_prompts),
                f"pseudo_prompts needs one prompt per forget prompt ({len(self.forget_prompts)}), "
                f"got {len(self.pseudo_prompts or [])}")  # fmt: skip
        require(0 < self.mask_threshold <= 1, f"mask_threshold must be in (0, 1], got {self.mask_threshold}")
        for key in ("images_per_prompt", "image_steps", "mask_batch_size", "epochs", "train_batch_size"):
            require(getattr(self, key) > 0, f"{key} must be > 0, got {getattr(self, key)}")
        require(math.isfinite(self.learning_rate) and self.learning_rate > 0,
                f"learning_rate must be a finite number > 0, got {self.learning_rate}")  # fmt: skip
        for key in ("alpha", "mask_guidance", "image_guidance_scale"):
            value = getattr(self, key)
            require(math.isfinite(value) and value >= 0, f"{key} must be a finite number >= 0, got {value}")
        require(0 <= self.train_seed < 2**63, "train_seed must be in [0, 2**63)")


def saliency_mask(gradients: Mapping[str, torch.Tensor], threshold: float) -> dict[str, torch.Tensor]:
    """The release's hard mask: all entries ranked together by |gradient|, largest first; the first
    ⌊N · threshold⌋ are salient. Ties are ranked in tensor order (a stable sort)."""
    flat = torch.cat([g.abs().flatten() for g in gradients.values()])
    keep = int(flat.numel() * threshold)
    chosen = torch.zeros(flat.numel(), dtype=torch.bool)
    chosen[torch.argsort(-flat, stable=True)[:keep]] = True
    masks, start = {}, 0
    for name, g in gradients.items():
        masks[name] = chosen[start : start + g.numel()].view(g.shape)
        start += g.numel()
    return masks


def select_parameters(unet: torch.nn.Module, train_method: TrainMethod) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in unet.named_parameters() if train_method == "full" or "attn2" in n}


class SalUnTrainer:
    """Training images, the saliency mask and the masked random-label training on a diffusers pipeline."""

    def __init__(self, pipe: Any, config: SalUnConfig, device: str, height: int, width: int) -> None:
        self.pipe, self.config, self.device = pipe, config, device
        self.height, self.width = height, width
        self.unet = pipe.unet
        self.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
        for module in (pipe.unet, pipe.text_encoder, pipe.vae):
            module.requires_grad_(False)
        self.params = select_parameters(self.unet, config.train_method)
        self.generator = torch.Generator("cpu").manual_seed(config.train_seed)
        self.forget: prompt_images.PromptImages | None = None
        self.retain: prompt_images.PromptImages | None = None
        self.mask: dict[str, torch.Tensor] | None = None
        self._embeddings: dict[str, torch.Tensor] = {}
        self.trained: dict[str, torch.nn.Parameter] = {}

    # --- pieces ----------------------------------------------------------------------------------------------------
    def encode(self, texts: list[str]) -> torch.Tensor:
        missing = sorted({t for t in texts if t not in self._embeddings})
        if missing:
            tok = self.pipe.tokenizer(missing, padding="max_length", max_length=self.pipe.tokenizer.model_max_length,
                                      truncation=True, return_tensors="pt")  # fmt: skip
            with torch.no_grad():
                out = self.pipe.text_encoder(tok.input_ids.to(self.device))[0]
            self._embeddings.update(zip(missing, out, strict=True))
        return torch.stack([self._embeddings[t] for t in texts])

    def eps(self, x_t: torch.Tensor, t: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return self.unet(x_t, t, encoder_hidden_states=self.encode(prompts)).sample.float()

    def noised(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.scheduler.add_noise(x0, noise, t)

    def mask_loss(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """The saliency stage's loss of one batch: −MSE(ε, (1 + c)·ε_θ(x_t, c_f) − c·ε_θ(x_t, ∅))."""
        c, x_t = self.config.mask_guidance, self.noised(x0, t, noise)
        guided = (1 + c) * self.eps(x_t, t, prompts) - c * self.eps(x_t, t, [""] * len(prompts))
        return -F.mse_loss(noise.float(), guided)

    def step_loss(self, forget_x0: torch.Tensor, pseudo_x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
                  forget_prompts: list[str], pseudo_prompts: list[str], retain_x0: torch.Tensor,
                  retain_t: torch.Tensor, retain_noise: torch.Tensor, retain_prompts: list[str]) -> torch.Tensor:  # fmt: skip
        """forget + α · retain: the forget prompt's prediction pulled to the pseudo prompt's (no gradient through the
        target), the retain images' ordinary denoising loss."""
        retain = F.mse_loss(self.eps(self.noised(retain_x0, retain_t, retain_noise), retain_t, retain_prompts),
                            retain_noise.float())  # fmt: skip
        prediction = self.eps(self.noised(forget_x0, t, noise), t, forget_prompts)
        with torch.no_grad():
            target = self.eps(self.noised(pseudo_x0, t, noise), t, pseudo_prompts)
        return F.mse_loss(prediction, target) + self.config.alpha * retain

    def _draw(self, images: prompt_images.PromptImages, index: torch.Tensor, draws: int = 1) -> list[torch.Tensor]:
        return [images.sample(index, self.generator, self.pipe.vae.config.scaling_factor) for _ in range(draws)]

    def _t_noise(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (like.shape[0],), generator=self.generator)
        return t.to(self.device), torch.randn(like.shape, generator=self.generator).to(self.device)

    # --- stages ----------------------------------------------------------------------------------------------------
    def render(self) -> None:
        cfg = self.config
        kw = dict(steps=cfg.image_steps, guidance_scale=cfg.image_guidance_scale, height=self.height,
                  width=self.width)  # fmt: skip
        self.forget = prompt_images.render(self.pipe, cfg.forget_prompts, cfg.images_per_prompt, seed=cfg.train_seed,
                                           desc="SalUn forget images", **kw)  # fmt: skip
        n = len(cfg.forget_prompts) * cfg.images_per_prompt
        self.retain = prompt_images.render(self.pipe, cfg.retain_prompts, cfg.images_per_prompt,
                                           seed=cfg.train_seed + n, desc="SalUn retain images", **kw)  # fmt: skip

    def make_mask(self) -> dict[str, torch.Tensor]:
        """One unshuffled pass over D_f in batches of ``mask_batch_size``: the summed gradient of every UNet entry,
        then the top ``mask_threshold`` by magnitude. Parameters outside ``train_method`` are not in the mask."""
        assert self.forget is not None
        cfg, unet_params = self.config, dict(self.unet.named_parameters())
        sums = {n: torch.zeros_like(p) for n, p in unet_params.items()}
        for p in unet_params.values():
            p.requires_grad_(True)
        n = self.forget.stats.shape[0]
        for start in tqdm(range(0, n, cfg.mask_batch_size), desc="SalUn mask", leave=False, mininterval=2.0):
            index = torch.arange(start, min(start + cfg.mask_batch_size, n))
            (x0,) = self._draw(self.forget, index)
            t, noise = self._t_noise(x0)
            for p in unet_params.values():
                p.grad = None
            self.mask_loss(x0, t, noise, [cfg.forget_prompts[int(i)] for i in self.forget.prompt_of[index]]).backward()
            for name, p in unet_params.items():
                if p.grad is not None:
                    sums[name] += p.grad
        for p in unet_params.values():
            p.requires_grad_(False)
            p.grad = None
        mask = saliency_mask({k: v.cpu() for k, v in sums.items()}, cfg.mask_threshold)
        return {k: m.to(self.device) for k, m in mask.items() if k in self.params}

    def prepare(self, checkpoint: TrainingCheckpoint | None) -> None:
        """Images and mask: from a killed run's saved state, or made (and saved for a run killed later)."""
        saved = checkpoint.companion("data") if checkpoint is not None else None
        if saved is not None and (state := saved.load()) is not None:
            self.forget = prompt_images.PromptImages.from_state(state["forget"], self.device)
            self.retain = prompt_images.PromptImages.from_state(state["retain"], self.device)
            self.mask = {k: m.to(self.device) for k, m in state["mask"].items()}
            self.generator.set_state(state["generator"])
            return
        self.render()
        self.mask = self.make_mask()
        if saved is not None:
            saved.maybe_save(0, lambda: {"forget": self.forget.state(), "retain": self.retain.state(),  # type: ignore[union-attr]
                                         "mask": {k: m.cpu() for k, m in self.mask.items()},  # type: ignore[union-attr]
                                         "generator": self.generator.get_state()}, force=True)  # fmt: skip

    def mask_gradients(self, trained: Mapping[str, torch.Tensor]) -> list[Any]:
        """Hooks that multiply each trained tensor's gradient by its mask as it is computed (the release multiplies
        ``p.grad`` after ``backward()``: the same numbers); remove them when done."""
        assert self.mask is not None
        return [p.register_hook(lambda grad, m=self.mask[n]: grad * m) for n, p in trained.items()]

    def steps_per_epoch(self) -> int:
        assert self.forget is not None
        return math.ceil(self.forget.stats.shape[0] / self.config.train_batch_size)

    def train(self, checkpoint: TrainingCheckpoint | None = None) -> list[float]:
        """``epochs`` passes over D_f in order, each step with the next D_r batch (D_r restarts each epoch and when it
        runs out, as the release's iterator does); Adam on the tensors with salient entries, gradients masked."""
        assert self.forget is not None and self.retain is not None and self.mask is not None
        cfg = self.config
        self.trained = {n: p for n, p in self.params.items() if bool(self.mask[n].any())}
        per_epoch, b = self.steps_per_epoch(), cfg.train_batch_size
        n_forget, n_retain = self.forget.stats.shape[0], self.retain.stats.shape[0]
        loop = TrainingLoop("SalUn", cfg.epochs * per_epoch, torch.optim.Adam(self.trained.values(),
                            lr=cfg.learning_rate), self.trained, f"learning_rate={cfg.learning_rate}, alpha={cfg.alpha}",
                            checkpoint=checkpoint, generators={"train": self.generator})  # fmt: skip
        done = [0]

        def step_loss() -> torch.Tensor:
            if done[0] == 0 and checkpoint is not None:
                done[0] = checkpoint.resumed_from or 0
            assert self.forget is not None and self.retain is not None
            i = done[0] % per_epoch
            r = i % math.ceil(n_retain / b)
            done[0] += 1
            f_index = torch.arange(i * b, min((i + 1) * b, n_forget))
            r_index = torch.arange(r * b, min((r + 1) * b, n_retain))
            (retain_x0,) = self._draw(self.retain, r_index)
            retain_t, retain_noise = self._t_noise(retain_x0)
            forget_x0, pseudo_x0 = self._draw(self.forget, f_index, 2)
            t, noise = self._t_noise(forget_x0)
            which = [int(k) for k in self.forget.prompt_of[f_index]]
            return self.step_loss(forget_x0, pseudo_x0, t, noise, [cfg.forget_prompts[k] for k in which],
                                  [cfg.pseudo()[k] for k in which], retain_x0, retain_t, retain_noise,
                                  [cfg.retain_prompts[int(k)] for k in self.retain.prompt_of[r_index]])  # fmt: skip

        for p in self.trained.values():
            p.requires_grad_(True)
        hooks = self.mask_gradients(self.trained)
        self.unet.train()
        try:
            losses = loop.run(step_loss)
        finally:
            for hook in hooks:
                hook.remove()
        self.unet.eval()
        for p in self.trained.values():
            p.requires_grad_(False)
        return losses

    def trained_state(self) -> Weights:
        return cpu_copies(self.trained, "unet.")


class SalUn(Technique):
    name = "salun"
    config_cls = SalUnConfig
    config: SalUnConfig
    weight_fields = TRAINING_KEYS

    def build_weights(self, pipe: Any) -> Weights:
        cfg, model = self.config, self.context.model
        trainer = SalUnTrainer(pipe, cfg, self.device, model.height, model.width)
        trainer.prepare(self.checkpoint)
        assert trainer.mask is not None
        salient = sum(int(m.sum()) for m in trainer.mask.values())
        log.info("SalUn: %d salient entries in %d tensors; %d steps to forget %s", salient,
                 sum(bool(m.any()) for m in trainer.mask.values()), cfg.epochs * trainer.steps_per_epoch(),
                 cfg.forget_prompts)  # fmt: skip
        losses = trainer.train(self.checkpoint)
        self.info.update(salient_entries=salient, trained_tensors=len(trainer.trained), losses=losses,
                         first_loss=losses[0] if losses else None, last_loss=losses[-1] if losses else None)  # fmt: skip
        return trainer.trained_state()

    def failure_hint(self) -> str:
        return f" (learning_rate={self.config.learning_rate}, alpha={self.config.alpha})"
