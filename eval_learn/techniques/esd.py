"""``esd``: Erased Stable Diffusion — Gandikota, Materzyńska, Fiotto-Kaufman, Bau, "Erasing Concepts from Diffusion
Models", ICCV 2023 (arXiv:2303.07345).

ESD fine-tunes the UNet θ so that, conditioned on the concept c, it predicts the noise a *negatively guided* frozen
copy θ* would predict:

    ε_θ(x_t, c, t)  →  ε_θ*(x_t, t) − η · [ε_θ*(x_t, c, t) − ε_θ*(x_t, t)]

with η = ``negative_guidance`` and ε(x_t, t) the prediction for the empty prompt (the paper's equation 3). With
``erase_from`` (the authors' diffusers release: erase c from a broader concept c_from, e.g. a hat from cowboys) the
model is trained on c_from and the base term is ε_θ*(x_t, c_from, t). The release writes the base term as
ε_θ*(x_t, c, t) when there is no c_from and defaults to η = 2, which is exactly the paper's target with η = 1; η here
always means the paper's η. As in the paper, x_t is not noised data
but a partial sample: the model being edited denoises random noise with DDIM (``sample_steps`` steps, guidance
``sample_guidance``, conditioned on the concept) and stops at a random step t. ``train_method`` picks the parameters
that may change: ``xattn`` (ESD-x: cross-attention only, for styles and objects), ``noxattn`` (ESD-u: every linear and
convolution layer except cross-attention, for global concepts such as nudity), ``selfattn`` and ``full``.

Trained weights (only the trained tensors) are cached by the technique base class under a key of the training config
and the base model, so a rerun does not retrain; ``save_path`` writes them elsewhere too and ``load_path`` skips
training. A non-finite loss stops training at once (nothing is cached).
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass
from typing import Literal

import torch
from tqdm.auto import tqdm

from eval_learn.configs import require
from eval_learn.errors import NonFiniteError
from eval_learn.techniques.base import Technique, WeightsConfig
from eval_learn.techniques.checkpoint import TrainingCheckpoint, optimiser_state, restore_optimiser_state
from eval_learn.techniques.weights import Weights

log = logging.getLogger(__name__)

TrainMethod = Literal["noxattn", "xattn", "selfattn", "full"]
TRAINING_KEYS = (
    "batch_size",
    "erase_concept",
    "erase_from",
    "train_method",
    "negative_guidance",
    "train_steps",
    "learning_rate",
    "sample_steps",
    "sample_guidance",
    "train_seed",
)


@dataclass
class ESDConfig(WeightsConfig):
    erase_concept: str = "nudity"
    erase_from: str | None = None
    train_method: TrainMethod = "noxattn"
    negative_guidance: float = 1.0  # the paper's η
    train_steps: int = 200
    learning_rate: float = 5e-5
    sample_steps: int = 50
    sample_guidance: float = 3.0
    train_seed: int = 0
    batch_size: int = 1  # partial samples per step (the paper uses 1)

    def erased_concepts(self) -> list[str] | None:
        return [self.erase_concept]

    def validate(self) -> None:
        super().validate()
        require(bool(self.erase_concept.strip()), "erase_concept must be non-empty")
        require(self.train_steps >= 0, "train_steps must be >= 0")
        require(math.isfinite(self.learning_rate) and self.learning_rate > 0, "learning_rate must be a finite number > 0")
        require(math.isfinite(self.negative_guidance), "negative_guidance must be a finite number")
        require(math.isfinite(self.sample_guidance) and self.sample_guidance >= 0,
                "sample_guidance must be a finite number >= 0")  # fmt: skip
        require(self.sample_steps > 0, "sample_steps must be > 0")
        require(self.batch_size > 0, "batch_size must be > 0")
        require(0 <= self.train_seed < 2**63, "train_seed must be in [0, 2**63)")


def select_parameters(unet: torch.nn.Module, train_method: TrainMethod) -> dict[str, torch.nn.Parameter]:
    """The UNet parameters ESD may change, by name. Attention blocks are ``attn1`` (self) and ``attn2`` (cross)."""
    if train_method == "full":
        return dict(unet.named_parameters())
    selected: dict[str, torch.nn.Parameter] = {}
    for module_name, module in unet.named_modules():
        if not isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            continue
        keep = {
            "xattn": "attn2" in module_name,
            "selfattn": "attn1" in module_name,
            "noxattn": "attn2" not in module_name,
        }[train_method]
        if keep:
            for param_name, param in module.named_parameters(recurse=False):
                selected[f"{module_name}.{param_name}"] = param
    return selected


def _batch(embedding: torch.Tensor, n: int) -> torch.Tensor:
    return embedding.expand(n, -1, -1)


class ESDTrainer:
    """The ESD objective and its training loop on a diffusers Stable Diffusion pipeline."""

    def __init__(self, pipe, config: ESDConfig, device: str, height: int, width: int) -> None:
        self.pipe = pipe
        factor = pipe.vae_scale_factor
        self.latent_shape = (config.batch_size, pipe.unet.config.in_channels, height // factor, width // factor)
        self.config = config
        self.device = device
        self.unet = pipe.unet
        self.frozen = copy.deepcopy(pipe.unet).requires_grad_(False).eval()
        # DDIM, as the authors' release samples x_t, whatever the pipeline's own scheduler: a multistep scheduler
        # (SD-1.4 ships PNDM) would carry its history from one partial sample into the next.
        from diffusers import DDIMScheduler

        self.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        self.scheduler.set_timesteps(config.sample_steps, device=device)
        self.params = select_parameters(self.unet, config.train_method)
        self.unet.requires_grad_(False)
        for p in self.params.values():
            p.requires_grad_(True)
        with torch.no_grad():
            self.emb_null = self._encode("")
            self.emb_concept = self._encode(config.erase_concept)
            self.emb_from = self._encode(config.erase_from) if config.erase_from else self.emb_concept
        self.generator = torch.Generator("cpu").manual_seed(config.train_seed)

    def _encode(self, text: str) -> torch.Tensor:
        tok = self.pipe.tokenizer(
            text,
            padding="max_length",
            max_length=self.pipe.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        return self.pipe.text_encoder(tok.input_ids.to(self.device))[0]

    @torch.no_grad()
    def sample_xt(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Partially denoise fresh noise with the model being edited, stopping at a random DDIM step."""
        stop = int(torch.randint(0, self.config.sample_steps, (1,), generator=self.generator))
        latents = torch.randn(self.latent_shape, generator=self.generator).to(self.device)
        latents = latents * self.scheduler.init_noise_sigma
        cond = torch.cat([_batch(self.emb_null, x_t_batch := len(latents)), _batch(self.emb_from, x_t_batch)])
        for t in self.scheduler.timesteps[:stop]:
            model_in = self.scheduler.scale_model_input(torch.cat([latents] * 2), t)
            uncond, text = self.unet(model_in, t, encoder_hidden_states=cond).sample.chunk(2)
            noise = uncond + self.config.sample_guidance * (text - uncond)
            latents = self.scheduler.step(noise, t, latents).prev_sample
        return latents, self.scheduler.timesteps[stop]

    def target(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """ε*(x_t, ∅) − η·[ε*(x_t, c) − ε*(x_t, ∅)] from the frozen copy (base ε*(x_t, c_from) with erase_from)."""
        with torch.no_grad():
            n = len(x_t)
            e_null = self.frozen(x_t, t, encoder_hidden_states=_batch(self.emb_null, n)).sample
            e_concept = self.frozen(x_t, t, encoder_hidden_states=_batch(self.emb_concept, n)).sample
            e_base = (
                self.frozen(x_t, t, encoder_hidden_states=_batch(self.emb_from, n)).sample
                if self.config.erase_from
                else e_null
            )
        return e_base - self.config.negative_guidance * (e_concept - e_null)

    def loss(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        prediction = self.unet(x_t, t, encoder_hidden_states=_batch(self.emb_from, len(x_t))).sample
        return torch.nn.functional.mse_loss(prediction, self.target(x_t, t))

    def train(self, checkpoint: TrainingCheckpoint | None = None) -> list[float]:
        optimizer = torch.optim.Adam(self.params.values(), lr=self.config.learning_rate)
        losses: list[float] = []
        generators = {"train": self.generator}
        if checkpoint is not None and (saved := checkpoint.load()) is not None:
            losses = restore_optimiser_state(saved, optimizer, self.params, generators)
        self.unet.train()
        steps = tqdm(range(len(losses), self.config.train_steps), desc="ESD steps", leave=False, mininterval=2.0,
                     initial=len(losses), total=self.config.train_steps)  # fmt: skip
        for step in steps:
            x_t, t = self.sample_xt()
            optimizer.zero_grad(set_to_none=True)
            loss = self.loss(x_t, t)
            if not torch.isfinite(loss):
                raise NonFiniteError(
                    f"ESD: the loss became {loss.item()} at step {step + 1} of {self.config.train_steps} "
                    f"(learning_rate={self.config.learning_rate}, negative_guidance={self.config.negative_guidance}); "
                    f"training stopped and nothing was cached. A smaller learning rate usually fixes it."
                )
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            steps.set_postfix(loss=f"{losses[-1]:.4g}", refresh=False)
            if checkpoint is not None:
                checkpoint.maybe_save(step + 1, lambda: optimiser_state(optimizer, self.params, generators, losses))
        self.unet.eval().requires_grad_(False)
        return losses

    def trained_state(self) -> Weights:
        return {f"unet.{name}": p.detach().to("cpu", torch.float32).contiguous() for name, p in self.params.items()}


class ESD(Technique):
    name = "esd"
    config_cls = ESDConfig
    config: ESDConfig
    algorithm_version = 4  # 4: partial samples always with DDIM (was the pipeline's scheduler)
    weight_fields = TRAINING_KEYS

    def build_weights(self, pipe) -> Weights:
        cfg, model = self.config, self.context.model
        trainer = ESDTrainer(pipe, cfg, self.device, model.height, model.width)
        log.info("ESD: training %d tensors (%s) for %d steps to erase '%s'", len(trainer.params), cfg.train_method,
                 cfg.train_steps, cfg.erase_concept)  # fmt: skip
        losses = trainer.train(self.checkpoint)
        self.info.update(trained_tensors=len(trainer.params), first_loss=losses[0] if losses else None,
                         last_loss=losses[-1] if losses else None, losses=losses)  # fmt: skip
        return trainer.trained_state()

    def failure_hint(self) -> str:
        return f" (learning_rate={self.config.learning_rate}, negative_guidance={self.config.negative_guidance})"
