"""``cogfd``: Concept-combination erasing by concept Graph-based Feature Decoupling — Nie, Yao, Liu, Wang, Bian,
"Erasing Concept Combination from Text-to-Image Diffusion Model", ICLR 2025.

Following the authors' release (github.com/Sirius11311/CoGFD-ICLR25, ``concept_combination_erasing.py`` as run by
``run.sh``): a concept logic graph (:mod:`eval_learn.techniques.concept_graph`) yields the *combination* prompts
(erased) and the *component* prompts (kept). Each step takes a batch of those prompts, each paired with a latent of
an image the base model drew of the combination, noised at a timestep in [990, 1000); the UNet being trained and a
frozen copy both predict the noise, and with d_e and d_p the MSE between the two predictions over the combination
rows and over the component rows,

    L = 0.1 · exp(−d_e) + exp(d_p)

so the combination's prediction is pushed away from the original one (bounded: exp(−d_e) saturates) while the
components' stays with it: the high-level features of the combination are decoupled from those of its parts. Only
cross-attention is trained, without its value projection (``attn2`` parameters but ``to_v``); AdamW (weight decay
0.01), gradient norm clipped to 1, lr 2.5e-5, 130 steps. During training both UNets' cross-attention adds the prompt's
token attention mask (1 for tokens, 0 for padding) to the attention scores and the text encoder sees the same mask,
as the release's attention processor does; images are sampled afterwards with the ordinary attention.

At the start the two UNets agree, so the first gradient is zero and the first step moves the weights by AdamW's weight
decay alone; the erase term then grows from there. The trained tensors are cached by the base class (keyed also by
the graph's content); a killed run resumes from its last saved step.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

from eval_learn.configs import require
from eval_learn.storage import digest_of
from eval_learn.techniques import prompt_images
from eval_learn.techniques.base import Technique, WeightsConfig
from eval_learn.techniques.checkpoint import TrainingCheckpoint
from eval_learn.techniques.concept_graph import ConceptGraph, load_graph
from eval_learn.techniques.training import TrainingLoop
from eval_learn.techniques.weights import Weights

log = logging.getLogger(__name__)

TrainMethod = Literal["xattn", "full"]
TRAINING_KEYS = ("erase_concept", "graph", "image_prompt", "images", "image_steps", "image_guidance_scale",
                 "train_method", "erase_weight", "preserve_weight", "timestep_start", "timestep_end",
                 "learning_rate", "weight_decay", "max_grad_norm", "train_steps", "train_batch_size",
                 "train_seed")  # fmt: skip


@dataclass
class CoGFDConfig(WeightsConfig):
    erase_concept: str = "nudity"  # what metrics measure
    graph: str = "nudity"  # a built-in concept logic graph or a JSON file in the release's schema
    image_prompt: str | None = None  # the training images' prompt; null: "an image of  <combination>" (the release's)
    images: int = 5  # img_prepare.py: one image per seed, 5 seeds
    image_steps: int = 100
    image_guidance_scale: float = 9.0
    train_method: TrainMethod = "xattn"  # xattn: attn2 without to_v (--only_xa); full: every UNet parameter
    erase_weight: float = 0.1  # of exp(−d_e)
    preserve_weight: float = 1.0  # of exp(d_p)
    timestep_start: int = 990  # timesteps drawn in [start, end)
    timestep_end: int = 1000
    learning_rate: float = 2.5e-5
    weight_decay: float = 0.01  # AdamW's
    max_grad_norm: float = 1.0
    train_steps: int = 130
    train_batch_size: int = 20  # the batch is min(this, number of graph prompts)
    train_seed: int = 42

    def erased_concepts(self) -> list[str] | None:
        return [self.erase_concept]

    def concept_graph(self) -> ConceptGraph:
        return load_graph(self.graph)

    def validate(self) -> None:
        super().validate()
        require(bool(self.erase_concept.strip()), "erase_concept must be non-empty")
        require(self.image_prompt is None or bool(self.image_prompt.strip()), "image_prompt must be null or non-empty")
        for key in ("images", "image_steps", "train_batch_size"):
            require(getattr(self, key) > 0, f"{key} must be > 0, got {getattr(self, key)}")
        require(self.train_steps >= 0, f"train_steps must be >= 0, got {self.train_steps}")
        require(0 <= self.timestep_start < self.timestep_end <= 1000,
                f"timesteps must satisfy 0 <= timestep_start < timestep_end <= 1000, got "
                f"[{self.timestep_start}, {self.timestep_end})")  # fmt: skip
        require(math.isfinite(self.learning_rate) and self.learning_rate > 0,
                f"learning_rate must be a finite number > 0, got {self.learning_rate}")  # fmt: skip
        for key in ("erase_weight", "preserve_weight", "weight_decay", "max_grad_norm", "image_guidance_scale"):
            value = getattr(self, key)
            require(math.isfinite(value) and value >= 0, f"{key} must be a finite number >= 0, got {value}")
        require(0 <= self.train_seed < 2**63, "train_seed must be in [0, 2**63)")
        self.concept_graph()  # a missing or malformed graph fails here, before any model loads


def select_parameters(unet: torch.nn.Module, train_method: TrainMethod) -> dict[str, torch.nn.Parameter]:
    """--only_xa: the parameters named ``attn2`` but not ``to_v`` (query, key and output projections)."""
    return {n: p for n, p in unet.named_parameters() if train_method == "full" or ("attn2" in n and "to_v" not in n)}


class MaskHolder:
    """The token mask of the batch the UNets are about to see (shared by all their cross-attention layers)."""

    def __init__(self) -> None:
        self.mask: torch.Tensor | None = None


class MaskedCrossAttention:
    """The release's training-time cross-attention: the token mask (0/1) is *added* to the attention scores."""

    def __init__(self, holder: MaskHolder) -> None:
        self.holder = holder

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, **_: Any) -> torch.Tensor:  # fmt: skip
        batch, length, _ = hidden_states.shape
        attention_mask = attn.prepare_attention_mask(attention_mask, length, batch_size=batch)
        if self.holder.mask is not None and encoder_hidden_states is not None:
            attention_mask = self.holder.mask.unsqueeze(1).repeat(1, length, 1)
            attention_mask = attention_mask.repeat_interleave(attn.heads, dim=0).type_as(hidden_states)
        context = encoder_hidden_states if encoder_hidden_states is not None else hidden_states
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        key, value = attn.head_to_batch_dim(attn.to_k(context)), attn.head_to_batch_dim(attn.to_v(context))
        out = attn.batch_to_head_dim(torch.bmm(attn.get_attention_scores(query, key, attention_mask), value))
        return attn.to_out[1](attn.to_out[0](out))


def install_masked_attention(unet: torch.nn.Module, holder: MaskHolder) -> dict[str, Any]:
    """Put :class:`MaskedCrossAttention` on every ``attn2``; returns the processors to put back."""
    saved = dict(unet.attn_processors)  # type: ignore[attr-defined]
    unet.set_attn_processor({k: MaskedCrossAttention(holder) if ".attn2." in k else v for k, v in saved.items()})  # type: ignore[operator]
    return saved


class CoGFDTrainer:
    """Training images, batches of graph prompts and the decoupling loss on a diffusers pipeline."""

    def __init__(self, pipe: Any, config: CoGFDConfig, device: str, height: int, width: int) -> None:
        from diffusers import DDPMScheduler

        self.pipe, self.config, self.device = pipe, config, device
        self.height, self.width = height, width
        self.graph = config.concept_graph()
        self.prompts = self.graph.combinations + self.graph.components
        self.erase_rows = torch.tensor([True] * len(self.graph.combinations) + [False] * len(self.graph.components))
        self.batch_size = min(len(self.prompts), config.train_batch_size)
        self.unet = pipe.unet
        self.scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        for module in (pipe.unet, pipe.text_encoder, pipe.vae):
            module.requires_grad_(False)
        self.params = select_parameters(self.unet, config.train_method)
        self.generator = torch.Generator("cpu").manual_seed(config.train_seed)
        self.images: prompt_images.PromptImages | None = None
        self.erase_mse: list[float] = []
        self.preserve_mse: list[float] = []
        self._embeddings: tuple[torch.Tensor, torch.Tensor] | None = None

    def image_prompt(self) -> str:
        return self.config.image_prompt or f"an image of  {self.graph.combinations[0]}"

    # --- pieces ----------------------------------------------------------------------------------------------------
    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every graph prompt's text embedding, computed with its token attention mask, and that mask."""
        if self._embeddings is None:
            tok = self.pipe.tokenizer(self.prompts, padding="max_length", truncation=True, return_tensors="pt",
                                      max_length=self.pipe.tokenizer.model_max_length)  # fmt: skip
            ids, mask = tok.input_ids.to(self.device), tok.attention_mask.to(self.device)
            with torch.no_grad():
                self._embeddings = (self.pipe.text_encoder(ids, attention_mask=mask)[0], mask)
        return self._embeddings

    def order(self) -> torch.Tensor:
        """The prompt index of every row of every step: a fresh shuffle each epoch, the last partial batch dropped
        (the release's DataLoader, shuffle and drop_last). Drawn up front from its own generator so that a resumed
        run replays it."""
        n, b = len(self.prompts), self.batch_size
        per_epoch = n // b
        g = torch.Generator("cpu").manual_seed(self.config.train_seed)
        epochs = -(-self.config.train_steps // per_epoch) if self.config.train_steps else 0
        rows = [torch.randperm(n, generator=g)[: per_epoch * b] for _ in range(epochs)]
        return torch.cat(rows).view(-1, b)[: self.config.train_steps] if rows else torch.zeros(0, b, dtype=torch.long)

    def step_loss(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
                  index: torch.Tensor) -> torch.Tensor:  # fmt: skip
        """erase_weight · exp(−d_e) + preserve_weight · exp(d_p) for the prompts ``index`` on latents ``x0``; a
        side with no row in the batch is left out."""
        cfg = self.config
        emb, mask = self.embeddings()
        emb, mask = emb[index.to(emb.device)], mask[index.to(mask.device)]
        x_t = self.scheduler.add_noise(x0, noise, t)
        self.holder.mask = mask
        prediction = self.unet(x_t, t, encoder_hidden_states=emb).sample.float()
        with torch.no_grad():
            target = self.frozen(x_t, t, encoder_hidden_states=emb).sample.float()
        self.holder.mask = None
        erase = self.erase_rows[index.cpu()].to(prediction.device)
        loss = prediction.new_zeros(())
        if bool(erase.any()):
            d_e = F.mse_loss(prediction[erase], target[erase])
            loss = loss + cfg.erase_weight * torch.exp(-d_e)
            self.erase_mse.append(d_e.item())
        if bool((~erase).any()):
            d_p = F.mse_loss(prediction[~erase], target[~erase])
            loss = loss + cfg.preserve_weight * torch.exp(d_p)
            self.preserve_mse.append(d_p.item())
        return loss

    # --- stages ----------------------------------------------------------------------------------------------------
    def render(self) -> None:
        cfg = self.config
        self.images = prompt_images.render(self.pipe, [self.image_prompt()], cfg.images, steps=cfg.image_steps,
                                           guidance_scale=cfg.image_guidance_scale, seed=cfg.train_seed,
                                           height=self.height, width=self.width, desc="CoGFD images")  # fmt: skip

    def prepare(self, checkpoint: TrainingCheckpoint | None) -> None:
        """The training images: from a killed run's saved state, or rendered (and saved for a run killed later)."""
        saved = checkpoint.companion("data") if checkpoint is not None else None
        if saved is not None and (state := saved.load()) is not None:
            self.images = prompt_images.PromptImages.from_state(state["images"], self.device)
            return
        self.render()
        if saved is not None:
            saved.maybe_save(0, lambda: {"images": self.images.state()}, force=True)  # type: ignore[union-attr]

    def begin(self) -> torch.optim.Optimizer:
        """Before the first step: the frozen copy, the masked attention on both UNets, the trained tensors unfrozen;
        returns the release's optimiser over them."""
        cfg = self.config
        self.frozen = copy.deepcopy(self.unet).eval()
        self.holder = MaskHolder()
        self._restore = install_masked_attention(self.unet, self.holder)
        install_masked_attention(self.frozen, self.holder)
        for p in self.params.values():
            p.requires_grad_(True)
        self.unet.train()
        return torch.optim.AdamW(self.params.values(), lr=cfg.learning_rate, betas=(0.9, 0.999),
                                 weight_decay=cfg.weight_decay, eps=1e-8)  # fmt: skip

    def end(self) -> None:
        """After the last step: the ordinary attention back for sampling, everything frozen, the copy dropped."""
        self.unet.set_attn_processor(self._restore)
        self.unet.eval()
        for p in self.params.values():
            p.requires_grad_(False)
        del self.frozen

    def train(self, checkpoint: TrainingCheckpoint | None = None) -> list[float]:
        assert self.images is not None
        cfg, order, images = self.config, self.order(), self.images
        loop = TrainingLoop("CoGFD", cfg.train_steps, self.begin(), self.params,
                            f"learning_rate={cfg.learning_rate}, erase_weight={cfg.erase_weight}",
                            max_grad_norm=cfg.max_grad_norm, checkpoint=checkpoint,
                            generators={"train": self.generator})  # fmt: skip
        done: list[int] = []

        def step_loss() -> torch.Tensor:
            if not done:  # the first step: the loop has just restored a killed run's state, if there was one
                done.append((checkpoint.resumed_from or 0) if checkpoint is not None else 0)
            index = order[done[0]]
            done[0] += 1
            image = index % images.stats.shape[0]
            x0 = images.sample(image, self.generator, self.pipe.vae.config.scaling_factor)
            noise = torch.randn(x0.shape, generator=self.generator).to(self.device)
            t = torch.randint(cfg.timestep_start, cfg.timestep_end, (len(index),), generator=self.generator)
            return self.step_loss(x0, noise, t.to(self.device), index)

        try:
            return loop.run(step_loss)
        finally:
            self.end()

    def trained_state(self) -> Weights:
        return {f"unet.{n}": p.detach().to("cpu", torch.float32).contiguous() for n, p in self.params.items()}


class CoGFD(Technique):
    name = "cogfd"
    config_cls = CoGFDConfig
    config: CoGFDConfig
    weight_fields = TRAINING_KEYS

    def weights_key(self) -> str:
        """The graph's content is part of the key: a graph file edited in place trains again."""
        return digest_of({"config": super().weights_key(), "graph": self.config.concept_graph().sha256}, length=24)

    def prepare(self) -> None:
        graph = self.config.concept_graph()
        self.info.update(graph_source=graph.source, graph_sha256=graph.sha256)  # recorded also on a cache hit
        super().prepare()

    def build_weights(self, pipe: Any) -> Weights:
        cfg, model = self.config, self.context.model
        trainer = CoGFDTrainer(pipe, cfg, self.device, model.height, model.width)
        graph = trainer.graph
        log.info("CoGFD: graph %s (sha256 %s): %d combination prompts erased, %d component prompts kept; %d steps",
                 graph.source, graph.sha256[:12], len(graph.combinations), len(graph.components),
                 cfg.train_steps)  # fmt: skip
        trainer.prepare(self.checkpoint)
        losses = trainer.train(self.checkpoint)
        self.info.update(combination_prompts=graph.combinations,
                         component_prompts=graph.components, trained_tensors=len(trainer.params), losses=losses,
                         erase_mse=trainer.erase_mse, preserve_mse=trainer.preserve_mse,
                         first_loss=losses[0] if losses else None, last_loss=losses[-1] if losses else None)  # fmt: skip
        return trainer.trained_state()

    def failure_hint(self) -> str:
        return f" (learning_rate={self.config.learning_rate}, erase_weight={self.config.erase_weight})"
