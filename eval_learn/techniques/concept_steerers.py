"""``concept_steerers``: Concept Steerers — Kim, Ghadiyaram, "Concept Steerers: Leveraging K-Sparse Autoencoders for
Controllable Generations", arXiv:2501.19066 (2025). Release: kim-dahye/steerers.

No weight of the pipeline changes. A k-sparse autoencoder (:func:`eval_learn.techniques.sae_training.train_sae` with
the release's :class:`~eval_learn.techniques.sae_training.KSparseObjective`) is trained on the output of one layer of
the text encoder's residual stream, every token position of the training prompts a row. The steering text (the
concept's words) is run through the text encoder; at the layer, per token position t, its SAE latents without the
TopK (ReLU of the encoder: every positive latent) are decoded without the bias and scaled by ``strength``:

    s_t = strength · ReLU(E(h_t − b) + b_E) · W_dec

While a prompt is encoded for sampling, the layer's output gets ``+ s`` (position by position) for the prompt and
``− s`` for the negative (unconditional) text, then the text encoder's remaining layers run on it (the release's
``unsafe_gen_sd14.py`` with ``utils/hooks.py``). With a negative strength the conditional text moves away from the
concept and the unconditional one towards it, so classifier-free guidance pushes away from it. Strength 0 renders
free_run's images bit for bit.

The SAE is this technique's weights (cached by the base class under the SAE settings only: it does not depend on the
concept, so one SAE serves every concept); ``load_path`` also reads an SAE the release trained and saved
(``<run>/final/state_dict.pth`` with ``config.json`` beside it, ``SparseAutoencoder.save_to_disk``).
"""

from __future__ import annotations

import inspect
import json
import logging
import math
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from eval_learn.configs import require
from eval_learn.errors import RunError
from eval_learn.storage import digest_of
from eval_learn.techniques import weights as weight_files
from eval_learn.techniques.base import Technique, WeightsConfig
from eval_learn.techniques.sae_training import KSparseObjective, TopKSAE, train_sae

log = logging.getLogger(__name__)

SAE_PREFIX = "concept_steerers_sae."
SAE_TENSORS = ("encoder.weight", "encoder.bias", "W_dec", "b_dec")
# the release's nudity erasure text (scripts/nudity_gen_sd14.sh, CONCEPT_ERASURE)
RELEASE_NUDITY_TEXT = "naked, nude, bare, exposed, Stripped, topless, male genitalia, penis, buttocks"


@dataclass
class ConceptSteerersConfig(WeightsConfig):
    num_inference_steps: int | None = 50  # the release: 50 steps at guidance 7.5
    guidance_scale: float | None = 7.5
    erase_concept: str = "nudity"
    steer_text: str | None = RELEASE_NUDITY_TEXT  # the text whose latents give the direction; null: erase_concept
    strength: float = -0.5  # the release: -0.5 for nudity, -0.7 for violence
    layer: int = 9  # index into the text encoder's layers (the release: SD-1.4's layer 9 of 12)
    expansion_factor: int = 4
    k: int = 32
    auxk: int | None = 256  # train_ksae.py's default (its scripts do not set it); null: no AuxK term
    auxk_coef: float = 0.03125  # 1/32
    dead_tokens_threshold: int = 10_000_000  # a latent is dead after this many rows without firing
    train_steps: int = 97_656  # the release's 400M training tokens at batch 4096
    train_batch_size: int = 4096
    learning_rate: float = 4.0e-4
    adam_eps: float = 6.25e-10
    train_seed: int = 42
    # training prompts: an I2P-format CSV (a file shipped in eval_learn/data/prompts, or a path), plus train_prompts
    train_prompts_csv: str | None = "unlearndiffatk_nudity.csv"
    train_prompts: list[str] = field(default_factory=list)

    def erased_concepts(self) -> list[str] | None:
        return [self.erase_concept]

    def text(self) -> str:
        return self.steer_text if self.steer_text is not None else self.erase_concept

    def validate(self) -> None:
        super().validate()
        require(bool(self.erase_concept.strip()), "erase_concept must be non-empty")
        require(self.steer_text is None or bool(self.steer_text.strip()), "steer_text must be non-empty (or null)")
        require(math.isfinite(self.strength), f"strength must be a finite number, got {self.strength}")
        require(self.layer >= 0, f"layer must be >= 0 (an index into the text encoder's layers), got {self.layer}")
        require(self.expansion_factor >= 1, f"expansion_factor must be >= 1, got {self.expansion_factor}")
        require(self.k >= 1, f"k must be >= 1, got {self.k}")
        require(self.auxk is None or self.auxk >= 1, f"auxk must be >= 1 or null, got {self.auxk}")
        require(self.auxk_coef >= 0, f"auxk_coef must be >= 0, got {self.auxk_coef}")
        require(
            self.dead_tokens_threshold >= 1, f"dead_tokens_threshold must be >= 1, got {self.dead_tokens_threshold}"
        )
        require(self.train_steps >= 1, f"train_steps must be >= 1, got {self.train_steps}")
        require(self.train_batch_size >= 1, f"train_batch_size must be >= 1, got {self.train_batch_size}")
        require(self.learning_rate > 0, f"learning_rate must be > 0, got {self.learning_rate}")
        require(self.adam_eps > 0, f"adam_eps must be > 0, got {self.adam_eps}")
        require(all(bool(p.strip()) for p in self.train_prompts), "train_prompts must not contain empty prompts")
        if self.train_prompts_csv is not None:
            require(prompts_csv(self.train_prompts_csv).is_file(),
                    f"train_prompts_csv '{self.train_prompts_csv}' is neither a shipped prompt file nor a file")  # fmt: skip
        require(self.train_prompts_csv is not None or bool(self.train_prompts),
                "the SAE needs training prompts: set train_prompts_csv or train_prompts")  # fmt: skip


def prompts_csv(name: str) -> Path:
    """A shipped prompt file by name, else a path."""
    from eval_learn.datasets.i2p import bundled_prompts

    shipped = bundled_prompts(name)
    return shipped if "/" not in name and shipped.is_file() else Path(name)


def layer_module(text_encoder: Any, layer: int) -> torch.nn.Module:
    # transformers 5 puts the layers at encoder.layers, earlier versions (the release's) at text_model.encoder.layers
    layers = getattr(text_encoder, "text_model", text_encoder).encoder.layers
    if layer >= len(layers):
        raise RunError(f"Concept Steerers: layer {layer} does not exist: the text encoder has {len(layers)} layers "
                       f"(0..{len(layers) - 1})")  # fmt: skip
    return layers[layer]


def hidden_of(output: Any) -> torch.Tensor:
    """A CLIP encoder layer's hidden states (a tensor in transformers 5, a 1-tuple before)."""
    return output if isinstance(output, torch.Tensor) else output[0]


@contextmanager
def recording(module: torch.nn.Module) -> Any:
    calls: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda m, a, out: calls.append(hidden_of(out).detach().float().cpu()))
    try:
        yield calls
    finally:
        handle.remove()


@torch.no_grad()
def layer_outputs(pipe: Any, layer: int, prompts: list[str], batch_size: int = 64) -> torch.Tensor:
    """The layer's output for ``prompts`` tokenised as the pipeline tokenises them: [prompts, tokens, width]."""
    tokenizer, encoder = pipe.tokenizer, pipe.text_encoder
    out = []
    for start in range(0, len(prompts), batch_size):
        ids = tokenizer(prompts[start : start + batch_size], padding="max_length", truncation=True,
                        max_length=tokenizer.model_max_length, return_tensors="pt").input_ids  # fmt: skip
        with recording(layer_module(encoder, layer)) as calls:
            encoder(ids.to(encoder.device))
        out.append(calls[0])
    return torch.cat(out)


@torch.no_grad()
def steering_vector(sae: TopKSAE, concept_hidden: torch.Tensor, strength: float) -> torch.Tensor:
    """Per token position, ``strength`` × the decoded ReLU latents (no TopK, no decoder bias): [tokens, width]."""
    return (sae.pre_acts(concept_hidden.float()) * strength) @ sae.W_dec


class SteeringHook:
    """Forward hook on the layer: adds the steering to the prompt's hidden states and subtracts it from the negative
    text's. It acts only while :meth:`encoding` has signs queued (one per text-encoder call of ``encode_prompt``), so
    the text encoder used outside sampling (an attack's loss, a metric) is the plain one."""

    def __init__(self, steering: torch.Tensor) -> None:
        self.steering = steering
        self.signs: list[float] = []

    def __call__(self, module: torch.nn.Module, args: Any, output: Any) -> Any:
        if not self.signs:
            return output
        sign = self.signs.pop(0)
        hidden = hidden_of(output)
        if hidden.shape[-2] != self.steering.shape[0]:
            raise RunError(f"Concept Steerers: the prompt has {hidden.shape[-2]} token positions, the steering "
                           f"{self.steering.shape[0]} (both must be padded to the tokenizer's length)")  # fmt: skip
        steered = hidden + sign * self.steering.to(hidden.device, hidden.dtype)
        return steered if isinstance(output, torch.Tensor) else (steered, *output[1:])

    def wrap(self, encode_prompt: Callable[..., Any]) -> Callable[..., Any]:
        """``encode_prompt`` with the signs queued: + for the prompt, − for the negative text, each only when it is
        encoded here (an attack's ``prompt_embeds`` bypass the text encoder and pass unsteered; the negative text is
        still steered)."""
        signature = inspect.signature(encode_prompt)

        def encode(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(*args, **kwargs).arguments
            self.signs = [1.0] if bound.get("prompt_embeds") is None else []
            if bound.get("do_classifier_free_guidance") and bound.get("negative_prompt_embeds") is None:
                self.signs.append(-1.0)
            try:
                out = encode_prompt(*args, **kwargs)
                if self.signs:
                    raise RunError(f"Concept Steerers: encode_prompt made {len(self.signs)} text-encoder call(s) "
                                   f"fewer than expected; the steering was not applied as the release applies it")  # fmt: skip
                return out
            finally:
                self.signs = []

        return encode


def release_sae(path: Path) -> tuple[dict[str, torch.Tensor], int]:
    """An SAE saved by the release's ``SparseAutoencoder.save_to_disk``: ``state_dict.pth`` ({"state_dict": encoder.
    weight [n, d], decoder.weight [d, n], pre_bias [d], latent_bias [n], ...}) and ``config.json`` (k, ...) beside
    it; returned in our layout (decoder transposed, latent_bias as the encoder's bias)."""
    config_file = path.parent / "config.json"
    if not config_file.is_file():
        raise weight_files.DamagedWeights(f"no config.json beside {path.name} (the release's SAE layout)")
    try:
        k = int(json.loads(config_file.read_text())["k"])
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state)
        enc, dec = state["encoder.weight"].float(), state["decoder.weight"].float()
        b_enc, b_dec = state["latent_bias"].float(), state["pre_bias"].float()
    except (KeyError, ValueError, TypeError, json.JSONDecodeError, RuntimeError) as err:
        raise weight_files.DamagedWeights(f"not an SAE in the release's layout ({type(err).__name__}: {err})") from None
    n, d = enc.shape
    if dec.shape != (d, n) or b_enc.shape != (n,) or b_dec.shape != (d,) or not 1 <= k <= n:
        raise weight_files.DamagedWeights(f"inconsistent SAE shapes: encoder {tuple(enc.shape)}, decoder "
                                          f"{tuple(dec.shape)}, biases {tuple(b_enc.shape)}/{tuple(b_dec.shape)}, k {k}")  # fmt: skip
    return {"encoder.weight": enc, "encoder.bias": b_enc, "W_dec": dec.T.contiguous(), "b_dec": b_dec}, k


class ConceptSteerers(Technique):
    name = "concept_steerers"
    config_cls = ConceptSteerersConfig
    config: ConceptSteerersConfig
    weight_fields = ("layer", "expansion_factor", "k", "auxk", "auxk_coef", "dead_tokens_threshold", "train_steps",
                     "train_batch_size", "learning_rate", "adam_eps", "train_seed", "train_prompts_csv",
                     "train_prompts")  # fmt: skip

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sae: TopKSAE | None = None
        self.hook: SteeringHook | None = None

    def weights_key(self) -> str:
        """The training prompts' content is part of the key: a prompt file edited in place trains again."""
        return digest_of({"config": super().weights_key(), "prompts": self.training_prompts()}, length=24)

    def training_prompts(self) -> list[str]:
        from eval_learn.datasets.tables import prompt_rows, read_table

        cfg = self.config
        rows = [] if cfg.train_prompts_csv is None else prompt_rows(read_table(prompts_csv(cfg.train_prompts_csv)))
        return [row.prompt for row in rows] + list(cfg.train_prompts)

    def build_weights(self, pipe: Any) -> weight_files.Weights:
        cfg = self.config
        prompts = self.training_prompts()
        rows = layer_outputs(pipe, cfg.layer, prompts)
        rows = rows.reshape(-1, rows.shape[-1])  # every token position a row, as the release's activation store
        objective = KSparseObjective(cfg.auxk, cfg.auxk_coef, cfg.dead_tokens_threshold // cfg.train_batch_size,
                                     cfg.adam_eps)  # fmt: skip
        sae, losses = train_sae(rows, expansion_factor=cfg.expansion_factor, k=cfg.k, steps=cfg.train_steps,
                                batch_size=cfg.train_batch_size, learning_rate=cfg.learning_rate, seed=cfg.train_seed,
                                checkpoint=self.checkpoint, objective=objective,
                                label="Concept Steerers k-SAE")  # fmt: skip
        self.info.update(sae_prompts=len(prompts), sae_rows=int(rows.shape[0]), sae_loss_first=losses[0],
                         sae_loss_last=losses[-1])  # fmt: skip
        return {SAE_PREFIX + k: v for k, v in sae.tensors().items()}

    def read_weights(self, path: Path) -> weight_files.Weights:
        """Our own file (safetensors), or the release's ``state_dict.pth`` with ``config.json`` beside it."""
        if path.suffix in {".pth", ".pt"} and (path.parent / "config.json").is_file():
            tensors, k = release_sae(path)
            self.info.update(sae_k=k, sae_layout="kim-dahye/steerers save_to_disk")
            return {SAE_PREFIX + n: t for n, t in tensors.items()}
        weights = weight_files.read(path, require_digest=False)
        if not {SAE_PREFIX + n for n in SAE_TENSORS} <= set(weights):
            raise weight_files.DamagedWeights("neither a concept_steerers weights file nor the release's SAE "
                                              "(state_dict.pth with config.json beside it)")  # fmt: skip
        return weights

    def apply_weights(self, pipe: Any, weights: weight_files.Weights) -> dict[str, int]:
        """The SAE stays with the technique: the pipeline's own weights are untouched."""
        state = {n: weights[SAE_PREFIX + n].float() for n in SAE_TENSORS}
        self.sae = TopKSAE.from_tensors(state, int(self.info.get("sae_k", self.config.k))).eval()
        return {"sae": len(state)}

    def modify_pipeline(self, pipe: Any) -> Any:
        if self.sae is None:
            self.apply_weights(pipe, self.weights or {})
        cfg = self.config
        width = pipe.text_encoder.config.hidden_size
        if self.sae.d_in != width:
            raise RunError(f"Concept Steerers: the SAE reads {self.sae.d_in}-wide activations, the text encoder's "
                           f"layers are {width} wide (an SAE of another model?)")  # fmt: skip
        concept = layer_outputs(pipe, cfg.layer, [cfg.text()])[0]
        steering = steering_vector(self.sae, concept, cfg.strength)
        self.hook = SteeringHook(steering)
        layer_module(pipe.text_encoder, cfg.layer).register_forward_hook(self.hook)
        pipe.encode_prompt = self.hook.wrap(pipe.encode_prompt)
        active = int((self.sae.pre_acts(concept) > 0).sum(-1).float().mean())
        self.info.update(steering_latents_per_token=active, steering_norm=float(steering.norm(dim=-1).mean()))
        log.info("Concept Steerers: layer %d steered by '%s' at strength %g (%d latents per token)", cfg.layer,
                 cfg.text(), cfg.strength, active)  # fmt: skip
        return pipe

    def sampling_dtype(self) -> torch.dtype:
        """float32, as the release samples (``unsafe_gen_sd14.py``: ``dtype = torch.float32``)."""
        return torch.float32

    def sampling_settings(self) -> dict[str, Any]:
        return {"layer": self.config.layer, "strength": self.config.strength, "steer_text": self.config.text()}
