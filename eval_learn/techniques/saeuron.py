"""``saeuron``: SAeUron — Cywiński, Deja, "SAeUron: Interpretable Concept Unlearning in Diffusion Models with Sparse
Autoencoders", ICML 2025 (arXiv:2501.18052). Release: cywinski/SAeUron.

No UNet weight changes. A TopK sparse autoencoder (:mod:`eval_learn.techniques.sae_training`) is trained on one UNet
block's activations; its latents, averaged over positions, are read on the concept's prompts and on other concepts'
prompts at every sampling step. Per step t the release's score (``SAE/unlearning_utils.py``) is

    score_t = mean_c / sum(mean_c) − mean_o / sum(mean_o)

(mean_c: the concept's mean latents, mean_o: the other prompts' pooled), and the features whose score exceeds the
``percentile``-th percentile of all scores are selected. While sampling, a hook on the block (``utils/hooks.py``,
``SAEMaskedUnlearningHook``) encodes every position of both CFG halves and, where a selected latent exceeds its mean
over all concepts, multiplies it by ``multiplier`` × its mean on the concept (negative: the feature is turned
against itself); the block's output becomes the input plus the decoded change, which equals the release's
"ablated reconstruction plus reconstruction error". With no feature selected the output is the block's own, bit for
bit.

The SAE and the per-step latent means are this technique's weights: cached by the base class (a rerun with the same
settings does not retrain), written by ``save_path``. ``load_path`` takes either such a file or a published SAE in
the release's layout (``<hookpoint>/sae.safetensors`` with ``cfg.json`` beside it, e.g. the authors' SD-1.4 SAEs);
for a published SAE the latent means are read from the model at load time (not cached).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from eval_learn.configs import require
from eval_learn.errors import RunError
from eval_learn.models.pipeline import load_pipeline
from eval_learn.techniques import weights as weight_files
from eval_learn.techniques.base import Technique, WeightsConfig
from eval_learn.techniques.sae_training import (
    TopKSAE,
    block_output,
    collect_activations,
    mean_latents,
    to_rows,
    train_sae,
)

log = logging.getLogger(__name__)

SAE_PREFIX = "saeuron_sae."
STATS = ("concept_mean", "others_mean", "all_concepts_mean")
STATS_PREFIX = "saeuron_stats."
ERROR_TERMS = ("release", "exact")


@dataclass
class SAeUronConfig(WeightsConfig):
    num_inference_steps: int | None = 100  # the release samples 100 steps at guidance 9.0
    guidance_scale: float | None = 9.0
    erase_concept: str = "nudity"
    other_concepts: list[str] = field(default_factory=lambda: ["a person", "a landscape", "an animal", "a building"])
    prompt_templates: list[str] = field(default_factory=lambda: ["{}", "a photo of {}", "a painting of {}"])
    hookpoint: str = "up_blocks.1.attentions.2"  # the UNet block (release: SD-1.4 up.1.2 for styles, up.1.1 objects)
    expansion_factor: int = 16
    k: int = 32
    train_steps: int = 2000
    train_batch_size: int = 4096  # activation rows per step
    learning_rate: float = 4.0e-4
    train_seed: int = 42
    percentile: float = 99.999  # features above this percentile of the score are selected
    multiplier: float = -1.0  # a selected latent becomes latent × multiplier × its mean on the concept
    # "release": the block returns ablated reconstruction + (reconstruction − input), as the release's hook computes
    # it (utils/hooks.py: error = recon − input, added back); "exact": input + decoded change, i.e. ablated
    # reconstruction + (input − reconstruction), which leaves the block's output alone where nothing is scaled
    error_term: str = "release"

    def erased_concepts(self) -> list[str] | None:
        return [self.erase_concept]

    def validate(self) -> None:
        super().validate()
        require(bool(self.erase_concept.strip()), "erase_concept must be non-empty")
        require(len(self.other_concepts) > 0, "other_concepts must name at least one concept (the score compares)")
        require(self.erase_concept not in self.other_concepts, "other_concepts must not contain erase_concept")
        require(len(self.prompt_templates) > 0 and all("{}" in t for t in self.prompt_templates),
                "prompt_templates must be a non-empty list of texts with a '{}' for the concept")  # fmt: skip
        require(bool(self.hookpoint.strip()), "hookpoint (a UNet block, e.g. up_blocks.1.attentions.2) must be set")
        require(self.expansion_factor >= 1, f"expansion_factor must be >= 1, got {self.expansion_factor}")
        require(self.k >= 1, f"k must be >= 1, got {self.k}")
        require(self.train_steps >= 1, f"train_steps must be >= 1, got {self.train_steps}")
        require(self.train_batch_size >= 1, f"train_batch_size must be >= 1, got {self.train_batch_size}")
        require(self.learning_rate > 0, f"learning_rate must be > 0, got {self.learning_rate}")
        require(0 <= self.percentile <= 100, f"percentile must be in [0, 100], got {self.percentile}")
        require(
            self.error_term in ERROR_TERMS,
            f"error_term must be one of {', '.join(ERROR_TERMS)}, got '{self.error_term}'",
        )


def latent_statistics(means: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """From each concept's latents [prompts, steps, latents] (the erased concept first): the concept's mean, the
    other prompts' pooled mean, and the mean of the per-concept means (the release's masking threshold)."""
    return {
        "concept_mean": means[0].float().mean(0),
        "others_mean": torch.cat(means[1:]).float().mean(0),
        "all_concepts_mean": torch.stack([m.float().mean(0) for m in means]).mean(0),
    }


def select_features(stats: dict[str, torch.Tensor], percentile: float, eps: float = 1e-8) -> list[torch.Tensor]:
    """Per step, the ids of the features whose score exceeds the ``percentile``-th percentile of all scores."""
    concept, others = stats["concept_mean"].float(), stats["others_mean"].float()
    scores = concept / (concept.sum(-1, keepdim=True) + eps) - others / (others.sum(-1, keepdim=True) + eps)
    return [torch.where(s > torch.quantile(s, percentile / 100.0))[0] for s in scores]


class SAeUronHook:
    """Forward hook on the block: scales the selected features of every position, step by step."""

    def __init__(
        self, sae: TopKSAE, stats: dict[str, torch.Tensor], percentile: float, multiplier: float, error_term: str
    ) -> None:
        self.sae = sae
        self.error_term = error_term
        self.features = select_features(stats, percentile)
        self.scales = [stats["concept_mean"][t, f].float() * multiplier for t, f in enumerate(self.features)]
        self.thresholds = [stats["all_concepts_mean"][t, f].float() for t, f in enumerate(self.features)]
        self.step = 0

    def __call__(self, module: torch.nn.Module, args: Any, output: Any) -> Any:
        # Sampling runs without gradients (every pipeline call); a call with gradients on is an attack's
        # differentiable loss on the UNet, which SAeUron leaves as trained: like every sampling-time technique's
        # change, the edit applies to the images that are rendered and judged, and its step count stays the sampler's.
        if torch.is_grad_enabled():
            return output
        if self.step >= len(self.features):
            raise RunError(
                f"SAeUron: the block ran {self.step + 1} times in one sampling call; its features were selected for "
                f"{len(self.features)} steps (sample with the num_inference_steps the SAE statistics were read at)"
            )
        features, step = self.features[self.step], self.step
        self.step += 1
        if features.numel() == 0 and self.error_term == "exact":
            return output
        hidden = block_output(output)
        b, c, h, w = hidden.shape
        sae = self.sae.to(hidden.device)
        rows = to_rows(hidden).reshape(-1, c).float()
        all_latents = sae.encode(rows)
        latents = all_latents[:, features]
        scale, threshold = self.scales[step].to(hidden.device), self.thresholds[step].to(hidden.device)
        change = torch.where(latents > threshold, latents * scale - latents, torch.zeros_like(latents))
        delta = change @ sae.W_dec[features]
        if self.error_term == "release":  # ablated recon + (recon − input) = input + change + 2 (recon − input)
            delta = delta + 2 * (sae.decode(all_latents) - rows)
        edited = hidden + delta.reshape(b, h, w, c).permute(0, 3, 1, 2).to(hidden.dtype)
        if isinstance(output, torch.Tensor):
            return edited
        if isinstance(output, tuple):
            return (edited, *output[1:])
        output.sample = edited
        return output


class SAeUron(Technique):
    name = "saeuron"
    config_cls = SAeUronConfig
    config: SAeUronConfig
    weight_fields = ("erase_concept", "other_concepts", "prompt_templates", "hookpoint", "expansion_factor", "k",
                     "train_steps", "train_batch_size", "learning_rate", "train_seed", "num_inference_steps",
                     "guidance_scale")  # fmt: skip

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sae: TopKSAE | None = None
        self.stats: dict[str, torch.Tensor] = {}
        self.hook: SAeUronHook | None = None

    def _block(self, pipe: Any) -> torch.nn.Module:
        try:
            return pipe.unet.get_submodule(self.config.hookpoint)
        except AttributeError:
            raise RunError(f"SAeUron: the UNet has no block '{self.config.hookpoint}'") from None

    def _statistics(self, sae: TopKSAE, per_concept: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        return latent_statistics([mean_latents(sae, acts) for acts in per_concept])

    def _activations(self, pipe: Any) -> list[torch.Tensor]:
        cfg, settings = self.config, self.generation_settings()
        block = self._block(pipe)
        out = []
        for concept in [cfg.erase_concept, *cfg.other_concepts]:
            prompts = [t.format(concept) for t in cfg.prompt_templates]
            out.append(collect_activations(pipe, block, prompts, steps=settings["num_inference_steps"],
                                           guidance_scale=settings["guidance_scale"], height=settings["height"],
                                           width=settings["width"], seed=cfg.train_seed))  # fmt: skip
        return out

    def build_weights(self, pipe: Any) -> weight_files.Weights:
        cfg = self.config
        per_concept = self._activations(pipe)
        rows = torch.cat([a.reshape(-1, a.shape[-1]) for a in per_concept])
        sae, losses = train_sae(rows, expansion_factor=cfg.expansion_factor, k=cfg.k, steps=cfg.train_steps,
                                batch_size=cfg.train_batch_size, learning_rate=cfg.learning_rate, seed=cfg.train_seed,
                                checkpoint=self.checkpoint)  # fmt: skip
        self.info.update(sae_rows=int(rows.shape[0]), sae_fvu_first=losses[0], sae_fvu_last=losses[-1])
        stats = self._statistics(sae, per_concept)
        return {**{SAE_PREFIX + k: v for k, v in sae.tensors().items()},
                **{STATS_PREFIX + k: v for k, v in stats.items()}}  # fmt: skip

    def read_weights(self, path: Path) -> weight_files.Weights:
        """Our own file, or a published SAE (the release's ``sae.safetensors`` + ``cfg.json``) whose latent means are
        then read from the model."""
        weights = weight_files.read(path, require_digest=False)
        if any(k.startswith(SAE_PREFIX) for k in weights):
            return weights
        if not {"encoder.weight", "encoder.bias", "W_dec", "b_dec"} <= set(weights):
            raise weight_files.DamagedWeights("neither a SAeUron weights file nor an SAE (encoder.weight, W_dec, ...)")
        cfg_file = path.parent / "cfg.json"
        k = int(json.loads(cfg_file.read_text()).get("k", self.config.k)) if cfg_file.is_file() else self.config.k
        sae = TopKSAE.from_tensors({n: weights[n].float() for n in ("encoder.weight", "encoder.bias", "W_dec", "b_dec")},
                                   k)  # fmt: skip
        pipe = load_pipeline(self.context.model, self.device, torch.float32)
        stats = self._statistics(sae, self._activations(pipe))
        self.info["sae_k"] = k
        return {**{SAE_PREFIX + n: v for n, v in sae.tensors().items()},
                **{STATS_PREFIX + n: v for n, v in stats.items()}}  # fmt: skip

    def apply_weights(self, pipe: Any, weights: weight_files.Weights) -> dict[str, int]:
        """The SAE and statistics stay with the technique: the pipeline's own weights are untouched."""
        state = {k.removeprefix(SAE_PREFIX): v.float() for k, v in weights.items() if k.startswith(SAE_PREFIX)}
        self.sae = TopKSAE.from_tensors(state, int(self.info.get("sae_k", self.config.k))).eval()
        self.stats = {k.removeprefix(STATS_PREFIX): v for k, v in weights.items() if k.startswith(STATS_PREFIX)}
        return {"sae": len(state), "statistics": len(self.stats)}

    def modify_pipeline(self, pipe: Any) -> Any:
        if self.sae is None:
            self.apply_weights(pipe, self.weights or {})
        cfg = self.config
        self.hook = SAeUronHook(self.sae, self.stats, cfg.percentile, cfg.multiplier, cfg.error_term)
        counts = [int(f.numel()) for f in self.hook.features]
        self.info.update(selected_features_per_step=counts)
        log.info("SAeUron: hook on %s, %s features selected per step", self.config.hookpoint, counts)
        self._block(pipe).register_forward_hook(self.hook)
        return pipe

    def sampling_arguments(self, pipe: Any, prompts: list[str]) -> dict[str, Any]:
        if self.hook is not None:
            self.hook.step = 0  # a new sampling call starts at the first step's features
        return {}

    def sampling_settings(self) -> dict[str, Any]:
        return {"hookpoint": self.config.hookpoint, "percentile": self.config.percentile,
                "multiplier": self.config.multiplier, "error_term": self.config.error_term}  # fmt: skip
