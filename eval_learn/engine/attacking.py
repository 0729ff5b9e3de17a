"""The engine's side of an attack: the model under test as an :class:`~eval_learn.attacks.base.AttackTarget`, and
the attack outcome cache.

Why here and not in the attack: an attack must search against what the benchmark measures. So a candidate renders
through the same sampling loop (:func:`eval_learn.engine.sampling.render`), with the run's generation mode, the
record's seed and guidance, and the technique's weights *and* sampling changes, and the judge is the metric's own
(behind the judgement cache). Renders go through the image store under the same keys as the run's images: the base
model's target image for a prompt is the ``free_run`` image a baseline run makes, and a rerun finds it.

The base model loads only when an attack asks for it (``needs_base_model``: UnlearnDiffAtk's target image, P4D's
teacher), as a ``free_run`` technique sharing the tokenizer and the VAE with the technique where the technique did
not change them.

Outcomes are cached per prompt under a key of everything that determines them (model and technique fingerprints,
request, generation mode, attack settings, judge settings), sealed (:func:`eval_learn.storage.sealed`), with the
adversarial image as a PNG carrying its pixel digest and an embedding (if any) as safetensors with its SHA-256; every
file is verified when read back, and a damaged entry is searched again. A killed attack run therefore resumes per
prompt, and a rerun reuses every finished prompt. An attack's own saved states (:class:`CachedState`: a learned
token mid-training, a seed-free search's result) live beside them under ``attack_state/``, sealed and verified alike.
"""

from __future__ import annotations

import inspect
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from eval_learn.attacks.base import Attack, AttackOutcome
from eval_learn.engine.image_store import CorruptEntry, Store, StoredImage, decode_verified, image_key
from eval_learn.engine.requests import request_for
from eval_learn.engine.sampling import GenerationMode, image_context, render, sampling_call
from eval_learn.errors import RunError
from eval_learn.registry import TECHNIQUES
from eval_learn.storage import atomic_write, canonical_json, digest_of, seal_problem, sealed, sha256_bytes, write_json
from eval_learn.types import GenerationRequest, PromptRecord

if TYPE_CHECKING:
    from eval_learn.techniques.base import Technique

log = logging.getLogger(__name__)

OUTCOME_VERSION = 1  # bump when the cached outcome's layout or meaning changes


class Renderer:
    """Renders requests for a technique through the shared loop and the image store (found, or made and stored)."""

    def __init__(self, store: Store, mode: GenerationMode, image_context: Callable[[Technique], dict[str, Any]]):
        self.store = store
        self.mode = mode
        self.image_context = image_context
        self.rendered = 0  # images this renderer had to make (not found in the store)

    def images(self, technique: Technique, requests: list[GenerationRequest]) -> list[StoredImage]:
        context = self.image_context(technique)
        keys = [image_key(context, r.fields()) for r in requests]
        found: list[StoredImage | None] = [self.store.get_image(k) for k in keys]
        missing = [i for i, image in enumerate(found) if image is None]
        if missing:
            fingerprint = canonical_json(technique.fingerprint())
            pixels = render(technique, [requests[i] for i in missing], self.mode)
            self.rendered += len(missing)
            for i, image in zip(missing, pixels, strict=True):
                text = {"eval_learn:key": keys[i], "eval_learn:request": canonical_json(requests[i].fields()),
                        "eval_learn:technique": fingerprint}  # fmt: skip
                stored = StoredImage.from_pixels(image, text)
                self.store.put_image(keys[i], stored)
                found[i] = stored
        return found  # type: ignore[return-value]


def unaccepted(pipe: Any, call: dict[str, Any]) -> list[str]:
    """The arguments of ``call`` that ``pipe``'s ``__call__`` does not name (diffusers' pipelines swallow unknown
    ones in ``**kwargs``: an SLD setting given to the inpainting pipeline would silently do nothing)."""
    named = {name for name, p in inspect.signature(pipe.__call__).parameters.items()
             if p.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)}  # fmt: skip
    return sorted(set(call) - named)


class CachedState:
    """An attack's saved state (:class:`eval_learn.attacks.base.SavedState`): the tensors as safetensors named by
    their SHA-256, and a sealed JSON naming that digest, the key and the facts, written last; a read verifies the
    seal, the key and the digest, and a damaged state counts as none (the attack starts that state over)."""

    def __init__(self, folder: Path, key: str) -> None:
        self.folder, self.key = folder, key
        self.path = folder / f"{key}.json"

    def load(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        try:
            data = json.loads(self.path.read_text("utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as err:
            return self._damaged(f"cannot be read ({err})")
        problem = seal_problem(data)
        if problem is None and data.get("key") != self.key:
            problem = "belongs to another key"
        if problem:
            return self._damaged(problem)
        try:
            raw = (self.folder / f"{self.key}.{data['tensors_sha256']}.safetensors").read_bytes()
        except OSError as err:
            return self._damaged(f"has lost its tensors ({err})")
        if sha256_bytes(raw) != data["tensors_sha256"]:
            return self._damaged("has tensors that are not the ones recorded")
        from safetensors.torch import load

        return load(raw), data["facts"]

    def save(self, tensors: dict[str, torch.Tensor], facts: dict[str, Any]) -> None:
        from safetensors.torch import save

        raw = save({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()})
        digest = sha256_bytes(raw)
        atomic_write(self.folder / f"{self.key}.{digest}.safetensors", raw)
        write_json(self.path, sealed({"key": self.key, "tensors_sha256": digest, "facts": facts}))
        for old in self.folder.glob(f"{self.key}.*.safetensors"):  # earlier saves (or one a kill left unnamed)
            if old.name != f"{self.key}.{digest}.safetensors":
                old.unlink(missing_ok=True)

    def _damaged(self, why: str) -> None:
        log.warning("Saved attack state %s %s: it is made again", self.path, why)
        return None


class ModelTarget:
    """The technique under test for one prompt record: implements :class:`eval_learn.attacks.base.AttackTarget`.

    Images render at the record's guidance scale (I2P rows carry their own) with the run's steps and size."""

    def __init__(self, session: AttackSession, record: PromptRecord) -> None:
        self.session = session
        self.record = record
        self.concept = session.concept
        self.settings = request_for(record, session.technique.generation_settings())

    def _requests(self, prompts: list[str], seed: int) -> list[GenerationRequest]:
        s = self.settings
        return [GenerationRequest(p, seed, s.guidance_scale, s.num_inference_steps, s.height, s.width) for p in prompts]

    def pipeline(self) -> Any:
        return self.session.technique.pipeline()

    def base_pipeline(self) -> Any:
        return self.session.base().pipeline()

    def render(self, prompts: list[str], seed: int) -> list[np.ndarray]:
        images = self.session.renderer.images(self.session.technique, self._requests(prompts, seed))
        return [image.pixels for image in images]

    def render_embeddings(self, embeddings: torch.Tensor, seed: int) -> list[np.ndarray]:
        technique = self.session.technique
        if not technique.supplies_images and unaccepted(technique.pipeline(), {"prompt_embeds": None}):
            raise RunError(f"attack '{self.session.attack.name}' on technique '{technique.name}': its pipeline "
                           f"{type(technique.pipeline()).__name__} takes no prompt_embeds, so text-encoder outputs "
                           f"cannot be rendered through it")  # fmt: skip
        requests = self._requests([""] * len(embeddings), seed)
        return render(self.session.technique, requests, self.session.renderer.mode, prompt_embeds=embeddings)

    def render_base(self, prompts: list[str], seed: int) -> list[np.ndarray]:
        images = self.session.renderer.images(self.session.base(), self._requests(prompts, seed))
        return [image.pixels for image in images]

    def sample(self, prompt: str, generator: Any, *, base: bool = False, pipe: Any = None, **arguments: Any) -> Any:
        technique = self.session.base() if base else self.session.technique
        pipe = technique.pipeline() if pipe is None else pipe
        s = self.settings
        with torch.inference_mode():
            call = sampling_call(technique, pipe, [prompt])
            clash = sorted(set(call) & set(arguments))
            if clash:
                raise RunError(f"attack '{self.session.attack.name}' and technique '{technique.name}' both set "
                               f"{clash} of the pipeline call: the probe cannot sample through this technique")  # fmt: skip
            call.update(generator=generator, num_inference_steps=s.num_inference_steps,
                        guidance_scale=s.guidance_scale, height=s.height, width=s.width, **arguments)  # fmt: skip
            refused = unaccepted(pipe, call)
            if refused:
                raise RunError(f"attack '{self.session.attack.name}' on technique '{technique.name}': its pipeline "
                               f"{type(pipe).__name__} takes no {refused}, so the probe cannot sample with the "
                               f"technique's sampling changes")  # fmt: skip
            return pipe(**call).images

    def saved(self, attack: Attack, name: str, scope: dict[str, Any]) -> CachedState:
        session = self.session
        key = digest_of({"version": OUTCOME_VERSION, "context": session.renderer.image_context(session.technique),
                         "settings": self.generation_settings(), "attack": attack.settings(),
                         "concept": self.concept, "name": name, "scope": scope})  # fmt: skip
        return CachedState(session.cache_dir / "attack_state" / attack.name / key[:2], key)

    def judge(self, images: list[np.ndarray]) -> list[bool]:
        return self.session.flagged(images)

    def generation_settings(self) -> dict[str, Any]:
        s = self.settings
        return {"num_inference_steps": s.num_inference_steps, "guidance_scale": s.guidance_scale,
                "height": s.height, "width": s.width}  # fmt: skip


@dataclass
class AttackSession:
    """One attack over one metric's prompts: the technique, the base model (lazily), the judge, the outcome cache.

    ``judge`` is the metric's judge (a :class:`~eval_learn.engine.judging.CachedJudge` in a run) and ``detects`` its
    rule for "the concept is there"; ``folder`` is where the metric's per-prompt attack files are written."""

    attack: Attack
    technique: Technique
    renderer: Renderer
    judge: Any
    concept: str
    cache_dir: Path
    folder: Path
    judge_fingerprint: str
    searched: int = 0  # prompts searched in this run
    reused: int = 0  # prompts whose outcome came from the cache
    seconds: float = 0.0  # wall time of the searches in this run
    _base: Technique | None = field(default=None, repr=False)

    # --- the model under test and the base model ------------------------------------------------------------------
    def base(self) -> Technique:
        """The base model as a ``free_run`` technique, loaded on first use, sharing what the technique left alone."""
        if self._base is None:
            technique = self.technique
            base = TECHNIQUES.get("free_run")(TECHNIQUES.get("free_run").config_cls(), technique.context)
            pipe = base.pipeline()
            changed = {name.partition(".")[0] for name in (technique.weights or {})}
            own = technique.pipeline()
            for component in ("tokenizer", "vae"):
                if component not in changed and getattr(own, component, None) is not None:
                    setattr(pipe, component, getattr(own, component))
            self._base = base
            log.info("Attack <%s>: base model loaded (sharing %s with the technique)", self.attack.name,
                     [c for c in ("tokenizer", "vae") if c not in changed])  # fmt: skip
        return self._base

    def flagged(self, images: list[np.ndarray]) -> list[bool]:
        pil = [Image.fromarray(np.asarray(image, dtype=np.uint8)) for image in images]
        return [bool(self.judge.detects(v, self.concept)) for v in self.judge.judge(pil)]

    # --- outcomes ---------------------------------------------------------------------------------------------------
    def key(self, record: PromptRecord) -> str:
        request = request_for(record, self.technique.generation_settings())
        context = self.renderer.image_context(self.technique)
        return digest_of({"version": OUTCOME_VERSION, "context": context, "request": request.fields(),
                          "attack": self.attack.settings(), "judge": self.judge_fingerprint,
                          "concept": self.concept})  # fmt: skip

    def _path(self, key: str, suffix: str) -> Path:
        return self.cache_dir / "attacks" / self.attack.name / key[:2] / f"{key}{suffix}"

    def outcome(self, record: PromptRecord) -> tuple[AttackOutcome, bool]:
        """The attack's outcome for ``record``: from the cache (verified) or searched now and cached. Returns
        (outcome, reused)."""
        key = self.key(record)
        cached = self._read(key)
        if cached is not None:
            self.reused += 1
            return cached, True
        start = time.perf_counter()
        outcome = self.attack.run(ModelTarget(self, record), record)
        self.seconds += time.perf_counter() - start
        self.searched += 1
        self._write(key, outcome)
        log.info("Attack <%s> on prompt %d: %s after %d iterations (%.1f s)", self.attack.name, record.index,
                 "success" if outcome.success else "no success", outcome.iterations, outcome.seconds)  # fmt: skip
        return outcome, False

    def _write(self, key: str, outcome: AttackOutcome) -> None:
        body: dict[str, Any] = {
            "key": key, "attack": self.attack.settings(), "prompt": outcome.prompt, "success": outcome.success,
            "iterations": outcome.iterations, "seconds": outcome.seconds, "success_step": outcome.success_step,
            "extra": outcome.extra, "image_sha256": None, "embedding_sha256": None,
        }  # fmt: skip
        if outcome.image is not None:
            stored = StoredImage.from_pixels(np.asarray(outcome.image, dtype=np.uint8), {"eval_learn:attack": key})
            atomic_write(self._path(key, ".png"), stored.png)
            body["image_sha256"] = stored.digest
        if outcome.embedding is not None:
            from safetensors.torch import save

            data = save({"embedding": outcome.embedding.detach().to("cpu", torch.float32).contiguous()})
            atomic_write(self._path(key, ".safetensors"), data)
            body["embedding_sha256"] = sha256_bytes(data)
        write_json(self._path(key, ".json"), sealed(body))  # last: the entry counts only once its files are there

    def _read(self, key: str) -> AttackOutcome | None:
        path = self._path(key, ".json")
        try:
            data = json.loads(path.read_text("utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as err:
            return self._damaged(path, f"cannot be read ({err})")
        problem = seal_problem(data)
        if problem is None and data.get("key") != key:
            problem = "belongs to another key"
        if problem:
            return self._damaged(path, problem)
        image = embedding = None
        try:
            if data["image_sha256"] is not None:
                stored = decode_verified(self._path(key, ".png").read_bytes())
                if stored.digest != data["image_sha256"]:
                    raise CorruptEntry("its image is not the one recorded")
                image = stored.pixels
            if data["embedding_sha256"] is not None:
                raw = self._path(key, ".safetensors").read_bytes()
                if sha256_bytes(raw) != data["embedding_sha256"]:
                    raise CorruptEntry("its embedding is not the one recorded")
                from safetensors.torch import load

                embedding = load(raw)["embedding"]
        except (OSError, CorruptEntry) as err:
            return self._damaged(path, str(err))
        return AttackOutcome(prompt=data["prompt"], success=data["success"], iterations=data["iterations"],
                             seconds=data["seconds"], success_step=data["success_step"], image=image,
                             embedding=embedding, extra=data["extra"])  # fmt: skip

    def _damaged(self, path: Path, why: str) -> None:
        log.warning("Cached attack outcome %s %s: the prompt is attacked again", path, why)
        return None

    def files(self, record: PromptRecord, outcome: AttackOutcome) -> dict[str, str | None]:
        """Write the outcome's image into the metric's folder; the files a reader finds it by (relative to the
        metric's folder; the embedding stays in the cache, named by its absolute path)."""
        image_file = None
        if outcome.image is not None:
            image_file = f"attack_images/{record.index:05d}.png"
            stored = StoredImage.from_pixels(np.asarray(outcome.image, dtype=np.uint8),
                                             {"eval_learn:attack_prompt": outcome.prompt})  # fmt: skip
            atomic_write(self.folder / image_file, stored.png)
        embedding = self._path(self.key(record), ".safetensors") if outcome.embedding is not None else None
        return {"image_file": image_file, "embedding_file": str(embedding) if embedding else None}

    def stats(self) -> dict[str, Any]:
        return {"attacks_searched": self.searched, "attacks_reused": self.reused,
                "attack_search_s": round(self.seconds, 3), "base_model_loaded": self._base is not None}  # fmt: skip

    def close(self) -> None:
        if self._base is not None:
            self._base.close()
            self._base = None


def attack_session(engine: Any, technique: Technique, metric: Any, folder: Path) -> AttackSession:
    """The session a metric with an ``attack`` gets from the engine: the run's store, generation mode and judge (the
    role ``attack_role`` names, if the metric has several: ``err``'s robustness arm's)."""
    judge = metric.judges[getattr(metric, "attack_role", "judge")]
    return AttackSession(
        attack=metric.attack, technique=technique,
        renderer=Renderer(engine.store, engine.mode(technique), engine.image_context),
        judge=judge, concept=metric.config.concept, cache_dir=engine.context.cache_dir, folder=folder,
        judge_fingerprint=digest_of(judge.settings()),
    )  # fmt: skip


def close_attack(metric: Any) -> None:
    """Free the base model an attack session loaded (a multirun executes jobs in one process)."""
    session = getattr(metric, "attack_session", None)
    if session is not None:
        session.close()


def standalone_session(
    attack: Attack, technique: Technique, judge: Any, concept: str, cache_dir: Path, folder: Path | None = None,
    batch_size: int = 1,
) -> AttackSession:  # fmt: skip
    """A session outside a run (tests, notebooks): the store under ``cache_dir``, the device's default generation
    mode with ``batch_size`` rows, ``judge`` any judge (its ``judge`` and ``detects``). ``ModelTarget(session,
    record)`` is then the target an attack gets in a run."""
    mode = GenerationMode.for_device(technique.device, batch_size, None)
    cache_dir = Path(cache_dir)
    return AttackSession(
        attack=attack, technique=technique, renderer=Renderer(Store(cache_dir), mode, lambda t: image_context(t, mode)),
        judge=judge, concept=concept, cache_dir=cache_dir, folder=Path(folder or cache_dir / "attack_run"),
        judge_fingerprint=digest_of(judge.settings()),
    )  # fmt: skip
