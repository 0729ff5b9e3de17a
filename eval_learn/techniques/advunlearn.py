"""``advunlearn``: AdvUnlearn — Zhang, Chen, Jia, Zhang, Fan, Liu, Hong, Ding, Liu, "Defensive Unlearning with Adversarial
Training for Robust Concept Erasure in Diffusion Models", NeurIPS 2024 (arXiv:2405.15234).

ESD's erasure made robust by adversarial training (a bi-level problem). Inner step (:mod:`.advunlearn_attack`): a
soft prompt of ``attack_tokens`` free word embeddings in the concept's prompt, optimised for ``attack_steps`` steps
so that the model being unlearned predicts, for it, the noise the original predicts for the concept. Outer step:
ESD's loss on that adversarial prompt,

    ‖ε_θ(x_t, c_adv, t) − [ε*(x_t, t) − η·(ε*(x_t, c, t) − ε*(x_t, t))]‖²,

plus ``retain_loss_weight`` times the utility-retention loss ‖ε_θ(x_t', c_r, t) − ε*(x_t', c_r, t)‖² on a batch of
retain prompts c_r (x_t' their own partial samples). The first ``warmup_steps`` steps train on the plain concept
prompt. The trained module is the text encoder by default (``text_encoder_full``: the paper's finding that it gives
the best robustness/utility balance and plugs into other diffusion models); the release's other module choices
(text-encoder layer subsets, UNet parameter sets) are selectable by ``train_method``.

Follows OPTML-Group/AdvUnlearn ``train-scripts/AdvUnlearn.py`` (commit 9d23124) with the command its README gives for
nudity (conf/technique/advunlearn.yaml says what differs). x_t comes from the same partial DDIM sampling as ESD's
CompVis loop (:func:`eval_learn.techniques.esd.partial_schedule`), conditioned on the concept with guidance
``sample_guidance``. Weights are cached, resumed after a kill (the adversarial embedding and step count are part of
the saved state), and ``load_path`` reads the authors' released text encoders (``read_weights``).
"""

from __future__ import annotations

import copy
import csv
import logging
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

from eval_learn.configs import require
from eval_learn.errors import ConfigError
from eval_learn.techniques import weights as weight_files
from eval_learn.techniques.advunlearn_attack import (
    AttackMethod,
    Insertion,
    SoftPromptAttack,
    adversarial_prompt,
    attack_loss,
    encode_rows,
)
from eval_learn.techniques.base import Technique, WeightsConfig
from eval_learn.techniques.checkpoint import TrainingCheckpoint
from eval_learn.techniques.esd import denoise, partial_schedule, select_parameters
from eval_learn.techniques.training import TrainingLoop
from eval_learn.techniques.weights import Weights

log = logging.getLogger(__name__)

# The release's text-encoder layer sets (its --train_method choices). Its rule is name.startswith("encoder.layers.i"),
# so on SD's 12-layer encoder "layer 1" also selects layers 10 and 11: kept, as the released encoders were trained so.
TEXT_ENCODER_LAYERS: dict[str, tuple[int, ...] | None] = {
    "text_encoder_full": None,
    **{f"text_encoder_layer{''.join(str(i) for i in range(n))}": tuple(range(n)) for n in range(1, 13)},
    "text_encoder_layer0_11": (0, 11),
    "text_encoder_layer01_1011": (0, 1, 10, 11),
    "text_encoder_layer012_91011": (0, 1, 2, 9, 10, 11),
}
UNET_METHODS = ("noxattn", "selfattn", "xattn", "full")  # the release's CompVis name rules, as ESD's compvis loop
RETAIN_SETS = ("coco_object", "coco_object_no_filter", "imagenet243", "imagenet243_no_filter")
TRAINING_KEYS = (
    "erase_concept", "separator", "train_method", "component", "norm_layer", "train_steps", "learning_rate",
    "negative_guidance", "sample_steps", "sample_guidance", "retain_set", "retain_prompts", "retain_batch",
    "retain_loss_weight", "attack_method", "attack_type", "attack_tokens", "attack_init", "attack_steps", "attack_lr",
    "attack_every", "warmup_steps", "train_seed",
)  # fmt: skip


@dataclass
class AdvUnlearnConfig(WeightsConfig):
    erase_concept: str = "nudity"
    separator: str | None = None  # erase several concepts, one drawn at each prompt update
    train_method: str = "text_encoder_full"
    component: Literal["all", "ffn", "attn"] = "all"  # which parts of the selected text-encoder layers train
    norm_layer: bool = False  # also train the final layer norm (text_encoder_full with component all always does)
    train_steps: int = 1000
    learning_rate: float = 1e-5
    negative_guidance: float = 1.0
    sample_steps: int = 50
    sample_guidance: float = 3.0
    retain_set: str = "coco_object"  # a shipped set of the release, or a CSV file with a 'prompt' column
    retain_prompts: list[str] | None = None  # given prompts instead of retain_set
    retain_batch: int = 5
    retain_loss_weight: float = 0.3
    attack_method: AttackMethod = "pgd"
    attack_type: Insertion = "prefix_k"
    attack_tokens: int = 1
    attack_init: Literal["random", "latest"] = "random"
    attack_steps: int = 30
    attack_lr: float = 1e-3
    attack_every: int = 1  # a new adversarial prompt every this many steps
    warmup_steps: int = 200
    train_seed: int = 0

    def concepts(self) -> list[str]:
        words = self.erase_concept.split(self.separator) if self.separator else [self.erase_concept]
        return [w.strip() for w in words]

    def erased_concepts(self) -> list[str] | None:
        return self.concepts()

    def validate(self) -> None:
        super().validate()
        require(bool(self.erase_concept.strip()) and all(self.concepts()), "erase_concept must be non-empty")
        known = (*TEXT_ENCODER_LAYERS, *UNET_METHODS)
        require(self.train_method in known, f"train_method '{self.train_method}' is not one of {', '.join(known)}")
        for key in ("train_steps", "warmup_steps"):
            require(getattr(self, key) >= 0, f"{key} must be >= 0")
        for key in ("sample_steps", "retain_batch", "attack_tokens", "attack_steps", "attack_every"):
            require(getattr(self, key) > 0, f"{key} must be > 0")
        for key in ("learning_rate", "attack_lr"):
            value = getattr(self, key)
            require(math.isfinite(value) and value > 0, f"{key} must be a finite number > 0")
        for key in ("negative_guidance", "sample_guidance", "retain_loss_weight"):
            value = getattr(self, key)
            require(math.isfinite(value) and value >= 0, f"{key} must be a finite number >= 0")
        require(0 <= self.train_seed < 2**63, "train_seed must be in [0, 2**63)")
        for word in self.concepts():
            n = len(word.split())
            k = n if self.attack_type == "add" else self.attack_tokens
            require(n + k <= 75, f"the prompt '{word}' ({n} words) and {k} adversarial tokens exceed 75 tokens")
        if self.retain_prompts is not None:
            require(bool(self.retain_prompts) and all(p.strip() for p in self.retain_prompts),
                    "retain_prompts must be null or a non-empty list of prompts")  # fmt: skip
        elif self.retain_set not in RETAIN_SETS:
            path = Path(self.retain_set)
            require(path.suffix == ".csv" and path.is_file(),
                    f"retain_set '{self.retain_set}' is neither one of {', '.join(RETAIN_SETS)} (shipped) nor a "
                    f"CSV file with a 'prompt' column")  # fmt: skip


def load_retain_prompts(cfg: AdvUnlearnConfig) -> list[str]:
    """The retain prompts: given ones, a shipped set of the release (eval_learn/data/prompts/advunlearn_*.csv), or a
    CSV file's 'prompt' column."""
    if cfg.retain_prompts is not None:
        return list(cfg.retain_prompts)
    if cfg.retain_set in RETAIN_SETS:
        text = resources.files("eval_learn.data").joinpath(f"prompts/advunlearn_{cfg.retain_set}.csv").read_text()
    else:
        text = Path(cfg.retain_set).read_text(encoding="utf-8")
    rows = list(csv.DictReader(text.splitlines()))
    prompts = [r["prompt"].strip() for r in rows if r.get("prompt") and r["prompt"].strip()]
    if not prompts:
        raise ConfigError(f"retain_set '{cfg.retain_set}' has no 'prompt' column or no prompts")
    return prompts


def text_encoder_parameters(text_encoder: torch.nn.Module, method: str, component: str,
                            norm_layer: bool) -> dict[str, torch.nn.Parameter]:  # fmt: skip
    """The release's ``param_choices`` for the text encoder: encoder layers (all, or those whose name starts with
    ``encoder.layers.i`` for the method's i) filtered by component (ffn: ``mlp``, attn: ``self_attn``), and the final
    layer norm (text_encoder_full with component all, or norm_layer); never the embeddings."""
    layers = TEXT_ENCODER_LAYERS[method]
    prefixes = ("encoder.",) if layers is None else tuple(f"encoder.layers.{i}" for i in layers)
    chosen: dict[str, torch.nn.Parameter] = {}
    for full_name, param in text_encoder.named_parameters():
        name = full_name.removeprefix("text_model.")  # transformers < 5 nests the model under text_model
        if name.startswith("final_layer_norm"):
            keep = norm_layer or (layers is None and component == "all")
        elif name.startswith(prefixes):
            keep = component == "all" or (component == "ffn" and "mlp" in name) or (
                component == "attn" and "self_attn" in name)  # fmt: skip
        else:
            keep = False
        if keep:
            chosen[full_name] = param
    return chosen


class RetainSampler:
    """Batches of retain prompts drawn without replacement, starting over when fewer than a batch are unseen (the
    release's PromptDataset). Each pass is a permutation seeded by the pass number, so the batch of any step is known
    from the step alone and a resumed training draws the same ones."""

    def __init__(self, prompts: list[str], batch: int, seed: int) -> None:
        self.prompts, self.batch, self.seed = prompts, min(batch, len(prompts)), seed
        self.per_pass = len(prompts) // self.batch

    def at(self, step: int) -> list[str]:
        epoch, j = divmod(step, self.per_pass)
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) % 2**63)
        order = torch.randperm(len(self.prompts), generator=g)[j * self.batch : (j + 1) * self.batch]
        return [self.prompts[int(i)] for i in order]


class AdvUnlearnTrainer:
    """AdvUnlearn's bi-level training on a diffusers Stable Diffusion pipeline."""

    def __init__(self, pipe, config: AdvUnlearnConfig, device: str, height: int, width: int) -> None:
        from diffusers import DDIMScheduler

        self.pipe, self.config, self.device = pipe, config, device
        self.unet, self.text_encoder, self.tokenizer = pipe.unet, pipe.text_encoder, pipe.tokenizer
        factor = pipe.vae_scale_factor
        self.latent_hw = (pipe.unet.config.in_channels, height // factor, width // factor)
        self.on_text_encoder = config.train_method in TEXT_ENCODER_LAYERS
        # The originals: the frozen copy of the trained module; the other module is never changed.
        self.frozen_unet = self.unet if self.on_text_encoder else copy.deepcopy(self.unet)
        self.frozen_text = copy.deepcopy(self.text_encoder) if self.on_text_encoder else self.text_encoder
        for module in (self.unet, self.text_encoder, self.frozen_unet, self.frozen_text):
            module.requires_grad_(False).eval()
        if self.on_text_encoder:
            self.params = {f"text_encoder.{n}": p for n, p in text_encoder_parameters(
                self.text_encoder, config.train_method, config.component, config.norm_layer).items()}  # fmt: skip
        else:
            self.params = {f"unet.{n}": p for n, p in select_parameters(self.unet, config.train_method,
                                                                        "compvis").items()}  # fmt: skip
        self.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        self.scheduler.set_timesteps(config.sample_steps, device=device)
        self.generator = torch.Generator("cpu").manual_seed(config.train_seed)
        self.retain = RetainSampler(load_retain_prompts(config), config.retain_batch, config.train_seed)
        self.vocabulary = self.text_encoder.get_input_embeddings().weight.detach().clone()
        dim = self.vocabulary.shape[1]
        # Carried from step to step and saved with a checkpoint: the step count and the adversarial prompt.
        self.state = {"step": torch.zeros((), dtype=torch.long), "rounds": torch.zeros((), dtype=torch.long),
                      "adv_rows": torch.zeros(1, self.tokenizer.model_max_length, dim),
                      "adv_ids": torch.zeros(1, self.tokenizer.model_max_length, dtype=torch.long)}  # fmt: skip
        self.attack = SoftPromptAttack(config.attack_steps, config.attack_lr, config.attack_method)
        self.word = config.concepts()[0]
        self.attack_losses: list[list[float]] = []
        self.parts: list[tuple[float, float]] = []
        with torch.no_grad():
            self.emb_null = self.encode_frozen([""])

    # --- text ------------------------------------------------------------------------------------------------------
    def ids(self, prompts: list[str]) -> torch.Tensor:
        return self.tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
                              truncation=True, return_tensors="pt").input_ids.to(self.device)  # fmt: skip

    def encode_frozen(self, prompts: list[str]) -> torch.Tensor:
        with torch.no_grad():
            return self.frozen_text(self.ids(prompts))[0]

    def rows_of(self, ids: torch.Tensor) -> torch.Tensor:
        return self.vocabulary[ids]

    def encode_trained(self, ids: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return encode_rows(self.text_encoder, ids, rows)

    # --- random inputs ---------------------------------------------------------------------------------------------
    def _draw(self, high: int, low: int = 0) -> int:
        return int(torch.randint(low, high, (1,), generator=self.generator))

    def draw_timestep(self) -> tuple[int, int]:
        """A DDIM index k and its training timestep t (drawn in k's bucket, as the release's CompVis loop)."""
        k = self._draw(self.config.sample_steps)
        _, low, high = partial_schedule(self.scheduler, self.config.sample_steps, k, "compvis")
        return k, self._draw(high, low)

    def partial_sample(self, k: int, cond: torch.Tensor) -> torch.Tensor:
        """x_t: fresh noise partially denoised by the model being trained (the release samples with it), conditioned
        on ``cond`` (original-text-encoder embeddings) at guidance ``sample_guidance``."""
        run, _, _ = partial_schedule(self.scheduler, self.config.sample_steps, k, "compvis")
        n = len(cond)
        latents = torch.randn((n, *self.latent_hw), generator=self.generator).to(self.device)
        latents = latents * self.scheduler.init_noise_sigma
        both = torch.cat([self.emb_null.expand(n, -1, -1), cond])
        return denoise(self.unet, self.scheduler, latents, run, both, self.config.sample_guidance)

    # --- losses ----------------------------------------------------------------------------------------------------
    def eps(self, unet, x_t: torch.Tensor, t: int, cond: torch.Tensor) -> torch.Tensor:
        return unet(x_t, torch.tensor(t, device=self.device), encoder_hidden_states=cond).sample

    def esd_target(self, x_t: torch.Tensor, t: int, emb_concept: torch.Tensor) -> torch.Tensor:
        """ε*(x_t, t) − η·(ε*(x_t, c, t) − ε*(x_t, t)) from the originals."""
        with torch.no_grad():
            e_0 = self.eps(self.frozen_unet, x_t, t, self.emb_null)
            e_p = self.eps(self.frozen_unet, x_t, t, emb_concept)
        return e_0 - self.config.negative_guidance * (e_p - e_0)

    def outer_loss(self, x_t: torch.Tensor, t: int, emb_concept: torch.Tensor, ids: torch.Tensor, rows: torch.Tensor,
                   retain: list[str], retain_x_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """(erasure loss on the prompt ``ids``/``rows``, retention loss on the ``retain`` prompts)."""
        unlearn = F.mse_loss(self.eps(self.unet, x_t, t, self.encode_trained(ids, rows)),
                             self.esd_target(x_t, t, emb_concept))  # fmt: skip
        retain_ids = self.ids(retain)
        with torch.no_grad():
            retain_target = self.eps(self.frozen_unet, retain_x_t, t, self.encode_frozen(retain))
        prediction = self.eps(self.unet, retain_x_t, t, self.encode_trained(retain_ids, self.rows_of(retain_ids)))
        return unlearn, F.mse_loss(prediction, retain_target)

    def random_rows(self, k: int) -> torch.Tensor:
        """The attack's random start: the embedding rows of k tokens drawn uniformly from the vocabulary."""
        return self.rows_of(torch.randint(0, len(self.vocabulary), (1, k), generator=self.generator))

    def run_attack(self, word: str, emb_concept: torch.Tensor) -> None:
        """The inner maximisation: a new adversarial prompt for ``word`` (kept in ``state``)."""
        cfg = self.config
        n_words = len(word.split())
        k = n_words if cfg.attack_type == "add" else cfg.attack_tokens
        ids = self.ids([word])
        rows = self.rows_of(ids)
        if cfg.attack_init == "latest" and int(self.state["rounds"]) > 0:
            init = self.state["adv_rows"][:, 1 : 1 + k].to(self.device)
        else:
            init = self.random_rows(k)
        self.unet.eval()
        self.text_encoder.eval()
        for p in self.params.values():
            p.requires_grad_(False)

        def loss_of(adv_ids: torch.Tensor, adv_rows: torch.Tensor) -> torch.Tensor:
            step, t = self.draw_timestep()
            x_t = self.partial_sample(step, emb_concept)
            with torch.no_grad():
                target = self.eps(self.frozen_unet, x_t, t, emb_concept)
            prediction = self.eps(self.unet, x_t, t, self.encode_trained(adv_ids, adv_rows))
            return attack_loss(prediction, target)

        adv_ids, adv_rows, losses = self.attack.run(
            init, lambda adv: adversarial_prompt(ids, rows, adv, n_words, cfg.attack_type), loss_of
        )
        self.state["adv_ids"].copy_(adv_ids)  # in place: the checkpoint holds these tensors
        self.state["adv_rows"].copy_(adv_rows)
        self.state["rounds"] += 1
        self.attack_losses.append(losses)

    def step_loss(self) -> torch.Tensor:
        """One outer step of the release's loop (``retain_train: reg``)."""
        cfg, i = self.config, int(self.state["step"])
        words = cfg.concepts()
        if i % cfg.attack_every == 0:
            self.word = words[self._draw(len(words))] if len(words) > 1 else words[0]
        emb_concept = self.encode_frozen([self.word])
        if i >= cfg.warmup_steps and i % cfg.attack_every == 0:
            self.run_attack(self.word, emb_concept)
        for p in self.params.values():
            p.requires_grad_(True)
        (self.text_encoder if self.on_text_encoder else self.unet).train()
        retain = self.retain.at(i)
        k, t = self.draw_timestep()
        x_t = self.partial_sample(k, emb_concept)
        retain_x_t = self.partial_sample(k, self.encode_frozen(retain))
        if i < cfg.warmup_steps:
            ids = self.ids([self.word])
            rows = self.rows_of(ids)
        else:
            ids, rows = self.state["adv_ids"].to(self.device), self.state["adv_rows"].to(self.device)
        unlearn, keep = self.outer_loss(x_t, t, emb_concept, ids, rows, retain, retain_x_t)
        self.parts.append((unlearn.item(), keep.item()))
        self.state["step"] += 1
        return unlearn + cfg.retain_loss_weight * keep

    def train(self, checkpoint: TrainingCheckpoint | None = None) -> list[float]:
        cfg = self.config
        saved = {**self.params, **{f"_state.{k}": v for k, v in self.state.items()}}
        loop = TrainingLoop(
            "AdvUnlearn", cfg.train_steps, torch.optim.Adam(self.params.values(), lr=cfg.learning_rate), saved,
            f"learning_rate={cfg.learning_rate}, attack_lr={cfg.attack_lr}", checkpoint=checkpoint,
            generators={"train": self.generator},
        )  # fmt: skip
        losses = loop.run(self.step_loss)
        for module in (self.unet, self.text_encoder):
            module.eval().requires_grad_(False)
        return losses

    def trained_state(self) -> Weights:
        return {name: p.detach().to("cpu", torch.float32).contiguous() for name, p in self.params.items()}


def released_text_encoder(weights: Weights) -> Weights:
    """The authors' text encoders in our layout: their Hugging Face files (OPTML-Group/AdvUnlearn,
    ``<concept>_unlearned/``, a ``CLIPTextModel`` with keys ``text_model.*``) and their training script's
    ``TextEncoder-*.pt`` (a ``CustomTextEncoder`` state dict: ``text_encoder.text_model.*`` plus aliases of the same
    tensors under ``embedding.``, ``encoder.`` and ``final_layer_norm.``). Files with component prefixes pass."""
    out: Weights = {}
    for name, tensor in weights.items():
        if name.endswith("position_ids") or name.startswith(("embedding.", "encoder.", "final_layer_norm.")):
            continue  # a buffer, or an alias of a text_encoder.text_model.* tensor
        out[f"text_encoder.{name}" if name.startswith("text_model.") else name] = tensor
    return out


def fit_text_encoder_names(weights: Weights, text_encoder: torch.nn.Module) -> Weights:
    """Text-encoder tensor names as this transformers version names them: ``text_model.`` is a level of
    ``CLIPTextModel`` before transformers 5 (and in the authors' files), not after."""
    own = set(text_encoder.state_dict())
    out: Weights = {}
    for name, tensor in weights.items():
        component, _, rest = name.partition(".")
        if component == "text_encoder" and rest not in own:
            other = rest.removeprefix("text_model.") if rest.startswith("text_model.") else f"text_model.{rest}"
            rest = other if other in own else rest
        out[f"{component}.{rest}" if component == "text_encoder" else name] = tensor
    return out


class AdvUnlearn(Technique):
    name = "advunlearn"
    config_cls = AdvUnlearnConfig
    config: AdvUnlearnConfig
    algorithm_version = 1
    weight_fields = TRAINING_KEYS

    def read_weights(self, path: Path) -> Weights:
        return released_text_encoder(weight_files.read(path, require_digest=False))

    def apply_weights(self, pipe: Any, weights: Weights) -> dict[str, int]:
        return weight_files.apply(pipe, fit_text_encoder_names(weights, pipe.text_encoder), self.default_component)

    def build_weights(self, pipe: Any) -> Weights:
        cfg, model = self.config, self.context.model
        trainer = AdvUnlearnTrainer(pipe, cfg, self.device, model.height, model.width)
        log.info("AdvUnlearn: training %d tensors (%s) for %d steps to erase '%s'", len(trainer.params),
                 cfg.train_method, cfg.train_steps, cfg.erase_concept)  # fmt: skip
        losses = trainer.train(self.checkpoint)
        rounds = trainer.attack_losses
        self.info.update(trained_tensors=len(trainer.params), losses=losses,
                         first_loss=losses[0] if losses else None, last_loss=losses[-1] if losses else None,
                         attack_rounds=len(rounds),
                         attack_loss_first_last=[[r[0], r[-1]] for r in rounds])  # fmt: skip
        return trainer.trained_state()

    def failure_hint(self) -> str:
        return f" (learning_rate={self.config.learning_rate}, attack_lr={self.config.attack_lr})"
