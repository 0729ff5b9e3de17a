"""``esd``: Erased Stable Diffusion — Gandikota, Materzyńska, Fiotto-Kaufman, Bau, "Erasing Concepts from Diffusion
Models", ICCV 2023 (arXiv:2303.07345).

ESD fine-tunes the UNet θ so that, conditioned on the concept c, it predicts the noise a *negatively guided* frozen
copy θ* would predict:

    ε_θ(x_t, c, t)  →  ε_θ*(x_t, t) − η · [ε_θ*(x_t, c, t) − ε_θ*(x_t, t)]

with η = ``negative_guidance`` and ε(x_t, t) the prediction for the empty prompt (the paper's equation 3). With
``erase_from`` (the diffusers release: erase c from a broader concept c_from, e.g. a hat from cowboys) the model is
trained on c_from and the target is ε_θ*(x_t, c_from, t) − (η+1)·[ε_θ*(x_t, c, t) − ε_θ*(x_t, t)], the release's
formula with its negative guidance η + 1 (its default 2 is the paper's η = 1). As in the paper, x_t is not noised
data but a partial sample: DDIM (``sample_steps`` steps, guidance ``sample_guidance``, conditioned on the concept)
denoises random noise and stops at a random step.

``loop`` chooses between the authors' two releases (github.com/rohitgandikota/erasing): ``compvis`` follows
``train-scripts/train-esd.py`` (commit b8aeab6), the CompVis-codebase script that produced the paper's checkpoints:
x_t is sampled by the model being trained, the timestep is drawn at random inside the DDIM step's bucket of training
timesteps, and ``noxattn`` trains every UNet parameter except cross-attention, time embedding and output layers,
normalisation layers included. ``diffusers`` follows ``esd_sd.py``: x_t is sampled by the frozen original, the
timestep is the scheduler's, and ``noxattn`` trains the Linear and Conv2d layers outside cross-attention.
``train_method`` picks the parameters that may change: ``xattn`` (ESD-x: cross-attention only, for styles and
objects), ``noxattn`` (ESD-u, for global concepts such as nudity), ``selfattn`` and ``full``.

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

from eval_learn.configs import require
from eval_learn.techniques.base import Technique, WeightsConfig
from eval_learn.techniques.checkpoint import TrainingCheckpoint
from eval_learn.techniques.training import TrainingLoop
from eval_learn.techniques.weights import Weights

log = logging.getLogger(__name__)

TrainMethod = Literal["noxattn", "xattn", "selfattn", "full"]
Loop = Literal["compvis", "diffusers"]
TRAINING_KEYS = (
    "loop",
    "train_batch_size",
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
    loop: Loop = "compvis"  # whose training loop: the CompVis train-esd.py (the paper's) or the diffusers esd_sd.py
    train_steps: int = 1000
    learning_rate: float = 1e-5
    sample_steps: int = 50
    sample_guidance: float = 3.0
    train_seed: int = 0
    train_batch_size: int = 1  # partial samples per step (the paper uses 1)

    def erased_concepts(self) -> list[str] | None:
        return [self.erase_concept]

    def validate(self) -> None:
        super().validate()
        require(bool(self.erase_concept.strip()), "erase_concept must be non-empty")
        require(self.train_steps >= 0, "train_steps must be >= 0")
        require(
            math.isfinite(self.learning_rate) and self.learning_rate > 0, "learning_rate must be a finite number > 0"
        )
        require(math.isfinite(self.negative_guidance), "negative_guidance must be a finite number")
        require(math.isfinite(self.sample_guidance) and self.sample_guidance >= 0,
                "sample_guidance must be a finite number >= 0")  # fmt: skip
        require(self.sample_steps > 0, "sample_steps must be > 0")
        require(self.train_batch_size > 0, "train_batch_size must be > 0")
        require(0 <= self.train_seed < 2**63, "train_seed must be in [0, 2**63)")


# CompVis ``noxattn`` leaves out cross-attention, the time embedding and the output layers ("out." in CompVis names:
# the final GroupNorm and convolution); everything else trains, the normalisation layers included.
COMPVIS_FROZEN_PREFIXES = ("time_embedding.", "conv_norm_out.", "conv_out.")


def select_parameters(
    unet: torch.nn.Module, train_method: TrainMethod, loop: Loop = "diffusers"
) -> dict[str, torch.nn.Parameter]:
    """The UNet parameters ESD may change, by name. Attention blocks are ``attn1`` (self) and ``attn2`` (cross).

    The two releases differ only for ``noxattn``: the CompVis code selects parameters by name (every parameter but
    cross-attention, time embedding and output layers), the diffusers code selects Linear and Conv2d modules
    outside cross-attention (so it trains the time embedding and output convolution but no normalisation layer)."""
    if train_method == "full":
        return dict(unet.named_parameters())
    if train_method == "noxattn" and loop == "compvis":
        return {
            n: p for n, p in unet.named_parameters() if "attn2" not in n and not n.startswith(COMPVIS_FROZEN_PREFIXES)
        }
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


def partial_schedule(scheduler, steps: int, k: int, loop: Loop) -> tuple[torch.Tensor, int, int]:
    """For the drawn DDIM index ``k`` in [0, S): the DDIM timesteps that turn noise into x_t, and the range [lo, hi)
    its training timestep is drawn from (``scheduler`` set to S = ``steps`` timesteps).

    compvis (train-esd.py with the release's DDIMSampler): the sampler drops the highest of the S timesteps
    (``t_start=-1``), starting from noise at the next one, and stops after the step whose index counted from the end
    is k - 1 (k = 0: it never stops), so x_t has had S - 1 - max(k - 1, 0) steps; the timestep is drawn uniformly in
    [round(k/S·T), round((k+1)/S·T)) of the T training steps. diffusers (esd_sd.py): the first k steps, and the
    timestep is the scheduler's k-th."""
    timesteps = scheduler.timesteps
    if loop == "compvis":
        train_steps = scheduler.config.num_train_timesteps
        run = timesteps[1:][: steps - 1 - max(k - 1, 0)]
        return run, round(k / steps * train_steps), round((k + 1) / steps * train_steps)
    t = int(timesteps[k])
    return timesteps[:k], t, t + 1


@torch.no_grad()
def denoise(unet, scheduler, latents: torch.Tensor, run: torch.Tensor, cond: torch.Tensor,
            guidance: float) -> torch.Tensor:  # fmt: skip
    """DDIM over the timesteps ``run`` with classifier-free guidance; ``cond`` is [empty prompts; prompts]."""
    for t in run:
        model_in = scheduler.scale_model_input(torch.cat([latents] * 2), t)
        uncond, text = unet(model_in, t, encoder_hidden_states=cond).sample.chunk(2)
        latents = scheduler.step(uncond + guidance * (text - uncond), t, latents).prev_sample
    return latents


def _batch(embedding: torch.Tensor, n: int) -> torch.Tensor:
    return embedding.expand(n, -1, -1)


class ESDTrainer:
    """The ESD objective and its training loop on a diffusers Stable Diffusion pipeline."""

    def __init__(self, pipe, config: ESDConfig, device: str, height: int, width: int) -> None:
        self.pipe = pipe
        factor = pipe.vae_scale_factor
        self.latent_shape = (config.train_batch_size, pipe.unet.config.in_channels, height // factor, width // factor)
        self.config = config
        self.device = device
        self.unet = pipe.unet
        self.frozen = copy.deepcopy(pipe.unet).requires_grad_(False).eval()
        # DDIM, as the authors' release samples x_t, whatever the pipeline's own scheduler: a multistep scheduler
        # (SD-1.4 ships PNDM) would carry its history from one partial sample into the next.
        from diffusers import DDIMScheduler

        self.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        self.scheduler.set_timesteps(config.sample_steps, device=device)
        self.params = select_parameters(self.unet, config.train_method, config.loop)
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

    def _draw(self, high: int, low: int = 0) -> int:
        return int(torch.randint(low, high, (1,), generator=self.generator))

    def schedule(self, k: int) -> tuple[torch.Tensor, int, int]:
        """:func:`partial_schedule` for this trainer's sampler and loop."""
        return partial_schedule(self.scheduler, self.config.sample_steps, k, self.config.loop)

    @torch.no_grad()
    def sample_xt(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Partially denoise fresh noise with DDIM (η 0, guidance ``sample_guidance``, conditioned on the concept),
        stopping at a random step (:meth:`schedule`). The CompVis release samples with the model being trained, the
        diffusers release with the frozen original."""
        k = self._draw(self.config.sample_steps)
        run, low, high = self.schedule(k)
        latents = torch.randn(self.latent_shape, generator=self.generator).to(self.device)
        latents = latents * self.scheduler.init_noise_sigma
        cond = torch.cat([_batch(self.emb_null, x_t_batch := len(latents)), _batch(self.emb_from, x_t_batch)])
        sampler = self.unet if self.config.loop == "compvis" else self.frozen
        latents = denoise(sampler, self.scheduler, latents, run, cond, self.config.sample_guidance)
        t = self._draw(high, low) if self.config.loop == "compvis" else low
        return latents, torch.tensor(t, device=self.device)

    def target(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """ε*(x_t, c) − (η+1)·[ε*(x_t, c) − ε*(x_t, ∅)] = ε*(x_t, ∅) − η·[ε*(x_t, c) − ε*(x_t, ∅)] from the frozen
        copy, written as both releases write it (their negative guidance is η + 1 with this base term); with
        erase_from the base term is ε*(x_t, c_from), as in esd_sd.py."""
        with torch.no_grad():
            n = len(x_t)
            e_null = self.frozen(x_t, t, encoder_hidden_states=_batch(self.emb_null, n)).sample
            e_concept = self.frozen(x_t, t, encoder_hidden_states=_batch(self.emb_concept, n)).sample
            e_base = (
                self.frozen(x_t, t, encoder_hidden_states=_batch(self.emb_from, n)).sample
                if self.config.erase_from
                else e_concept
            )
        return e_base - (self.config.negative_guidance + 1) * (e_concept - e_null)

    def loss(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        prediction = self.unet(x_t, t, encoder_hidden_states=_batch(self.emb_from, len(x_t))).sample
        return torch.nn.functional.mse_loss(prediction, self.target(x_t, t))

    def train(self, checkpoint: TrainingCheckpoint | None = None) -> list[float]:
        cfg = self.config
        loop = TrainingLoop(
            "ESD", cfg.train_steps, torch.optim.Adam(self.params.values(), lr=cfg.learning_rate), self.params,
            f"learning_rate={cfg.learning_rate}, negative_guidance={cfg.negative_guidance}", checkpoint=checkpoint,
            generators={"train": self.generator},
        )  # fmt: skip
        self.unet.train()
        losses = loop.run(lambda: self.loss(*self.sample_xt()))
        self.unet.eval().requires_grad_(False)
        return losses

    def trained_state(self) -> Weights:
        return {f"unet.{name}": p.detach().to("cpu", torch.float32).contiguous() for name, p in self.params.items()}


class ESD(Technique):
    name = "esd"
    config_cls = ESDConfig
    config: ESDConfig
    algorithm_version = 5  # 5: the two releases' loops (4: partial samples always with DDIM)
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
