"""``mace``: Mass Concept Erasure — Lu, Wang, Li, Liu, Kong, "MACE: Mass Concept Erasure in Diffusion Models",
CVPR 2024 (arXiv:2403.06135; the authors' release: github.com/Shilin-LU/MACE).

Text reaches the UNet only through the cross-attention key and value projections (``attn2.to_k``, ``attn2.to_v``).
MACE rewrites each of these matrices W in three stages, for any number of concepts at once:

1. **Closed-form cross-attention refinement** (Sec. 3.1, Eq. 1–2). A concept also hides in the words around it: the
   causal CLIP encoder writes it into every token after it (the end-of-text and padding tokens included). For prompts
   that contain the concept ("a photo of the {c}") and the same prompts with the concept replaced by its mapping
   concept (a super-category, or ``""``), the embeddings e^f of the co-existing tokens are mapped onto W e^g, the
   projections of the aligned tokens of the replaced prompt, while general-knowledge embeddings e^p keep W e^p:

       W' = argmin Σ ‖W' e^f − W e^g‖² + λ₁ mean_p Σ ‖W' e^p − W e^p‖² + λ ‖W' − W‖²_F
          = W (Σ e^g e^fᵀ + λ₁ G_p + λ I)(Σ e^f e^fᵀ + λ₁ G_p + λ I)⁻¹.

   Tokens are aligned as the release does: the common prefix position by position, then everything after the
   differing span (the rest of the prompt and the padding) from the end of that span on. The concept's own tokens are
   not mapped; stage 2 deals with them.
2. **One LoRA per concept** (Sec. 3.2, Eq. 3–5). On top of W', a rank-r LoRA ΔW = B A on every ``to_k``/``to_v`` of
   the cross-attentions is trained so that the concept's tokens (and, as the release's ``use_pooler``, the
   end-of-text tokens) no longer attract attention where the concept is in the image:

       L = Σ_layers ‖A_{t,l}[concept tokens] ⊙ M‖_F        (attention probabilities inside the mask M)

   — unsquared, per layer, as the release computes it (the paper writes the square)

   on noised latents of images of the concept at timesteps drawn uniformly or by the paper's concept-focal
   importance sampling ξ(t) ∝ σ(0.05(t − 200)) − σ(0.05(t − 400)). Only the LoRA parameters are trained.
3. **Closed-form fusion of the LoRAs** (Sec. 3.3, Eq. 7). Instead of adding the LoRAs up (they interfere), the fused
   matrix reproduces each LoRA-carrying matrix on its own concept's prompts and keeps the general knowledge:

       W* = argmin Σ_i Σ_{e ∈ E_i} ‖W* e − (W' + ΔW_i) e‖² + λ₂ mean_p Σ ‖W* e^p − W e^p‖² + λ ‖W* − W'‖²_F,

   E_i every token embedding of concept i's prompts. λ is the release's ridge term (``lamb``), which keeps the
   directions no term spans and makes the systems invertible when the preservation set is empty.

The masks (``mask_source``) replace the paper's Grounded-SAM, which cannot run offline: ``attention`` (default) takes
the base UNet's own cross-attention maps of the concept tokens on each training image, averaged over layers, heads
and three timesteps and thresholded at ``mask_threshold`` of their maximum; ``full`` uses the whole image;
``folder`` reads ``<name>_mask.png`` next to each image in ``image_folder``; ``miniworld`` takes the training images
and their exact object masks from the MiniWorld (a source in the ``MASKED_IMAGES`` registry: no technique imports
the toy world); masks are resized to each layer by nearest
neighbour, as the release does. Training images are otherwise made by the base pipeline as the release makes them
(``image_prompt``, "a photo of the {c}", with DPM-Solver; image i of concept j from the seed
``train_seed + j·num_images + i``), or read from ``image_folder/<concept>/``. The preserved embeddings e^p are, by
default, the first ``preserve_coco`` COCO captions shipped with the package (the release: all 616,767 COCO-2014
captions); ``preserve_scale`` and ``fuse_preserve_scale`` weight their *mean* (per prompt, its token rows summed), so
that their values do not depend on how many captions are used. The release's stage 1 multiplies its summed cache by
``train_preserve_scale`` twice and its stage 3 by ``fuse_preserve_scale`` once, so its s₁, s₃ are s₁²·616,767 and
s₃·616,767 here (conf/technique/mace.yaml; tests/parity/test_mace.py checks both against the release's code).

Not reproduced: Grounded-SAM masks; the release's prompt templates (its licence forbids redistribution: ours are 30
of the same kinds); its LLM-written prompts (``use_gpt``); its prior-preservation image loss (off in all its configs)
and its domain-specific preservation caches (downloadable only). The release normalises training images with
ImageNet statistics before the VAE; here they are in the VAE's [-1, 1]. The fused matrices (only they) are the
technique's weights, cached by the base class under a key of the fields that shape them and the base model;
``load_path`` also takes the pipeline folder the release saves (its ``final_save_path``).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from eval_learn.configs import as_list, check_concepts_and_targets, one_each, require
from eval_learn.errors import ConfigError, RunError
from eval_learn.registry import MASKED_IMAGES
from eval_learn.storage import digest_of
from eval_learn.techniques.base import NON_IMAGE_FIELDS, Technique, WeightsConfig
from eval_learn.techniques.checkpoint import TrainingCheckpoint
from eval_learn.techniques.training import TrainingLoop
from eval_learn.techniques.uce import cross_attention_projections
from eval_learn.techniques.weights import Weights

log = logging.getLogger(__name__)

MaskSource = Literal["attention", "full", "folder", "miniworld"]
ConceptType = Literal["object", "style"]
# Captions of the concept for prompt augmentation ({} = the concept): 30 per kind, as many as the release samples
# (its aug_length). They are our own wording of the same kinds of caption (photos, renderings, paintings, sketches;
# for styles, works by the artist): the release's own lists are under a licence that forbids redistribution.
OBJECT_TEMPLATES = (
    "a photo of {}", "an image of {}", "a picture of {}", "{} in a photo", "{} in a picture",
    "a close-up photo of {}", "a snapshot showing {}", "a photograph of {}", "a high quality photo of {}",
    "a black and white photo of {}", "an old photo of {}", "a blurry photo of {}", "a painting of {}",
    "an oil painting of {}", "a watercolor painting of {}", "a drawing of {}", "a pencil sketch of {}",
    "a detailed sketch of {}", "an illustration of {}", "a digital rendering of {}", "a 3D render of {}",
    "a poster showing {}", "a magazine photo of {}", "a portrait of {}", "a cropped photo of {}",
    "a bright photo of {}", "a dark photo of {}", "{} captured on film", "an artistic image of {}",
    "a realistic depiction of {}",
)  # fmt: skip
STYLE_TEMPLATES = (
    "a painting by {}", "an artwork by {}", "a picture by {}", "a drawing by {}", "a sketch by {}",
    "an illustration by {}", "a portrait by {}", "a landscape by {}", "a famous work by {}", "a masterpiece by {}",
    "art in the style of {}", "a painting in the style of {}", "an image in the style of {}",
    "a drawing in the style of {}", "a digital artwork in the style of {}", "a poster in the style of {}",
    "a still life by {}", "a city scene painted by {}", "a seascape by {}", "an early work by {}",
    "a late work by {}", "an abstract piece by {}", "a study by {}", "a print by {}", "a mural by {}",
    "a museum piece by {}", "a reproduction of a work by {}", "a colourful painting by {}",
    "a black and white work by {}", "an artwork inspired by {}",
)  # fmt: skip
TEMPLATES: dict[str, tuple[str, ...]] = {"object": OBJECT_TEMPLATES, "style": STYLE_TEMPLATES}
# The release's training images: 8 per concept from one prompt, DPM-Solver++ (diffusers' DPMSolverMultistepScheduler)
IMAGE_PROMPTS = {"object": "a photo of the {}", "style": "a photo in the style of {}"}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
MASK_TIMESTEPS = (200, 400, 600)  # where the attention masks are read (of the scheduler's 1000 training steps)
CFIS_RANGE, CFIS_TEMPERATURE = (200.0, 400.0), 0.05  # the paper's concept-focal importance sampling


def _one_slot(template: str) -> bool:
    try:
        return template.count("{}") == 1 and template.format("\x00").count("\x00") == 1
    except (IndexError, KeyError, ValueError):
        return False


@dataclass
class MACEConfig(WeightsConfig):
    # one concept or a list: one LoRA each, fused together (the release's explicit-content recipe by default)
    erase_concept: str | list[str] = field(default_factory=lambda: ["nudity", "naked", "erotic", "sexual"])
    mapping_concept: str | list[str] = "a person wearing clothes"  # what each concept's prompts become in stage 1
    concept_type: ConceptType = "object"  # the release's kinds: default templates, image prompt (style: no masks)
    prompt_templates: list[str] | None = None  # "{}" marks the concept; null: TEMPLATES[concept_type]
    preserve_prompts: list[str] | None = None  # general knowledge e^p; null: the first preserve_coco COCO captions
    preserve_coco: int = 1000
    # λ₁ (stage 1) and λ₂ (stage 3), weights of the MEAN over the preserved prompts. The release sums its cache over
    # 616,767 COCO-2014 captions and weights stage 1 by train_preserve_scale² (it scales the cache, then scales it
    # again in the solve) and stage 3 by fuse_preserve_scale once: 7e-7² x 616,767 = 3.0e-7 and 7e-7 x 616,767 = 0.43.
    preserve_scale: float = 3.0e-7
    fuse_preserve_scale: float = 0.43
    lamb: float = 0.0  # λ, ridge towards the current matrix in stages 1 and 3
    lora_rank: int = 1
    train_steps: int = 120  # per concept
    learning_rate: float = 1.0e-5
    train_batch_size: int = 1
    weight_decay: float = 0.01  # AdamW's
    max_grad_norm: float = 1.0
    importance_sampling: bool = False  # concept-focal importance sampling of timesteps (else uniform)
    include_end_tokens: bool = True  # also suppress the end-of-text tokens (the release's use_pooler)
    mask_source: MaskSource = "attention"
    mask_threshold: float = 0.5  # attention masks: fraction of the map's maximum
    image_folder: str | None = None  # training images in <folder>/<concept>/ (null: made by the base pipeline)
    image_prompt: str | list[str] | None = None  # "{}" = the concept; a list is cycled; null: IMAGE_PROMPTS[type]
    image_scheduler: Literal["dpm_solver", "pipeline"] = "dpm_solver"  # the release: DPMSolverMultistepScheduler
    num_images: int = 8  # per concept
    image_steps: int = 30
    image_guidance_scale: float = 7.5
    train_seed: int = 0

    def erased_concepts(self) -> list[str] | None:
        return as_list(self.erase_concept)

    def mappings(self) -> list[str]:
        return one_each(self.mapping_concept, len(self.erased_concepts() or []))

    def templates(self) -> list[str]:
        return list(self.prompt_templates) if self.prompt_templates is not None else list(TEMPLATES[self.concept_type])

    def image_prompts(self) -> list[str]:
        return as_list(IMAGE_PROMPTS[self.concept_type] if self.image_prompt is None else self.image_prompt)

    def validate(self) -> None:
        if self.load_path is not None and Path(self.load_path).is_dir():
            self.load_path = str(released_unet_file(Path(self.load_path)))
        super().validate()
        check_concepts_and_targets(self.erase_concept, self.mapping_concept, "mapping_concept", "stage 1")
        erased = as_list(self.erase_concept)
        templates = self.prompt_templates
        require(templates is None or bool(templates), "prompt_templates must be null or a non-empty list")
        for template in templates or []:
            require(_one_slot(template), f"prompt template {template!r} must contain exactly one '{{}}' (the concept)")
        require(self.image_prompt is None or bool(as_list(self.image_prompt)), "image_prompt must be null, a "
                "string or a non-empty list")  # fmt: skip
        for template in [] if self.image_prompt is None else as_list(self.image_prompt):
            require(_one_slot(template), f"image_prompt {template!r} must contain exactly one '{{}}' (the concept)")
        for key in ("lora_rank", "train_steps", "train_batch_size", "num_images", "image_steps"):
            require(getattr(self, key) > 0, f"{key} must be > 0, got {getattr(self, key)}")
        require(self.preserve_coco >= 0, f"preserve_coco must be >= 0, got {self.preserve_coco}")
        for key in ("learning_rate", "max_grad_norm"):
            value = getattr(self, key)
            require(math.isfinite(value) and value > 0, f"{key} must be a finite number > 0, got {value}")
        for key in ("preserve_scale", "fuse_preserve_scale", "lamb", "weight_decay", "image_guidance_scale"):
            value = getattr(self, key)
            require(math.isfinite(value) and value >= 0, f"{key} must be a finite number >= 0, got {value}")
        require(0 < self.mask_threshold < 1, f"mask_threshold must be in (0, 1), got {self.mask_threshold}")
        require(0 <= self.train_seed < 2**63, "train_seed must be in [0, 2**63)")
        preserved = self.preserve_prompts is None and self.preserve_coco > 0 or bool(self.preserve_prompts)
        require(self.lamb > 0 or preserved and self.preserve_scale > 0 and self.fuse_preserve_scale > 0,
                "lamb = 0 needs preserved prompts with preserve_scale > 0 and fuse_preserve_scale > 0: without a "
                "ridge or a preservation term only the concept's own prompts constrain the closed forms, which are "
                "then ill-posed (set lamb > 0, e.g. 1000 as the release does for objects)")  # fmt: skip
        if self.mask_source == "folder":
            require(self.image_folder is not None,
                    "mask_source=folder reads <image>_mask.png next to each training image: set image_folder")  # fmt: skip
        if self.mask_source in MASKED_IMAGES.names():  # a world that draws its images with their masks
            source = MASKED_IMAGES.get(self.mask_source)
            require(self.image_folder is None,
                    f"mask_source={self.mask_source} renders its own images: image_folder must be null")  # fmt: skip
            bad = [c for c in erased if not source.covers(c)]
            require(not bad, f"mask_source={self.mask_source} needs {source.concepts}, got {bad}")
        if self.image_folder is not None:
            for concept in erased:
                images = folder_images(Path(self.image_folder), concept)
                missing = [p for p in images if mask_path(p) is None] if self.mask_source == "folder" else []
                if missing:
                    raise ConfigError(f"image_folder: {len(missing)} images of '{concept}' have no mask next to them "
                                      f"(e.g. '{missing[0]}' needs '{missing[0].stem}_mask.png')")  # fmt: skip


def released_unet_file(folder: Path) -> Path:
    """The UNet weights in a folder the release writes (its ``final_save_path``: a diffusers pipeline saved with
    ``save_pretrained``), or in that pipeline's ``unet/`` folder; ConfigError when there is none."""
    for where in (folder / "unet", folder):
        for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"):
            if (where / name).is_file():
                return where / name
    raise ConfigError(f"load_path '{folder}' is a folder without unet/diffusion_pytorch_model.safetensors (or .bin): "
                      "give MACE's saved pipeline folder (final_save_path), its unet/ folder, or a weights file")  # fmt: skip


def folder_images(folder: Path, concept: str) -> list[Path]:
    """The training images of ``concept`` in ``folder/<concept>/`` (masks excluded), sorted; ConfigError if none."""
    where = folder / concept
    if not where.is_dir():
        raise ConfigError(f"image_folder: '{where}' does not exist (one sub-folder per erased concept)")
    images = sorted(p for p in where.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.stem.endswith("_mask"))
    if not images:
        raise ConfigError(f"image_folder: '{where}' holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return images


def mask_path(image: Path) -> Path | None:
    for suffix in IMAGE_SUFFIXES:
        candidate = image.with_name(f"{image.stem}_mask{suffix}")
        if candidate.is_file():
            return candidate
    return None


# --- stage 1 and 3: the closed forms --------------------------------------------------------------------------------
def align_tokens(old_ids: list[int], new_ids: list[int], length: int) -> tuple[list[int], list[int]]:
    """Aligned positions of two prompts (unpadded token ids, begin- and end-of-text included) that differ in one span
    (the concept and its replacement), padded to ``length``: the common prefix position by position, then the common
    suffix, then the padding after it, paired from the end of the differing span on as far as both sequences go."""
    n = min(len(old_ids), len(new_ids))
    prefix = next((i for i in range(n) if old_ids[i] != new_ids[i]), n)
    end_old, end_new = len(old_ids), len(new_ids)
    while end_old > prefix and end_new > prefix and old_ids[end_old - 1] == new_ids[end_new - 1]:
        end_old, end_new = end_old - 1, end_new - 1
    tail = min(length - end_old, length - end_new)
    return (list(range(prefix)) + list(range(end_old, end_old + tail)),
            list(range(prefix)) + list(range(end_new, end_new + tail)))  # fmt: skip


def solve_right(cross: torch.Tensor, gram: torch.Tensor, keep: torch.Tensor, what: str) -> torch.Tensor:
    """X with X · gram = cross (gram symmetric positive semi-definite), float64. Directions that no term constrains
    (gram's null space: with lamb = 0, e.g. the direction every LayerNorm output is orthogonal to) keep ``keep``'s
    values, the λ → 0 limit of the ridge solution, instead of the arbitrary huge values a plain solve would give."""
    values, vectors = torch.linalg.eigh(gram)
    if not torch.isfinite(values).all() or values[-1] <= 0:
        raise RunError(f"MACE {what}: the normal equations have no information (all embeddings zero?); set lamb > 0")
    used = values > 1e-10 * values[-1]
    v, null = vectors[:, used], vectors[:, ~used]
    return cross @ v @ torch.diag(1 / values[used]) @ v.T + keep @ null @ null.T


def refinement_matrix(
    mapped_inputs: torch.Tensor,
    mapped_targets: torch.Tensor,
    preserve_gram: torch.Tensor,
    preserve_scale: float,
    lamb: float,
) -> torch.Tensor:
    """M with W' = W M for every matrix W: the minimiser of Σ‖W' e^f − W e^g‖² + λ₁ e^p-term + λ‖W' − W‖²,
    rows of ``mapped_inputs`` the e^f and of ``mapped_targets`` the aligned e^g; ``preserve_gram`` = mean_p Σ e^p e^pᵀ."""
    ef, eg = mapped_inputs.to(torch.float64), mapped_targets.to(torch.float64)
    eye = torch.eye(ef.shape[1], dtype=torch.float64, device=ef.device)
    base = preserve_scale * preserve_gram.to(ef.device, torch.float64) + lamb * eye
    return solve_right(eg.T @ ef + base, ef.T @ ef + base, eye, "stage 1 (cross-attention refinement)")


def fuse(
    refined: torch.Tensor,
    original: torch.Tensor,
    lora_deltas: list[torch.Tensor],
    concept_grams: list[torch.Tensor],
    preserve_gram: torch.Tensor,
    preserve_scale: float,
    lamb: float,
) -> torch.Tensor:
    """The minimiser of Σ_i Σ_{e∈E_i} ‖W* e − (W' + ΔW_i) e‖² + λ₂ mean_p Σ‖W* e^p − W e^p‖² + λ‖W* − W'‖², with
    ``concept_grams[i]`` = Σ_{e∈E_i} e eᵀ and ``preserve_gram`` = mean_p Σ e^p e^pᵀ; float64."""
    w1, w0 = refined.to(torch.float64), original.to(torch.float64)
    eye = torch.eye(w1.shape[1], dtype=torch.float64, device=w1.device)
    gp = preserve_gram.to(w1.device, torch.float64)
    cross = preserve_scale * w0 @ gp + lamb * w1
    gram = preserve_scale * gp + lamb * eye
    for delta, g in zip(lora_deltas, concept_grams, strict=True):
        g = g.to(w1.device, torch.float64)
        cross = cross + (w1 + delta.to(w1.device, torch.float64)) @ g
        gram = gram + g
    return solve_right(cross, gram, w1, "stage 3 (LoRA fusion)")


# --- stage 2: LoRAs and attention maps ------------------------------------------------------------------------------
class LoRA(torch.nn.Module):
    """ΔW = B A of rank r; A ~ N(0, 1/r²) and B = 0 as diffusers' LoRA layers start, so ΔW = 0 at the start."""

    def __init__(self, d_in: int, d_out: int, rank: int, generator: torch.Generator) -> None:
        super().__init__()
        self.down = torch.nn.Parameter(torch.randn(rank, d_in, generator=generator) / rank)
        self.up = torch.nn.Parameter(torch.zeros(d_out, rank))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.down.T.to(x.dtype) @ self.up.T.to(x.dtype)

    def delta(self) -> torch.Tensor:
        return (self.up @ self.down).detach()


class AttentionProbe:
    """Cross-attention processors that compute attention explicitly, add a LoRA to the key and value projections
    when one is set, and record the attention probabilities [batch·heads, pixels, tokens] while ``recording``."""

    def __init__(self, unet: torch.nn.Module) -> None:
        self.unet = unet
        self.loras: dict[str, tuple[LoRA, LoRA]] = {}
        self.maps: list[torch.Tensor] = []
        self.recording = False
        self._original: dict[str, Any] | None = None

    def __enter__(self) -> AttentionProbe:
        self._original = dict(self.unet.attn_processors)
        self.unet.set_attn_processor(
            {k: _Processor(self, k.removesuffix(".processor")) if ".attn2." in f".{k}" else v
             for k, v in self._original.items()}
        )  # fmt: skip
        return self

    def __exit__(self, *exc: object) -> None:
        if self._original is not None:
            self.unet.set_attn_processor(self._original)
        self.maps.clear()

    def layers(self) -> list[str]:
        return [k.removesuffix(".processor") for k in self.unet.attn_processors if ".attn2." in f".{k}"]


class _Processor:
    def __init__(self, probe: AttentionProbe, layer: str) -> None:
        self.probe, self.layer = probe, layer

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, *args: Any,
                 **kwargs: Any) -> torch.Tensor:  # fmt: skip
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        ndim = hidden_states.ndim
        if ndim == 4:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        attention_mask = attn.prepare_attention_mask(attention_mask, context.shape[1], context.shape[0])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        query, key, value = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
        lora = self.probe.loras.get(self.layer)
        if lora is not None:
            key, value = key + lora[0](context), value + lora[1](context)
        query, key, value = (attn.head_to_batch_dim(x) for x in (query, key, value))
        probs = attn.get_attention_scores(query, key, attention_mask)
        if self.probe.recording:
            self.probe.maps.append(probs)
        out = attn.batch_to_head_dim(torch.bmm(probs, value))
        out = attn.to_out[1](attn.to_out[0](out))
        if ndim == 4:
            out = out.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def _resize_mask(masks: torch.Tensor, pixels: int) -> torch.Tensor:
    """[B, H, W] masks at a layer's resolution with ``pixels`` positions, flattened to [B, pixels]: nearest-neighbour
    resizing, then thresholded at 0.5, as the release does (``F.interpolate(mode="nearest")``)."""
    height, width = masks.shape[-2:]
    scale = math.sqrt(height * width / pixels)
    h, w = round(height / scale), round(width / scale)
    if h * w != pixels:
        raise RunError(f"MACE: cannot match a {height}x{width} mask to an attention map of {pixels} positions")
    return (F.interpolate(masks[:, None].float(), size=(h, w), mode="nearest")[:, 0] > 0.5).reshape(len(masks), pixels)


def attention_energy(maps: list[torch.Tensor], masks: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Eq. 3 as the release computes it: Σ over layers of the (unsquared) Frobenius norm of the attention
    probabilities of the concept tokens inside the mask, all heads (and images of the batch) of a layer together;
    ``maps`` [B·heads, pixels, tokens], ``masks`` [B, H, W] (1 = where the concept is), ``positions`` [B, tokens]
    bool (the tokens to suppress). A layer with nothing selected adds 0 (and no NaN gradient)."""
    total = maps[0].new_zeros(())
    batch = len(masks)
    for probs in maps:
        heads = probs.shape[0] // batch
        p = probs.reshape(batch, heads, probs.shape[1], probs.shape[2])
        m = _resize_mask(masks, probs.shape[1])
        selected = torch.cat([p[b][:, m[b]][:, :, positions[b]].reshape(-1) for b in range(batch)])
        if selected.numel():
            total = total + torch.linalg.vector_norm(selected)
    return total


def importance_weights(num_timesteps: int) -> torch.Tensor:
    """The concept-focal importance sampling density ξ(t) over t = 0 … T−1 (Eq. 5), normalised."""
    t = torch.arange(num_timesteps, dtype=torch.float64)
    (t1, t2), g = CFIS_RANGE, CFIS_TEMPERATURE
    xi = torch.sigmoid(g * (t - t1)) - torch.sigmoid(g * (t - t2))
    return xi / xi.sum()


@dataclass
class ConceptData:
    """Everything stage 2 needs for one concept."""

    concept: str
    prompts: list[str]  # the concept's prompts (templates)
    positions: torch.Tensor  # [prompts, tokens] bool: tokens whose attention is suppressed
    latents: torch.Tensor  # [images, 2 (mean, std), C, h, w]
    masks: torch.Tensor  # [images, H, W] float 0/1, at image resolution
    image_prompts: list[str]  # the prompt each image was made from (attention masks are read with it)


class MACETrainer:
    """The three stages on a diffusers Stable Diffusion pipeline (changed in place: W' then W* are written)."""

    def __init__(self, pipe: Any, config: MACEConfig, device: str, height: int, width: int) -> None:
        self.pipe, self.config, self.device = pipe, config, device
        self.height, self.width = height, width
        self.unet, self.text_encoder, self.tokenizer = pipe.unet, pipe.text_encoder, pipe.tokenizer
        self.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
        for module in (pipe.unet, pipe.text_encoder, pipe.vae):
            module.requires_grad_(False)
        self.layers = cross_attention_projections(self.unet)
        self.original = {n: m.weight.detach().clone() for n, m in self.layers.items()}
        self.concepts = config.erased_concepts() or []
        self.templates = config.templates()
        self.info: dict[str, Any] = {}

    # --- text ---
    def tokenize(self, texts: list[str]) -> list[list[int]]:
        tok = self.tokenizer(texts, padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True)
        return [list(ids) for ids in tok.input_ids]

    @torch.no_grad()
    def encode(self, texts: list[str], rows: int = 256) -> torch.Tensor:
        """Last hidden states [N, tokens, d] exactly as the pipeline encodes prompts."""
        out = []
        for start in range(0, len(texts), rows):
            ids = torch.tensor(self.tokenize(texts[start : start + rows]), device=self.device)
            out.append(self.text_encoder(ids)[0].float())
        return torch.cat(out)

    def concept_positions(self, prompt: str, concept: str, with_end: bool) -> torch.Tensor:
        ids = self.tokenize([prompt])[0]
        concept_ids = list(self.tokenizer(concept, add_special_tokens=False).input_ids)
        marked = torch.zeros(len(ids), dtype=torch.bool)
        for i in range(len(ids) - len(concept_ids) + 1):
            if ids[i : i + len(concept_ids)] == concept_ids:
                marked[i : i + len(concept_ids)] = True
        if not marked.any():
            raise ConfigError(f"MACE: the tokens of '{concept}' do not appear in the prompt '{prompt}' within the "
                              f"tokenizer's {len(ids)} positions: use shorter prompt_templates")  # fmt: skip
        if with_end:
            marked |= torch.tensor([i == self.tokenizer.eos_token_id for i in ids])
        return marked

    def prompts_of(self, concept: str) -> list[str]:
        return [t.format(concept) for t in self.templates]

    def preserve_texts(self) -> list[str]:
        cfg = self.config
        if cfg.preserve_prompts is not None:
            return list(cfg.preserve_prompts)
        if cfg.preserve_coco == 0:
            return []
        from eval_learn.datasets.i2p import bundled_prompts
        from eval_learn.datasets.tables import prompt_rows, read_table

        return [row.prompt for row in prompt_rows(read_table(bundled_prompts("coco_10k.csv")))[: cfg.preserve_coco]]

    def preserve_gram(self) -> torch.Tensor:
        """mean over the preserved prompts of Σ_tokens e eᵀ (zeros when none)."""
        texts = self.preserve_texts()
        width = self.text_encoder.config.hidden_size
        if not texts:
            return torch.zeros(width, width, dtype=torch.float64)
        gram = torch.zeros(width, width, dtype=torch.float64, device=self.device)
        for start in range(0, len(texts), 256):
            e = self.encode(texts[start : start + 256]).reshape(-1, width).to(torch.float64)
            gram += e.T @ e
        return (gram / len(texts)).cpu()

    def mapping_rows(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(e^f, e^g): the aligned token embeddings of every concept's prompts and their mapped versions."""
        ef, eg = [], []
        length = self.tokenizer.model_max_length

        def unpadded(texts: list[str]) -> list[list[int]]:
            return [list(ids) for ids in self.tokenizer(texts, max_length=length, truncation=True).input_ids]

        for concept, target in zip(self.concepts, self.config.mappings(), strict=True):
            old = [t.format(concept) for t in self.templates]
            new = [" ".join(t.format(target).split()) for t in self.templates]
            e_old, e_new = self.encode(old), self.encode(new)
            for k, (a, b) in enumerate(zip(unpadded(old), unpadded(new), strict=True)):
                i, j = align_tokens(a, b, length)
                ef.append(e_old[k, i])
                eg.append(e_new[k, j])
        return torch.cat(ef).to(torch.float64), torch.cat(eg).to(torch.float64)

    # --- stage 1 ---
    def refine(self, preserve_gram: torch.Tensor) -> None:
        cfg = self.config
        ef, eg = self.mapping_rows()
        m = refinement_matrix(ef, eg, preserve_gram, cfg.preserve_scale, cfg.lamb)
        residual = []
        for layer in self.layers.values():
            w = layer.weight.detach().to(torch.float64)
            refined = w @ m.to(w.device)
            before = (ef.to(w.device) @ w.T - eg.to(w.device) @ w.T).norm()
            after = (ef.to(w.device) @ refined.T - eg.to(w.device) @ w.T).norm()
            residual.append(float(after / before) if before > 0 else 0.0)
            with torch.no_grad():
                layer.weight.copy_(refined.to(layer.weight.dtype))
        self.info.update(mapped_token_vectors=len(ef), refinement_residual_max=max(residual))

    # --- training data ---
    @torch.no_grad()
    def images(self, index: int, concept: str) -> tuple[torch.Tensor, torch.Tensor | None, list[str]]:
        """Training images of one concept as [N, 3, H, W] in [0, 1], their masks [N, H, W] when the source gives
        them (folder, miniworld), and the prompt of each image (``image_prompt``, cycled)."""
        cfg, n = self.config, self.config.num_images
        seeds = [cfg.train_seed + index * n + i for i in range(n)]
        image_prompts = [t.format(concept) for t in cfg.image_prompts()]
        prompts = [image_prompts[i % len(image_prompts)] for i in range(n)]
        if cfg.mask_source in MASKED_IMAGES.names():
            try:
                images, masks = MASKED_IMAGES.get(cfg.mask_source).render(concept, seeds, self.height, self.width)
            except ConfigError as err:
                raise ConfigError(f"mask_source={cfg.mask_source}: {err}") from None
            pixels = torch.stack([torch.from_numpy(img).permute(2, 0, 1).float() / 255 for img in images])
            return pixels, torch.stack([torch.from_numpy(mask).float() for mask in masks]), prompts
        if cfg.image_folder is not None:
            from PIL import Image

            paths = folder_images(Path(cfg.image_folder), concept)
            pixels, masks = [], []
            for path in paths:
                img = Image.open(path).convert("RGB").resize((self.width, self.height), Image.BILINEAR)
                pixels.append(torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255)
                if cfg.mask_source == "folder":
                    found = mask_path(path)
                    assert found is not None  # validated
                    m = Image.open(found).convert("L").resize((self.width, self.height), Image.NEAREST)
                    masks.append(torch.from_numpy(np.asarray(m).copy()).float().div(255).gt(0.5).float())
            return torch.stack(pixels), torch.stack(masks) if masks else None, [image_prompts[i % len(image_prompts)]
                                                                                 for i in range(len(paths))]  # fmt: skip
        pipe = self.pipe
        if cfg.image_scheduler == "dpm_solver":  # the release's sampler for its training images, on a copy
            from diffusers import DPMSolverMultistepScheduler

            pipe = type(self.pipe)(**{**self.pipe.components,
                                      "scheduler": DPMSolverMultistepScheduler.from_config(self.pipe.scheduler.config)})  # fmt: skip
        out = []
        for start in tqdm(range(0, n, 8), desc=f"MACE images of {concept}", leave=False, mininterval=2.0):
            batch = range(start, min(start + 8, n))
            out.append(pipe(
                prompt=[prompts[i] for i in batch],
                generator=[torch.Generator("cpu").manual_seed(seeds[i]) for i in batch],
                num_inference_steps=cfg.image_steps, guidance_scale=cfg.image_guidance_scale,
                height=self.height, width=self.width, output_type="pt",
            ).images.float().cpu())  # fmt: skip
        return torch.cat(out), None, prompts

    @torch.no_grad()
    def latent_stats(self, pixels: torch.Tensor) -> torch.Tensor:
        vae = self.pipe.vae
        dist = vae.encode(pixels.to(self.device, vae.dtype) * 2 - 1).latent_dist
        return torch.stack([dist.mean, dist.std], dim=1).float()

    @torch.no_grad()
    def attention_masks(self, probe: AttentionProbe, latents: torch.Tensor, prompts: list[str], concept: str,
                        generator: torch.Generator) -> torch.Tensor:  # fmt: skip
        """The base UNet's cross-attention to the concept's own tokens on each image, over layers, heads and
        MASK_TIMESTEPS, normalised by its maximum and thresholded at ``mask_threshold``: [N, H, W] 0/1."""
        x0 = latents[:, 0] * self.pipe.vae.config.scaling_factor
        text = self.encode(prompts)
        positions = torch.stack([self.concept_positions(p, concept, with_end=False) for p in prompts]).to(self.device)
        heat = torch.zeros(len(x0), self.height, self.width, device=self.device)
        probe.recording = True
        for t in MASK_TIMESTEPS:
            step = torch.full((len(x0),), min(t, self.scheduler.config.num_train_timesteps - 1), device=self.device)
            noise = torch.randn(x0.shape, generator=generator).to(self.device)
            probe.maps.clear()
            self.unet(self.scheduler.add_noise(x0, noise, step), step, encoder_hidden_states=text)
            for probs in probe.maps:
                heads, pixels = probs.shape[0] // len(x0), probs.shape[1]
                per = probs.reshape(len(x0), heads, pixels, -1).mean(1)  # [N, pixels, tokens]
                amount = (per * positions[:, None, :].float()).sum(-1)
                scale = math.sqrt(self.height * self.width / pixels)
                h, w = round(self.height / scale), round(self.width / scale)
                heat += F.interpolate(amount.reshape(-1, 1, h, w), size=(self.height, self.width), mode="bilinear",
                                      align_corners=False)[:, 0]  # fmt: skip
        probe.recording = False
        probe.maps.clear()
        peak = heat.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]
        return (heat / peak >= self.config.mask_threshold).float().cpu()

    def prepare_data(self, probe: AttentionProbe) -> list[ConceptData]:
        cfg = self.config
        generator = torch.Generator("cpu").manual_seed(cfg.train_seed)
        data = []
        for index, concept in enumerate(self.concepts):
            prompts = self.prompts_of(concept)
            positions = torch.stack([self.concept_positions(p, concept, cfg.include_end_tokens) for p in prompts])
            pixels, masks, image_prompts = self.images(index, concept)
            latents = self.latent_stats(pixels)
            if masks is None:
                if cfg.mask_source == "attention":
                    masks = self.attention_masks(probe, latents, image_prompts, concept, generator)
                else:  # full
                    masks = torch.ones(len(pixels), pixels.shape[-2], pixels.shape[-1])
            data.append(ConceptData(concept, prompts, positions, latents, masks, image_prompts))
        self.info["mask_fraction"] = {d.concept: round(float(d.masks.mean()), 4) for d in data}
        return data

    # --- stage 2 ---
    def new_loras(self, probe: AttentionProbe, generator: torch.Generator) -> list[torch.nn.Parameter]:
        probe.loras = {}
        for layer in probe.layers():
            k, v = self.layers[f"{layer}.to_k"], self.layers[f"{layer}.to_v"]
            probe.loras[layer] = (
                LoRA(k.in_features, k.out_features, self.config.lora_rank, generator).to(self.device),
                LoRA(v.in_features, v.out_features, self.config.lora_rank, generator).to(self.device),
            )
        return [p for pair in probe.loras.values() for lora in pair for p in lora.parameters()]

    def loss(self, probe: AttentionProbe, data: ConceptData, images: torch.Tensor, prompts: torch.Tensor,
             timesteps: torch.Tensor, generator: torch.Generator) -> torch.Tensor:  # fmt: skip
        stats = data.latents[images.to(data.latents.device)]
        x0 = stats[:, 0] + stats[:, 1] * torch.randn(stats[:, 0].shape, generator=generator).to(self.device)
        x0 = x0 * self.pipe.vae.config.scaling_factor
        noise = torch.randn(x0.shape, generator=generator).to(self.device)
        x_t = self.scheduler.add_noise(x0, noise, timesteps)
        text = self.encode([data.prompts[int(i)] for i in prompts])
        return self.attention_loss(probe, x_t, timesteps, text, data.masks[images], data.positions[prompts])

    def attention_loss(self, probe: AttentionProbe, x_t: torch.Tensor, timesteps: torch.Tensor, text: torch.Tensor,
                       masks: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:  # fmt: skip
        """Stage 2's loss for given noised latents, timesteps, text embeddings, masks and token positions."""
        probe.maps.clear()
        probe.recording = True
        try:
            self.unet(x_t, timesteps, encoder_hidden_states=text)
        finally:
            probe.recording = False
        loss = attention_energy(probe.maps, masks.to(self.device), positions.to(self.device))
        probe.maps.clear()
        return loss

    def train_lora(self, probe: AttentionProbe, data: ConceptData, generator: torch.Generator) -> list[float]:
        cfg = self.config
        params = self.new_loras(probe, generator)
        optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, betas=(0.9, 0.999), weight_decay=cfg.weight_decay,
                                      eps=1e-8)  # fmt: skip
        num_t = self.scheduler.config.num_train_timesteps
        cfis = importance_weights(num_t) if cfg.importance_sampling else None

        def step_loss() -> torch.Tensor:
            images = torch.randint(len(data.latents), (cfg.train_batch_size,), generator=generator)
            prompts = torch.randint(len(data.prompts), (cfg.train_batch_size,), generator=generator)
            if cfis is not None:
                t = torch.multinomial(cfis, cfg.train_batch_size, replacement=True, generator=generator)
            else:
                t = torch.randint(0, num_t, (cfg.train_batch_size,), generator=generator)
            return self.loss(probe, data, images, prompts, t.to(self.device), generator)

        # no checkpoint inside one LoRA's training: the run saves after each concept's LoRA (run())
        named = {str(i): p for i, p in enumerate(params)}
        loop = TrainingLoop(f"MACE LoRA '{data.concept}'", cfg.train_steps, optimizer, named,
                            f"learning_rate={cfg.learning_rate}", max_grad_norm=cfg.max_grad_norm)  # fmt: skip
        return loop.run(step_loss)

    # --- all three ---
    def data(self, probe: AttentionProbe, checkpoint: TrainingCheckpoint | None) -> list[ConceptData]:
        """Stage 2's images and masks: from a killed run's saved state, or made (and saved for a later kill)."""
        if checkpoint is not None and (saved := checkpoint.load()) is not None:
            data = [ConceptData(**{**d, "latents": d["latents"].to(self.device)}) for d in saved["data"]]
            self.info["mask_fraction"] = {d.concept: round(float(d.masks.mean()), 4) for d in data}
            return data
        data = self.prepare_data(probe)
        if checkpoint is not None:
            checkpoint.maybe_save(0, lambda: {"data": [{**asdict(d), "latents": d.latents.cpu()} for d in data]},
                                  force=True)  # fmt: skip
        return data

    def run(self, checkpoint: TrainingCheckpoint | None = None) -> Weights:
        """All three stages. With ``checkpoint``, the state is saved after each concept's LoRA (at most once a
        minute), so a killed run retrains at most the LoRAs since the last save."""
        cfg, start = self.config, time.perf_counter()
        generator = torch.Generator("cpu").manual_seed(cfg.train_seed)
        preserve_gram = self.preserve_gram()
        with AttentionProbe(self.unet) as probe:
            # base model: images and attention masks come before any edit
            data = self.data(probe, checkpoint.companion("data") if checkpoint else None)
            data_s = time.perf_counter() - start
            self.refine(preserve_gram)
            refined = {n: m.weight.detach().clone() for n, m in self.layers.items()}
            deltas: dict[str, list[torch.Tensor]] = {n: [] for n in self.layers}
            losses: dict[str, list[float]] = {}
            if checkpoint is not None and (saved := checkpoint.load()) is not None:
                deltas = {n: [t.to(self.device) for t in ts] for n, ts in saved["deltas"].items()}
                losses = saved["losses"]
                generator.set_state(saved["generator"])
            for d in data[len(losses) :]:
                losses[d.concept] = self.train_lora(probe, d, generator)
                for layer, (k, v) in probe.loras.items():
                    deltas[f"{layer}.to_k"].append(k.delta())
                    deltas[f"{layer}.to_v"].append(v.delta())
                if checkpoint is not None:
                    checkpoint.maybe_save(len(losses), lambda: {
                        "deltas": {n: [t.detach().cpu() for t in ts] for n, ts in deltas.items()},
                        "losses": losses, "generator": generator.get_state()})  # fmt: skip
            probe.loras = {}
        train_s = time.perf_counter() - start - data_s
        grams = []
        for d in data:
            e = self.encode(d.prompts).reshape(-1, self.text_encoder.config.hidden_size).to(torch.float64)
            grams.append(e.T @ e)
        weights: Weights = {}
        for name, layer in self.layers.items():
            fused = fuse(refined[name], self.original[name], deltas[name], grams, preserve_gram,
                         cfg.fuse_preserve_scale, cfg.lamb)  # fmt: skip
            with torch.no_grad():
                layer.weight.copy_(fused.to(layer.weight.dtype))
            weights[f"unet.{name}.weight"] = layer.weight.detach().clone()
        self.info.update(
            edited_matrices=len(weights), preserved_prompts=len(self.preserve_texts()), data_s=round(data_s, 3),
            training_s=round(train_s, 3), total_s=round(time.perf_counter() - start, 3),
            first_loss={c: v[0] for c, v in losses.items()}, last_loss={c: v[-1] for c, v in losses.items()},
            losses=losses,
        )  # fmt: skip
        return weights


WEIGHT_FIELDS = tuple(f.name for f in fields(MACEConfig) if f.name not in NON_IMAGE_FIELDS)


class MACE(Technique):
    name = "mace"
    config_cls = MACEConfig
    config: MACEConfig
    algorithm_version = 2  # 2: the release's unsquared loss, nearest-resized masks, DPM-Solver training images
    weight_fields = WEIGHT_FIELDS

    def weights_key(self) -> str:
        key = super().weights_key()
        folder = self.config.image_folder
        if folder is None:
            return key
        files = sorted(p for c in self.config.erased_concepts() or [] for p in (Path(folder) / c).iterdir())
        return digest_of({"key": key, "files": [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in files]},
                         length=24)  # fmt: skip

    def build_weights(self, pipe: Any) -> Weights:
        cfg, model = self.config, self.context.model
        trainer = MACETrainer(pipe, cfg, self.device, model.height, model.width)
        log.info("MACE: erasing %s (mapped to %s) with %d LoRAs of rank %d, %d steps each, masks from %s",
                 trainer.concepts, cfg.mappings(), len(trainer.concepts), cfg.lora_rank, cfg.train_steps,
                 cfg.mask_source)  # fmt: skip
        weights = trainer.run(self.checkpoint)
        self.info.update(trainer.info)
        return weights

    def failure_hint(self) -> str:
        return f" (learning_rate={self.config.learning_rate}, lamb={self.config.lamb}: a larger lamb is better conditioned)"
