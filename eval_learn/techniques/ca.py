"""``ca``: Concept Ablation — Kumari, Zhang, Wang, Shechtman, Zhang, Zhu, "Ablating Concepts in Text-to-Image Diffusion
Models", ICCV 2023 (arXiv:2303.13516).

Ablating a target concept c* means making the model draw an *anchor* concept c instead (Grumpy Cat → cat, Van Gogh →
paintings, nudity → clothed people) rather than something undefined. The model-based variant (the authors' default)
fine-tunes θ so that, on noised images of the anchor concept, the prediction for a target prompt matches the model's
own prediction for the anchor caption the image was rendered from, held fixed:

    min_θ  E_{x, ε, t} ‖ ε_θ(x_t, c*, t) − sg(ε_θ(x_t, c, t)) ‖²,     x_t = √ᾱ_t x + √(1 − ᾱ_t) ε,

sg being the stop-gradient (the anchor branch is evaluated with the *current* θ, as in both author releases). With
``prior_preservation`` (the release's nudity recipe) a second half-batch of anchor images with their own captions is
trained towards the noise (DreamBooth's prior loss), so the anchor concept itself stays intact.

What follows the authors' releases (github.com/nupurkmr9/concept-ablation; the recipe YAMLs cite file and commit):

- Anchor captions are the release's caption lists (``eval_learn/data/ca_captions``); anchor image i is rendered from
  caption i mod n with seed ``train_seed + i`` — for nudity with the target caption as negative prompt.
- Target prompts are formed from the anchor caption as the release forms them, per sample at random
  (``concept_type``): nudity "T, c" / "in T style, c" / "c, T"; style the CompVis code's six forms
  ("c, in the style of T[ T]", "T[ T] inspired painting, c", "in T[ T]'s style, c"); object the caption lower-cased
  with the anchor word replaced by the target. ``templates`` is this project's own form for small models (``{}`` in a
  template marks the concept).
- ``train_method``: ``attn`` (q, k, v, out of self- and cross-attention: the nudity recipe), ``xattn`` (cross-attention
  k, v: the paper's), ``full``, or ``embedding`` (the target's own token embeddings).
- The gradient through the cross-attention key and value of the first text position (the start token, the same for
  every prompt) is blocked, as the releases' attention processors do, so training changes what the concept's tokens
  do and not the start token's global effect.
- The instance loss is the releases': per image, squared errors summed over channels and averaged over the latent
  pixels — for nudity (the diffusers code) only those inside a one-pixel border, its image mask; the CompVis code
  (style, object) counts every pixel —, then averaged over images; the prior loss is a plain mean.
  ``templates`` uses a plain mean over every latent pixel (on a 32-pixel model the border is most of the latent).
  AdamW, gradient clipping and horizontal flips as released; random-resize augmentation is off in every recipe here.

Anchor latents are kept as VAE latent distributions (sampled per step, as the release encodes each batch); the
trained tensors are cached by the base class under a key of every setting that shapes them. ``load_path`` also reads
the authors' released delta files (diffusers ``delta.bin``, CompVis ``delta_*.ckpt``). A non-finite loss stops
training at once (nothing is cached).
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from tqdm.auto import tqdm

from eval_learn.configs import require
from eval_learn.errors import ConfigError
from eval_learn.techniques import weights as weight_files
from eval_learn.techniques.base import Technique, WeightsConfig
from eval_learn.techniques.checkpoint import TrainingCheckpoint
from eval_learn.techniques.training import TrainingLoop
from eval_learn.techniques.weights import Weights, cpu_copies

log = logging.getLogger(__name__)

TrainMethod = Literal["attn", "xattn", "full", "embedding"]
ConceptType = Literal["nudity", "style", "object", "templates"]
AnchorScheduler = Literal["dpm_solver_multistep", "ddim", "pipeline"]
CAPTIONS_DIR = Path(__file__).resolve().parents[1] / "data" / "ca_captions"
# Anchor prompt variations for concept_type=templates ({} = the concept).
DEFAULT_TEMPLATES = (
    "{}", "a photo of {}", "a picture of {}", "an image of {}", "a painting of {}", "a drawing of {}",
    "a close-up photo of {}", "a photo of {} outdoors", "a photo of {} indoors", "a high quality photo of {}",
)  # fmt: skip
TRAINING_KEYS = (
    "erase_concept", "target_caption", "concept_type", "anchor_concept", "anchor_captions", "prompt_templates",
    "train_method", "train_steps", "learning_rate", "train_batch_size", "prior_preservation", "prior_loss_weight",
    "num_anchor_images", "anchor_scheduler", "anchor_steps", "anchor_guidance_scale", "anchor_eta",
    "anchor_negative_prompt", "hflip", "weight_decay", "max_grad_norm", "train_seed",
)  # fmt: skip


@dataclass
class CAConfig(WeightsConfig):
    erase_concept: str = "nudity"  # the concept ablated (what metrics measure)
    target_caption: str | None = "nudity, nsfw"  # its text in prompts (--caption_target); null: erase_concept
    concept_type: ConceptType = "nudity"  # how target prompts are formed from anchor captions
    anchor_concept: str | None = None  # object: the caption word the target replaces; templates: the anchor concept
    anchor_captions: str | None = "people"  # a shipped caption list (people, painting, cat, dog, fish, robot) or a file
    prompt_templates: list[str] | None = None  # concept_type=templates: "{}" marks the concept; null: DEFAULT_TEMPLATES
    train_method: TrainMethod = "attn"
    train_steps: int = 400
    learning_rate: float = 6.4e-5  # the release's 4e-6 x batch 4 x 2 GPUs x 2 (prior preservation), --scale_lr
    # target-prompt rows per step (the release's --train_batch_size: 4 per GPU on 2 GPUs); as many prior rows again
    train_batch_size: int = 8
    prior_preservation: bool = True
    prior_loss_weight: float = 1.0
    num_anchor_images: int = 1000
    anchor_scheduler: AnchorScheduler = "dpm_solver_multistep"  # how anchor images are sampled
    anchor_steps: int = 25
    anchor_guidance_scale: float = 6.0
    anchor_eta: float = 1.0
    anchor_negative_prompt: bool = True  # the target caption as negative prompt of the anchor images (nudity)
    hflip: bool = True
    weight_decay: float = 0.01  # AdamW's
    max_grad_norm: float = 1.0
    train_seed: int = 0

    def erased_concepts(self) -> list[str] | None:
        return [self.erase_concept]

    def target_text(self) -> str:
        return self.target_caption if self.target_caption is not None else self.erase_concept

    def templates(self) -> list[str]:
        return list(self.prompt_templates) if self.prompt_templates is not None else list(DEFAULT_TEMPLATES)

    def captions_path(self) -> Path:
        assert self.anchor_captions is not None
        shipped = CAPTIONS_DIR / f"{self.anchor_captions}.txt"
        return shipped if shipped.is_file() else Path(self.anchor_captions)

    def validate(self) -> None:
        super().validate()
        require(bool(self.erase_concept.strip()), "erase_concept must be non-empty")
        require(self.target_caption is None or bool(self.target_caption.strip()), "target_caption must be non-empty")
        if self.concept_type in ("templates", "object"):
            require(
                self.anchor_concept is not None and bool(self.anchor_concept.strip()),
                f"concept_type={self.concept_type} needs anchor_concept: the concept the ablated one should turn into "
                f"(e.g. anchor_concept=cat to ablate 'grumpy cat')",
            )
            require(self.anchor_concept != self.target_text(), "anchor_concept must differ from the target")
        if self.concept_type == "templates":
            templates = self.prompt_templates
            require(templates is None or bool(templates), "prompt_templates must be null or a non-empty list")
            for template in templates or []:
                require(_one_slot(template), f"prompt template {template!r} needs exactly one '{{}}' (the concept)")
        else:
            require(self.prompt_templates is None, "prompt_templates is used only with concept_type=templates")
            require(self.anchor_captions is not None, f"concept_type={self.concept_type} needs anchor_captions")
            shipped = sorted(p.stem for p in CAPTIONS_DIR.glob("*.txt"))
            require(self.captions_path().is_file(),
                    f"anchor_captions '{self.anchor_captions}' is neither one of {shipped} nor a file")  # fmt: skip
        for key in ("train_steps", "train_batch_size", "num_anchor_images", "anchor_steps"):
            require(getattr(self, key) > 0, f"{key} must be > 0, got {getattr(self, key)}")
        for key in ("learning_rate", "max_grad_norm"):
            value = getattr(self, key)
            require(math.isfinite(value) and value > 0, f"{key} must be a finite number > 0, got {value}")
        for key in ("anchor_guidance_scale", "anchor_eta", "weight_decay", "prior_loss_weight"):
            value = getattr(self, key)
            require(math.isfinite(value) and value >= 0, f"{key} must be a finite number >= 0, got {value}")
        require(0 <= self.train_seed < 2**63, "train_seed must be in [0, 2**63)")


def _one_slot(template: str) -> bool:
    try:
        return template.count("{}") == 1 and template.format("\x00").count("\x00") == 1
    except (IndexError, KeyError, ValueError):
        return False


def read_captions(path: Path) -> list[str]:
    """One caption per line, stripped, as the release reads its caption files."""
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]


def target_forms(concept_type: ConceptType, target: str, anchor: str | None) -> list[Callable[[str], str]]:
    """The ways the release turns an anchor caption into a target prompt (one is drawn per sample)."""
    if concept_type == "nudity":  # diffusers/utils.py, CustomDiffusionDataset.__getprompt__
        return [lambda c: f"{target}, {c}", lambda c: f"in {target} style, {c}", lambda c: f"{c}, {target}"]
    if concept_type == "style":  # compvis/src/finetune_data.py, get_styled_prompt
        forms: list[Callable[[str], str]] = []
        for t in (f"{target} {target}", target):
            forms += [lambda c, t=t: f"{c.strip()}, in the style of {t}", lambda c, t=t: f"{t} inspired painting, {c.strip()}",
                      lambda c, t=t: f"in {t}'s style, {c.strip()}"]  # fmt: skip
        return forms
    if concept_type == "object":  # compvis/src/finetune_data.py, MaskBase.__getitem__
        assert anchor is not None
        return [lambda c: c.strip().lower().replace(anchor, target)]
    raise ValueError(concept_type)  # templates: the target prompt is the template's, not a form of the caption


def select_parameters(pipe: Any, train_method: TrainMethod) -> dict[str, torch.nn.Parameter]:
    """The parameters CA may change, by weight name (``unet.…`` or ``text_encoder.…``); ``attn`` is the release's
    name test (``to_q``, ``to_k``, ``to_v``, ``to_out`` anywhere in the UNet)."""
    if train_method == "embedding":
        weight = pipe.text_encoder.get_input_embeddings().weight
        name = next(n for n, p in pipe.text_encoder.named_parameters() if p is weight)  # transformers-version proof
        return {f"text_encoder.{name}": weight}
    attn = re.compile(r"\.to_(q|k|v|out)\.")
    selected = {}
    for name, param in pipe.unet.named_parameters():
        chosen = {
            "full": True,
            "xattn": ".attn2.to_k." in name or ".attn2.to_v." in name,
            "attn": attn.search(name) is not None,
        }[train_method]
        if chosen:
            selected[f"unet.{name}"] = param
    return selected


def block_start_token_gradient(unet: torch.nn.Module) -> list[Any]:
    """Stop the gradient through the key and value of the first text position in every cross-attention (the
    releases' attention processors do this); returns the hook handles."""

    def hook(module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        return torch.cat([output[:, :1].detach(), output[:, 1:]], dim=1)

    return [
        module.register_forward_hook(hook)
        for name, module in unet.named_modules()
        if name.endswith((".attn2.to_k", ".attn2.to_v"))
    ]


def border_mask(height: int, width: int, device: Any) -> torch.Tensor:
    """The release's valid-region mask of an anchor image at the training size: the latent without its outer row and
    column on every side ([1, 1, h, w])."""
    mask = torch.zeros(1, 1, height, width, device=device)
    mask[..., 1 : height - 1, 1 : width - 1] = 1.0
    return mask


@dataclass
class CABatch:
    """One training step's inputs: ``train_batch_size`` target rows, then (with prior preservation) as many prior rows."""

    x_t: torch.Tensor
    t: torch.Tensor
    noise: torch.Tensor
    target_prompts: list[str]
    anchor_prompts: list[str]  # the captions of the target rows' images
    prior_prompts: list[str]  # the captions of the prior rows' images (empty without prior preservation)


class CATrainer:
    """Anchor images, the model-based objective and its training loop on a diffusers Stable Diffusion pipeline."""

    def __init__(self, pipe: Any, config: CAConfig, device: str, height: int, width: int) -> None:
        self.pipe, self.config, self.device = pipe, config, device
        self.height, self.width = height, width
        self.unet, self.text_encoder = pipe.unet, pipe.text_encoder
        self.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
        target = config.target_text()
        if config.concept_type == "templates":
            assert config.anchor_concept is not None  # validated
            templates = config.templates()
            self.captions = [t.format(config.anchor_concept) for t in templates]
            targets = [t.format(target) for t in templates]
            self.forms: list[Callable[[str], str]] = []
            self._templated = dict(zip(self.captions, targets, strict=True))
        else:
            self.captions = read_captions(config.captions_path())
            self.forms = target_forms(config.concept_type, target, config.anchor_concept)
            self._templated = {}
        self.params = select_parameters(pipe, config.train_method)
        pipe.unet.requires_grad_(False)
        pipe.text_encoder.requires_grad_(False)
        pipe.vae.requires_grad_(False)
        for p in self.params.values():
            p.requires_grad_(True)
        self.frozen_rows: torch.Tensor | None = None
        if config.train_method == "embedding":  # the target's own tokens: not those its anchor captions share
            tokens = lambda text: set(pipe.tokenizer(text, add_special_tokens=False).input_ids)  # noqa: E731
            ids = sorted(tokens(target) - tokens(config.anchor_concept or ""))
            if not ids:
                raise ConfigError(f"train_method=embedding: every token of the target '{target}' is also in "
                                  f"anchor_concept '{config.anchor_concept}', so no embedding can change")  # fmt: skip
            weight = next(iter(self.params.values()))
            self.frozen_rows = torch.ones(weight.shape[0], dtype=torch.bool, device=weight.device)
            self.frozen_rows[ids] = False
            self.embedding_before = weight.detach().clone()
        self.generator = torch.Generator("cpu").manual_seed(config.train_seed)
        self.latents: torch.Tensor | None = None  # [2 (flip), N, 2 (mean, std), C, h, w]
        self.caption_of: torch.Tensor | None = None

    def encode(self, texts: list[str]) -> torch.Tensor:
        tok = self.pipe.tokenizer(texts, padding="max_length", max_length=self.pipe.tokenizer.model_max_length,
                                  truncation=True, return_tensors="pt")  # fmt: skip
        return self.text_encoder(tok.input_ids.to(self.device))[0]

    def target_prompt(self, caption: str) -> str:
        """A target prompt for an anchor caption: one of the release's forms, drawn from the training generator."""
        if self._templated:
            return self._templated[caption]
        pick = int(torch.randint(len(self.forms), (1,), generator=self.generator)) if len(self.forms) > 1 else 0
        return self.forms[pick](caption)

    def _anchor_scheduler(self) -> Any:
        from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

        kind = self.config.anchor_scheduler
        if kind == "pipeline":
            return self.pipe.scheduler
        cls = DPMSolverMultistepScheduler if kind == "dpm_solver_multistep" else DDIMScheduler
        return cls.from_config(self.pipe.scheduler.config)

    @torch.no_grad()
    def make_anchor_images(self, rows: int = 8) -> None:
        """Render ``num_anchor_images`` anchor images with the base pipeline (caption i mod n, seed train_seed + i;
        nudity: the target caption as negative prompt) and keep their VAE latent distributions, flipped and not."""
        cfg, vae, pipe = self.config, self.pipe.vae, self.pipe
        n = cfg.num_anchor_images
        caption_of = torch.arange(n) % len(self.captions)
        stats = []
        own_scheduler, pipe.scheduler = pipe.scheduler, self._anchor_scheduler()
        try:
            for start in tqdm(range(0, n, rows), desc="CA anchor images", leave=False, mininterval=2.0):
                batch = list(range(start, min(start + rows, n)))
                images = pipe(
                    prompt=[self.captions[int(caption_of[i])] for i in batch],
                    negative_prompt=[cfg.target_text()] * len(batch) if cfg.anchor_negative_prompt else None,
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
        finally:
            pipe.scheduler = own_scheduler
        self.latents = torch.cat(stats, dim=1)
        self.caption_of = caption_of

    def sample_batch(self) -> CABatch:
        """A training batch: noised anchor latents, their timesteps and noise, and the rows' prompts."""
        assert self.latents is not None and self.caption_of is not None, "make_anchor_images() first"
        cfg, g = self.config, self.generator
        b = cfg.train_batch_size
        rows = 2 * b if cfg.prior_preservation else b
        index = torch.randint(self.latents.shape[1], (rows,), generator=g)
        flip = (torch.rand(rows, generator=g) < 0.5).long() if cfg.hflip else torch.zeros(rows).long()
        stats = self.latents[flip.to(self.latents.device), index.to(self.latents.device)]
        mean, std = stats[:, 0], stats[:, 1]
        x0 = (mean + std * torch.randn(mean.shape, generator=g).to(self.device)) * self.pipe.vae.config.scaling_factor
        noise = torch.randn(x0.shape, generator=g).to(self.device)
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (rows,), generator=g).to(self.device)
        captions = [self.captions[int(self.caption_of[i])] for i in index]
        return CABatch(self.scheduler.add_noise(x0, noise, t), t, noise,
                       [self.target_prompt(c) for c in captions[:b]], captions[:b], captions[b:])  # fmt: skip

    def target(self, x_t: torch.Tensor, t: torch.Tensor, anchor_prompts: list[str]) -> torch.Tensor:
        """sg(ε_θ(x_t, c_anchor, t)): the current model's prediction for the anchor captions, without gradient."""
        with torch.no_grad():
            return self.unet(x_t, t, encoder_hidden_states=self.encode(anchor_prompts)).sample

    def loss(self, batch: CABatch) -> torch.Tensor:
        b = len(batch.target_prompts)
        prediction = self.unet(
            batch.x_t, batch.t, encoder_hidden_states=self.encode(batch.target_prompts + batch.prior_prompts)
        ).sample.float()
        anchor = self.target(batch.x_t[:b], batch.t[:b], batch.anchor_prompts).float()
        if self.config.concept_type == "templates":  # ours, for small models: a plain mean over every latent pixel
            loss = torch.mean((prediction[:b] - anchor) ** 2)
        else:  # the releases': channels summed, pixels averaged (nudity, the diffusers code: inside a border mask)
            mask = border_mask(*prediction.shape[-2:], prediction.device)
            if self.config.concept_type != "nudity":  # the CompVis code (style, object) without augmentation: no border
                mask = torch.ones_like(mask)
            loss = (((prediction[:b] - anchor) ** 2 * mask).sum(dim=(1, 2, 3)) / mask.sum()).mean()
        if batch.prior_prompts:
            loss = loss + self.config.prior_loss_weight * torch.mean((prediction[b:] - batch.noise[b:].float()) ** 2)
        return loss

    def anchors(self, checkpoint: TrainingCheckpoint | None) -> None:
        """The anchor latents: from a killed run's saved state, or rendered (and saved for a run killed later)."""
        if checkpoint is not None and (saved := checkpoint.load()) is not None:
            self.latents, self.caption_of = saved["latents"].to(self.device), saved["caption_of"]
            return
        self.make_anchor_images()
        if checkpoint is not None:
            checkpoint.maybe_save(0, lambda: {"latents": self.latents.cpu(), "caption_of": self.caption_of},
                                  force=True)  # fmt: skip

    def train(self, checkpoint: TrainingCheckpoint | None = None) -> list[float]:
        cfg = self.config
        optimizer = torch.optim.AdamW(self.params.values(), lr=cfg.learning_rate, betas=(0.9, 0.999),
                                      weight_decay=cfg.weight_decay, eps=1e-8)  # fmt: skip
        loop = TrainingLoop(
            "CA", cfg.train_steps, optimizer, self.params,
            f"learning_rate={cfg.learning_rate}, train_method={cfg.train_method}", max_grad_norm=cfg.max_grad_norm,
            checkpoint=checkpoint, generators={"train": self.generator}, after_step=self.keep_frozen_rows,
        )  # fmt: skip
        self.unet.train()
        hooks = block_start_token_gradient(self.unet)
        try:
            losses = loop.run(lambda: self.loss(self.sample_batch()))
        finally:
            for hook in hooks:
                hook.remove()
        self.unet.eval()
        for p in self.params.values():
            p.requires_grad_(False)
        return losses

    def keep_frozen_rows(self) -> None:
        """With ``train_method=embedding`` only the target concept's token rows may move (weight decay too)."""
        if self.frozen_rows is not None:
            weight = next(iter(self.params.values()))
            with torch.no_grad():
                weight[self.frozen_rows] = self.embedding_before[self.frozen_rows]

    def trained_state(self) -> Weights:
        return cpu_copies(self.params)


# --- the authors' released delta files ------------------------------------------------------------------------------
_COMPVIS_PREFIX = "model.diffusion_model."


def compvis_to_diffusers(name: str) -> str:
    """A CompVis (ldm) UNet attention tensor name → the diffusers name of the same tensor (SD-1.x layout: three
    input blocks per resolution, attention at position 1)."""
    rest = name.removeprefix(_COMPVIS_PREFIX)
    if m := re.fullmatch(r"input_blocks\.(\d+)\.1\.(.+)", rest):
        block = int(m.group(1)) - 1
        return f"down_blocks.{block // 3}.attentions.{block % 3}.{m.group(2)}"
    if m := re.fullmatch(r"middle_block\.1\.(.+)", rest):
        return f"mid_block.attentions.0.{m.group(1)}"
    if m := re.fullmatch(r"output_blocks\.(\d+)\.1\.(.+)", rest):
        block = int(m.group(1))
        return f"up_blocks.{block // 3}.attentions.{block % 3}.{m.group(2)}"
    raise ValueError(name)


def read_release_delta(path: Path) -> Weights | None:
    """The tensors of a delta file saved by the authors' code, as ``unet.*``/``text_encoder.*`` weights: diffusers
    ``{"unet": {...}, "text_encoder": {...}}`` or CompVis ``{"state_dict": {"model.diffusion_model.…": ...}}``.
    None when ``path`` is not in either layout (then it is read as this project's own weights file)."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - not a torch file of plain tensors: not a release delta
        return None
    if not isinstance(data, dict):
        return None
    if isinstance(data.get("unet"), dict):
        weights = {f"unet.{k}": v for k, v in data["unet"].items()}
        weights.update({f"text_encoder.{k}": v for k, v in (data.get("text_encoder") or {}).items()})
    elif isinstance(data.get("state_dict"), dict):
        state = data["state_dict"]
        if "embed" in state:
            raise ConfigError(f"load_path '{path}' holds a new-token embedding ('embed'), which CA here cannot load")
        try:
            weights = {f"unet.{compvis_to_diffusers(k)}": v for k, v in state.items()}
        except ValueError as err:
            raise ConfigError(f"load_path '{path}': tensor '{err}' is not a CompVis UNet attention tensor") from None
    else:
        return None
    if not weights or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise ConfigError(f"load_path '{path}' holds no tensors in the release's delta layout")
    return {k: v.float() for k, v in weights.items()}


class ConceptAblation(Technique):
    name = "ca"
    config_cls = CAConfig
    config: CAConfig
    algorithm_version = 2  # 2: the releases' recipes (captions, target forms, prior loss, mask, start-token block)
    weight_fields = TRAINING_KEYS

    def read_weights(self, path: Path) -> Weights:
        """``load_path``: a release delta file (diffusers or CompVis layout) or this project's weights file."""
        if str(path).endswith(weight_files.TORCH_SUFFIXES) and (delta := read_release_delta(path)) is not None:
            return delta
        return super().read_weights(path)

    def build_weights(self, pipe: Any) -> Weights:
        cfg, model = self.config, self.context.model
        trainer = CATrainer(pipe, cfg, self.device, model.height, model.width)
        log.info("CA (%s): %d anchor images from %d captions, then %d steps on %d tensors (%s) to ablate '%s'",
                 cfg.concept_type, cfg.num_anchor_images, len(trainer.captions), cfg.train_steps, len(trainer.params),
                 cfg.train_method, cfg.erase_concept)  # fmt: skip
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
