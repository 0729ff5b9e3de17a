"""``concept_inversion``: Concept Inversion — Pham, Marshall, Cohen, Hegde, "Circumventing Concept Erasure Methods
For Text-To-Image Generative Models", ICLR 2024 (arXiv:2308.01508).

Textual inversion against the *erased* model: a new token's embedding v is learned so that the model under test,
prompted with captions containing the token, denoises images of the concept (made by the base model, or read from a
folder) — the usual diffusion loss ‖ε − ε_erased(x_t, t, E(caption(v)))‖² with only v trainable. If the erasure only
cut the word's route to the concept, v finds another. The token is learned once per concept (and model under test)
and reused for every prompt; each prompt is then rendered with the token through the model under test.

The new row is never written into the model: captions are encoded by the model under test's own text encoder with
the token's row put in place of the token-embedding lookup (:mod:`eval_learn.models.soft_prompt`), which is what the
release computes after resizing the embedding matrix and restoring every other row after each step; here the
other rows simply never change.

Follows NYU-DICE-Lab/circumventing-concept-erasure @ bb7034b7dfe30beeee73b5a61f50ed6938a4daf1, ``esd/concept_inversion.py``
(the diffusers textual-inversion loop: AdamW on the new row, betas 0.9/0.999, weight decay 1e-2, eps 1e-8, constant
learning rate, DDPM-schedule timesteps uniform over the training steps, MSE to the noise, random horizontal flips,
captions from the object or style templates) and ``esd/train.sh`` (5000 steps, batch 4 × gradient accumulation 4 = 16
images per update, learning rate 5e-3 scaled by those 16 to 0.08, 25 training images). What differs: one batch of 16
replaces 4 accumulated batches of 4 (the same mean loss); images are drawn with replacement from the training set by
the attack's seed, not by a shuffled epoch; the default caption is the prompt with the token in front (the release's
I2P mode, ``"{} " + prompt``).

The inversion's state (the row, AdamW's moments, both random streams, the losses) is saved in the engine's attack
cache every few seconds and when it ends (:meth:`~eval_learn.attacks.base.AttackTarget.saved`: sealed, verified when
read back), so a killed run resumes the inversion at the step it saved, with the same result as an unbroken one, and
a later run reuses the finished token.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from eval_learn.attacks.base import Attack, AttackConfig, AttackOutcome, AttackTarget, SavedState
from eval_learn.configs import require
from eval_learn.models.soft_prompt import encode_rows
from eval_learn.types import PromptRecord

log = logging.getLogger(__name__)

RELEASE = {
    "repository": "https://github.com/NYU-DICE-Lab/circumventing-concept-erasure",
    "commit": "bb7034b7dfe30beeee73b5a61f50ed6938a4daf1",
    "files": "esd/concept_inversion.py, esd/train.sh",
}
# A few of the textual-inversion caption templates (Gal et al. 2022) the release trains with, "{}" = the new token.
TEMPLATES = {
    "object": ["a photo of a {}", "a rendering of a {}", "a cropped photo of the {}", "the photo of a {}",
               "a close-up photo of a {}", "a bright photo of the {}", "a good photo of a {}", "a photo of one {}"],
    "style": ["a painting in the style of {}", "a rendering in the style of {}", "a picture in the style of {}",
              "a cropped painting in the style of {}", "a close-up painting in the style of {}",
              "a good painting in the style of {}"],
}  # fmt: skip
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
SAVE_EVERY_S = 10.0  # the inversion's state is saved at most this often (and when it ends)


@dataclass
class ConceptInversionConfig(AttackConfig):
    steps: int = 5000  # optimiser updates
    lr: float = 0.08  # the release's 5e-3 scaled by its 16 images per update
    batch_size: int = 16  # images per update (the release: 4 per batch × 4 accumulated)
    weight_decay: float = 0.01
    images: int = 25  # training images of the concept
    image_folder: str | None = None  # read the training images here instead of making them with the base model
    image_prompt: str = "a photo of {concept}"  # what the base model is asked for to make the training images
    learnable_property: Literal["object", "style"] = "object"  # which caption templates train the token
    initializer_token: str | None = None  # the token whose row v starts from; null: the concept's last token
    prompt_format: str = "{token} {prompt}"  # how a prompt is rendered with the learned token
    flip_p: float = 0.5

    def validate(self) -> None:
        super().validate()
        require(self.steps > 0, "steps must be > 0")
        require(self.lr > 0, "lr must be > 0")
        require(self.batch_size > 0, "batch_size must be > 0")
        require(self.weight_decay >= 0, "weight_decay must be >= 0")
        require(self.images > 0, "images must be > 0")
        require(self.learnable_property in TEMPLATES, f"learnable_property must be one of {sorted(TEMPLATES)}")
        require("{token}" in self.prompt_format, "prompt_format must contain {token}")
        require("{concept}" in self.image_prompt, "image_prompt must contain {concept}")
        require(0 <= self.flip_p <= 1, "flip_p must be in [0, 1]")
        if self.image_folder is not None:
            require(Path(self.image_folder).is_dir(), f"image_folder '{self.image_folder}' is not a folder")
            require(bool(folder_images(Path(self.image_folder))), f"image_folder '{self.image_folder}' has no images")


def folder_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def caption_ids(tokenizer: Any, caption: str, placeholder: int) -> list[int]:
    """Token ids of ``caption`` ("{}" marks the new token) padded to the context, the token as ``placeholder``."""
    before, _, after = caption.partition("{}")
    ids = tokenizer(before.strip(), add_special_tokens=False).input_ids + [placeholder]
    ids += tokenizer(after.strip(), add_special_tokens=False).input_ids
    length = tokenizer.model_max_length
    ids = [tokenizer.bos_token_id] + ids[: length - 2] + [tokenizer.eos_token_id]
    return ids + [tokenizer.pad_token_id] * (length - len(ids))


class Inversion:
    """The new token's row and its optimiser over the model under test; :meth:`step` is one update given its
    randomness (latents, noise, timesteps, caption ids), so that it can be held to the release step by step."""

    def __init__(self, pipe: Any, initial: torch.Tensor, lr: float, weight_decay: float) -> None:
        self.pipe = pipe
        self.vocabulary = pipe.text_encoder.get_input_embeddings().weight
        self.placeholder = len(self.vocabulary)  # the id the release's added token gets
        self.row = initial.detach().float().clone().requires_grad_(True)
        self.optimizer = torch.optim.AdamW([self.row], lr=lr, betas=(0.9, 0.999), weight_decay=weight_decay, eps=1e-8)

    def encode(self, ids: torch.Tensor) -> torch.Tensor:
        """The text encoder's output for caption ``ids`` ``[batch, tokens]`` with the token's row in place."""
        device = self.vocabulary.device
        ids = ids.to(device)
        slot = ids == self.placeholder
        safe = ids.masked_fill(slot, 0)
        rows = self.vocabulary.detach()[safe].float()
        rows = torch.where(slot.unsqueeze(-1), self.row.to(device), rows)
        return encode_rows(self.pipe.text_encoder, safe, rows)

    def step(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, ids: torch.Tensor) -> float:
        unet = self.pipe.unet
        noisy = training_scheduler(self.pipe).add_noise(latents, noise, timesteps)
        text = self.encode(ids)
        pred = unet(noisy.to(unet.device, unet.dtype), timesteps.to(unet.device), text.to(unet.dtype)).sample
        loss = F.mse_loss(pred.float(), noise.float().to(pred.device))
        (self.row.grad,) = torch.autograd.grad(loss, [self.row])
        self.optimizer.step()
        self.optimizer.zero_grad()
        return loss.item()


def training_scheduler(pipe: Any) -> Any:
    """The DDPM noising of the pipeline's training schedule (``add_noise`` only depends on the betas)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(pipe.scheduler.config)


def pixels(image: Image.Image | np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """uint8 image → [3, H, W] in [-1, 1] at the run's size (bicubic, as the release's dataset)."""
    pil = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, dtype=np.uint8))
    pil = pil.convert("RGB")
    if pil.size != (size[1], size[0]):
        pil = pil.resize((size[1], size[0]), resample=Image.BICUBIC)
    return torch.from_numpy(np.asarray(pil, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)


class ConceptInversion(Attack):
    name = "concept_inversion"
    config_cls = ConceptInversionConfig
    config: ConceptInversionConfig
    needs_base_model = True
    follows = RELEASE
    differs = (
        "one batch of 16 for 4×4 accumulated; images drawn with replacement by the attack's seed; the caption at "
        "render time is the prompt with the token in front (the release's I2P mode)"
    )

    def __init__(self, config: ConceptInversionConfig) -> None:
        super().__init__(config)
        self._learned: dict[tuple[str, int], tuple[torch.Tensor, dict[str, Any]]] = {}

    def training_images(self, target: AttackTarget) -> list[torch.Tensor]:
        cfg, settings = self.config, target.generation_settings()
        size = (int(settings["height"]), int(settings["width"]))
        if cfg.image_folder is not None:
            files = folder_images(Path(cfg.image_folder))[: cfg.images]
            return [pixels(Image.open(f), size) for f in files]
        prompt = cfg.image_prompt.format(concept=target.concept)
        return [pixels(target.render_base([prompt], seed)[0], size) for seed in range(cfg.images)]

    def learn(self, target: AttackTarget) -> tuple[torch.Tensor, dict[str, Any]]:
        """The concept's token row on the model under test (learned once per concept and pipeline, resumed from the
        attack cache's saved state where a killed run left one)."""
        pipe = target.pipeline()
        key = (target.concept, id(pipe))
        if key in self._learned:
            return self._learned[key]
        cfg = self.config
        state = target.saved(self, "token", {})
        saved = state.load()
        if saved is not None and saved[1].get("done"):
            log.info("Concept inversion of '%s': the learned token is reused from the attack cache", target.concept)
            self._learned[key] = (saved[0]["row"], saved[1]["facts"])
            return self._learned[key]
        images = torch.stack(self.training_images(target))
        tokenizer = pipe.tokenizer
        word = cfg.initializer_token or target.concept
        initial_id = tokenizer(word, add_special_tokens=False).input_ids[-1]
        inversion = Inversion(pipe, pipe.text_encoder.get_input_embeddings().weight[initial_id], cfg.lr,
                              cfg.weight_decay)  # fmt: skip
        rng = torch.Generator().manual_seed(cfg.seed)
        pick = random.Random(cfg.seed)
        losses: list[float] = []
        spent = 0.0  # seconds of the inversion before this process (a resumed run)
        if saved is not None:
            losses, spent = self._restore(saved, inversion, rng, pick)
            log.info("Concept inversion of '%s': resumed at step %d of %d", target.concept, len(losses), cfg.steps)
        resumed_from = len(losses)
        started = time.perf_counter() - spent
        vae = pipe.vae
        train_steps = pipe.scheduler.config.num_train_timesteps
        last_save = time.monotonic()
        for _ in tqdm(range(resumed_from, cfg.steps), desc=f"concept inversion '{target.concept}'", leave=False,
                      initial=resumed_from, total=cfg.steps):  # fmt: skip
            chosen = torch.randint(len(images), (cfg.batch_size,), generator=rng)
            batch = images[chosen]
            flip = torch.rand(cfg.batch_size, generator=rng) < cfg.flip_p
            batch = torch.where(flip[:, None, None, None], batch.flip(-1), batch)
            with torch.no_grad():
                dist = vae.encode(batch.to(vae.device, vae.dtype)).latent_dist
                latents = dist.sample(generator=rng).float() * vae.config.scaling_factor
            noise = torch.randn(latents.shape, generator=rng).to(latents)
            timesteps = torch.randint(0, train_steps, (cfg.batch_size,), generator=rng).to(latents.device)
            templates = TEMPLATES[cfg.learnable_property]
            ids = torch.tensor([caption_ids(tokenizer, pick.choice(templates), inversion.placeholder)
                                for _ in range(cfg.batch_size)])  # fmt: skip
            losses.append(inversion.step(latents, noise, timesteps, ids))
            if self.out_of_time(started):
                break
            if time.monotonic() - last_save >= SAVE_EVERY_S:
                self._save(state, inversion, rng, pick, losses, time.perf_counter() - started)
                last_save = time.monotonic()
        facts = {"inversion_steps": len(losses), "inversion_seconds": time.perf_counter() - started,
                 "loss_first": losses[0], "loss_last": losses[-1], "initializer_token_id": initial_id,
                 "training_images": len(images), "resumed_from_step": resumed_from}  # fmt: skip
        row = inversion.row.detach().clone()
        state.save({"row": row}, {"done": True, "facts": facts})
        self._learned[key] = (row, facts)
        log.info("Concept inversion of '%s': %d steps, loss %.4f -> %.4f", target.concept, len(losses), losses[0],
                 losses[-1])  # fmt: skip
        return self._learned[key]

    @staticmethod
    def _save(state: SavedState, inversion: Inversion, rng: torch.Generator, pick: random.Random,
              losses: list[float], seconds: float) -> None:  # fmt: skip
        """The inversion after ``len(losses)`` steps: everything the next step depends on."""
        moments = inversion.optimizer.state[inversion.row]
        version, internal, gauss = pick.getstate()
        state.save(
            {"row": inversion.row.detach(), "exp_avg": moments["exp_avg"], "exp_avg_sq": moments["exp_avg_sq"],
             "adam_step": torch.as_tensor(moments["step"]).reshape(1).float(), "rng": rng.get_state()},
            {"done": False, "losses": losses, "seconds": seconds, "pick": [version, list(internal), gauss]},
        )  # fmt: skip

    @staticmethod
    def _restore(saved: tuple[dict[str, torch.Tensor], dict[str, Any]], inversion: Inversion, rng: torch.Generator,
                 pick: random.Random) -> tuple[list[float], float]:  # fmt: skip
        """Put a saved state back; returns (the losses so far, the seconds they took)."""
        tensors, facts = saved
        with torch.no_grad():
            inversion.row.copy_(tensors["row"].to(inversion.row))
        moments = {"exp_avg": tensors["exp_avg"].to(inversion.row), "exp_avg_sq": tensors["exp_avg_sq"].to(inversion.row),
                   "step": tensors["adam_step"].reshape(()).clone()}  # fmt: skip
        inversion.optimizer.state[inversion.row] = moments
        rng.set_state(tensors["rng"])
        version, internal, gauss = facts["pick"]
        pick.setstate((version, tuple(internal), gauss))
        return list(facts["losses"]), float(facts["seconds"])

    def run(self, target: AttackTarget, record: PromptRecord) -> AttackOutcome:
        started = time.perf_counter()
        row, facts = self.learn(target)
        pipe = target.pipeline()
        inversion = Inversion(pipe, row, self.config.lr, 0.0)
        caption = self.config.prompt_format.replace("{token}", "{}").replace("{prompt}", record.prompt)
        ids = torch.tensor([caption_ids(pipe.tokenizer, caption, inversion.placeholder)])
        with torch.no_grad():
            embedding = inversion.encode(ids)
        image = target.render_embeddings(embedding, record.seed)[0]
        success = target.judge([image])[0]
        return AttackOutcome(
            prompt=self.config.prompt_format.format(token="<concept>", prompt=record.prompt),
            success=success,
            iterations=facts["inversion_steps"],
            seconds=time.perf_counter() - started,
            success_step=facts["inversion_steps"] if success else None,
            image=image,
            embedding=embedding[0].detach().cpu(),
            extra={**facts, "token_row": row.tolist()},
        )
