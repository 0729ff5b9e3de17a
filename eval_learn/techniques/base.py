"""What every technique is: a base pipeline, possibly with trained or edited weights, possibly sampled differently.

The base class owns what all techniques share, so that a new technique is one module with the algorithm only:

- **Weights.** A technique that trains or edits (ESD, UCE, MACE, CA, ...) implements :meth:`Technique.build_weights`
  and lists the config fields that shape the weights in ``weight_fields``. The base class caches the result
  (:mod:`eval_learn.techniques.weights`: any component, safetensors, verified by digest) under a key of those fields,
  the algorithm version and the base model's fingerprint; concurrent runs of the same key wait for each other instead
  of training twice; ``load_path`` skips building, ``save_path`` writes a copy. Non-finite weights are refused.
- **Sampling.** Images are made by the shared generation loop (:mod:`eval_learn.engine.sampling`), which owns
  per-prompt seeds, batching and per-image metadata. A technique changes sampling through
  :meth:`Technique.modify_pipeline` (another pipeline class built from the same components, hooks, added modules) and
  :meth:`Technique.sampling_arguments` (extra call arguments such as ``negative_prompt``, ``prompt_embeds`` or
  ``callback_on_step_end``), and says what it did per image in :meth:`Technique.sampling_settings`.
- **Fingerprint.** :meth:`Technique.fingerprint` names everything about the technique that changes pixels (its name,
  algorithm version, the config fields that affect images, the digest of its weights); the image store keys on it.

The pipeline is loaded lazily, on the first image that is not already in the image store: a rerun that finds every
image and judgement cached never loads the model.
"""

from __future__ import annotations

import gc
import logging
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from eval_learn.configs import require
from eval_learn.errors import ConfigError, NonFiniteError, RunError
from eval_learn.guidance import check_guidance_scale, effective_guidance_scale
from eval_learn.models.pipeline import load_pipeline
from eval_learn.runtime import RunContext, resolve_device
from eval_learn.storage import digest_of, locked, remove_quietly
from eval_learn.technique_fields import KEY_NAMES, NON_IMAGE_FIELDS, RENAMED_FIELDS
from eval_learn.techniques import weights as weight_files
from eval_learn.techniques.checkpoint import TrainingCheckpoint

log = logging.getLogger(__name__)


@dataclass
class TechniqueConfig:
    """Settings every technique has. ``None`` means "the base model's default"."""

    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    device: str | None = None  # overrides the run's device for this technique
    # Old key -> new key, read by configs.from_mapping (a config with the old key works, with a warning).
    renamed_keys: ClassVar[dict[str, str]] = RENAMED_FIELDS

    def erased_concepts(self) -> list[str] | None:
        """The concepts this technique removes (None: it removes nothing, e.g. the baseline)."""
        return None

    def validate(self) -> None:
        require(self.num_inference_steps is None or self.num_inference_steps > 0, "num_inference_steps must be > 0")
        check_guidance_scale(self.guidance_scale)
        if self.device is not None:
            resolve_device(self.device)


@dataclass
class WeightsConfig(TechniqueConfig):
    """Settings of a technique that trains or edits weights."""

    save_path: str | None = None  # also write the weights here (.safetensors, or .pt/.pth/.bin as a torch state dict)
    load_path: str | None = None  # use these weights and skip training (.safetensors, .pt, .pth, .bin, .ckpt)
    use_cache: bool = True  # reuse weights built with the same settings and base model

    def validate(self) -> None:
        super().validate()
        if self.save_path is not None:
            weight_files.check_suffix(self.save_path, "save_path")
        if self.load_path is not None:
            weight_files.check_suffix(self.load_path, "load_path")
            path = Path(self.load_path)
            require(path.is_file(), f"load_path '{path}' " + ("is a folder" if path.is_dir() else "does not exist"))


class Technique:
    name: ClassVar[str]
    config_cls: ClassVar[type[TechniqueConfig]] = TechniqueConfig
    # Bump when a change to the algorithm would change its weights or images for the same config.
    algorithm_version: ClassVar[int] = 1
    # Config fields that shape the trained or edited weights (the weight-cache key); empty: no weights.
    weight_fields: ClassVar[tuple[str, ...]] = ()
    # The component that a state dict without a component prefix belongs to (a plain UNet .pt file).
    default_component: ClassVar[str] = "unet"
    # How often a training loop saves its state (a killed run resumes from the last save).
    checkpoint_every_s: ClassVar[float] = 60.0
    # True: the images come from the technique itself (images made elsewhere), not from the pipeline; no model loads.
    supplies_images: ClassVar[bool] = False

    def __init__(self, config: TechniqueConfig, context: RunContext) -> None:
        self.config = config
        self.context = context
        self.device = resolve_device(config.device) if config.device else context.device
        self.info: dict[str, Any] = {}  # recorded in the report (cache hits, training losses, ...)
        self.weights: weight_files.Weights | None = None
        self.weights_sha256: str | None = None
        self._pipe: Any = None
        self._modified = False
        # Set while weights are built for the cache: a training loop saves its state there and resumes from it.
        self.checkpoint: TrainingCheckpoint | None = None

    # --- what subclasses implement -------------------------------------------------------------------------------
    def build_weights(self, pipe: Any) -> weight_files.Weights:
        """Train or edit ``pipe`` (the base pipeline, fp32, on the technique's device) and return the changed
        tensors as ``{"<component>.<parameter>": tensor}``. ``pipe`` may be changed in place."""
        raise NotImplementedError

    def modify_pipeline(self, pipe: Any) -> Any:
        """Change how the pipeline samples (another pipeline class over the same components, hooks); called once."""
        return pipe

    def sampling_arguments(self, pipe: Any, prompts: list[str]) -> dict[str, Any]:
        """Extra arguments of one pipeline call over ``prompts`` (one entry per row, padding rows included)."""
        return {}

    def sampling_settings(self) -> dict[str, Any]:
        """What this technique did at sampling time, recorded with every image (e.g. the negative prompt used)."""
        return {}

    def check_plan(self, requests: list[Any]) -> None:
        """Called with every generation request of the run before any image is made or judged."""

    def supplied_images(self, requests: list[Any]) -> list[Any]:
        """The images of ``requests`` (uint8 [H, W, 3] arrays) when ``supplies_images``."""
        raise NotImplementedError

    def images_origin(self) -> str:
        """Where the run's images come from, for the report."""
        return "generated by this tool (the shared sampling loop)"

    def failure_hint(self) -> str:
        """Appended to a non-finite-weights error: which setting most likely caused it."""
        return ""

    def read_weights(self, path: Path) -> weight_files.Weights:
        """``load_path``'s tensors; a technique whose authors released weights in their own layout reads it here."""
        return weight_files.read(path, require_digest=False)

    def apply_weights(self, pipe: Any, weights: weight_files.Weights) -> dict[str, int]:
        """Put ``weights`` into ``pipe``; a technique whose weights are no pipeline component (an SAE) keeps them."""
        return weight_files.apply(pipe, weights, self.default_component)

    # --- weights --------------------------------------------------------------------------------------------------
    @property
    def makes_weights(self) -> bool:
        return bool(self.weight_fields) or getattr(self.config, "load_path", None) is not None

    def weights_key(self) -> str:
        # a renamed field keeps its old name in the key: weights cached before the rename are found
        fields = {KEY_NAMES.get(k, k): v for k, v in asdict(self.config).items() if k in self.weight_fields}
        return digest_of(
            {"technique": self.name, "version": self.algorithm_version, "config": fields,
             "model": self.context.model.fingerprint(),
             "size": [self.context.model.height, self.context.model.width]},  # training images are made at it
            length=24,
        )  # fmt: skip

    def cache_path(self) -> Path:
        return self.context.cache_dir / "techniques" / self.name / f"{self.weights_key()}.safetensors"

    def prepare(self) -> None:
        """Get the technique's weights (from ``load_path``, the cache, or by building them); sampling-time techniques
        have nothing to prepare. The pipeline itself is loaded by :meth:`pipeline` when an image is needed."""
        if not self.makes_weights:
            return
        cfg: Any = self.config
        if cfg.load_path:
            try:
                weights = self.read_weights(Path(cfg.load_path))
            except weight_files.DamagedWeights as err:
                raise ConfigError(f"technique '{self.name}' load_path: {err}") from None
            self.info.update(trained=False, weights_loaded_from=cfg.load_path)
        elif cfg.use_cache:
            path = self.cache_path()
            self.info.update(cache_path=str(path), cache_key=path.stem)
            with locked(self.context.cache_dir / "locks" / f"{self.name}-{path.stem}.lock", f"{self.name} weights"):
                weights = self._read_cache(path)
                if weights is None:
                    weights = self._build_resumable(path.with_suffix(".partial.pt"))
                    self._write_cache(weights, path)
                    if self.checkpoint.resumed_from is not None:
                        self.info["training_resumed_from_step"] = self.checkpoint.resumed_from
                    self.checkpoint.discard()
                    self.checkpoint = None
                else:
                    self.info.update(trained=False, weights_loaded_from=str(path))
        else:
            weights = self._build()
        weight_files.check_finite(weights, f"technique '{self.name}'", self.failure_hint())
        self.weights = weights
        self.weights_sha256 = weight_files.weights_digest(weights)
        self.info["weights_sha256"] = self.weights_sha256
        if cfg.save_path and Path(cfg.save_path).resolve() != Path(self.info.get("weights_loaded_from", "")).resolve():
            weight_files.write(weights, Path(cfg.save_path), self._metadata())
            self.info.setdefault("saved_to", []).append(cfg.save_path)
        log.info("Technique <%s>: %d weight tensors, sha256 %s", self.name, len(weights), self.weights_sha256[:12])

    def _metadata(self) -> dict[str, Any]:
        return {"technique": self.name, "version": str(self.algorithm_version), "config": asdict(self.config),
                "model": self.context.model.fingerprint()}  # fmt: skip

    def _read_cache(self, path: Path) -> weight_files.Weights | None:
        if not path.is_file():
            return None
        try:
            return weight_files.read(path, require_digest=True)
        except weight_files.DamagedWeights as err:
            log.warning("Cached weights %s are damaged (%s): removed, they will be rebuilt", path, err)
            self.info.setdefault("damaged_cache_entries", []).append(str(path))
            remove_quietly(path)
            return None

    def _build_resumable(self, checkpoint_path: Path) -> weight_files.Weights:
        """Build the weights with a training checkpoint: resumed from a killed run's last save if there is one. A
        resume that fails (a saved state that no longer fits) starts over; a training that diverges leaves no saved
        state behind (resuming it would only diverge again)."""
        self.checkpoint = TrainingCheckpoint(checkpoint_path, self.checkpoint_every_s)
        try:
            return self._build()
        except NonFiniteError:
            self.checkpoint.discard()
            raise
        except Exception as err:
            if self.checkpoint.resumed_from is None:
                raise
            log.warning("Technique <%s>: resuming training failed (%s: %s); training starts over", self.name,
                        type(err).__name__, err)  # fmt: skip
            self.checkpoint.discard()
            self.checkpoint = TrainingCheckpoint(checkpoint_path, self.checkpoint_every_s)
            return self._build()

    def _build(self) -> weight_files.Weights:
        log.info("Technique <%s>: building weights on %s", self.name, self.device)
        pipe = load_pipeline(self.context.model, self.device, torch.float32)
        weights = weight_files.to_cpu(self.build_weights(pipe))
        weight_files.check_finite(weights, f"technique '{self.name}'", self.failure_hint())
        self.apply_weights(pipe, weights)
        self._pipe = pipe  # already holds the weights: generation reuses it
        self.info["trained"] = True
        return weights

    def _write_cache(self, weights: weight_files.Weights, path: Path) -> None:
        """Cache the weights; if the disk is full, put them where there is room and say how to reuse them, so that
        a full disk never throws training away."""
        try:
            weight_files.write(weights, path, self._metadata())
            self.info["saved_to"] = [str(path)]
        except RunError as err:
            fallback = Path(tempfile.gettempdir()) / f"eval_learn_{self.name}_{path.stem}.safetensors"
            try:
                weight_files.write(weights, fallback, self._metadata())
            except RunError:
                raise RunError(f"{err} The trained weights could not be saved anywhere.") from None
            self.info["saved_to"] = [str(fallback)]
            log.error("%s The trained weights were saved to %s instead: reuse them with "
                      "technique.config.load_path=%s", err, fallback, fallback)  # fmt: skip

    # --- the pipeline ---------------------------------------------------------------------------------------------
    def pipeline(self) -> Any:
        """The pipeline that renders this technique's images, loaded (in :meth:`sampling_dtype`) on first use."""
        dtype = self.sampling_dtype()
        if self._pipe is None:
            self._pipe = load_pipeline(self.context.model, self.device, dtype)
            if self.weights is not None:
                applied = self.apply_weights(self._pipe, self.weights)
                log.info("Technique <%s>: weights applied %s", self.name, applied)
        else:
            for component in ("unet", "text_encoder", "vae"):
                module = getattr(self._pipe, component, None)
                if isinstance(module, torch.nn.Module) and module.dtype != dtype:
                    module.to(dtype=dtype)  # per component: a training pipeline (fp32) cast for sampling
        if not self._modified:
            self._pipe = self.modify_pipeline(self._pipe)
            self._modified = True
        return self._pipe

    def sampling_dtype(self) -> torch.dtype:
        """The dtype images are rendered in: the run's, unless the technique's release samples in another."""
        return self.context.dtype

    def fingerprint(self) -> dict[str, Any]:
        fields = {
            k: v for k, v in asdict(self.config).items() if k not in NON_IMAGE_FIELDS and k not in self.weight_fields
        }
        return {"technique": self.name, "version": self.algorithm_version, "config": fields,
                "weights_sha256": self.weights_sha256}  # fmt: skip

    def generation_settings(self) -> dict[str, Any]:
        model = self.context.model
        return {
            "num_inference_steps": self.config.num_inference_steps or model.num_inference_steps,
            "guidance_scale": effective_guidance_scale(self.config.guidance_scale, model.guidance_scale),
            "height": model.height,
            "width": model.width,
        }

    def close(self) -> None:
        """Free the pipeline (a multirun executes jobs in one process)."""
        self._pipe = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
