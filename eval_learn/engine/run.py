"""The engine every run goes through, single or multi: plan, generate each image once into the store, judge.

1. **Plan.** Every metric's prompt records become generation requests (the technique's and model's defaults filled
   in); identical requests are generated once however many metrics ask.
2. **Generate.** Requests go through in batches of ``batch_size``. An image already in the store (same key: model,
   technique fingerprint, request, scheduler, dtype, device, generation mode, library versions) is read and
   verified; the rest are rendered by the shared sampling loop under a lock that concurrent runs share, and stored.
   The pipeline loads only if something must be rendered.
3. **Evaluate.** Each batch's images go to every metric that asked for them: written to the metric's ``images/``,
   judged (verdicts cached by judge settings and pixels), recorded in the metric's state, which is saved per batch.
   On a GPU, encoding, writing and judging a batch overlap with rendering the next one.
4. **Report.** :class:`eval_learn.engine.report_builder.ReportBuilder` writes each metric's report and, in a multi
   run, the combined one.

A metric that raises is recorded as failed and dropped; the others go on, their results are written, and the run
ends with :class:`MetricsFailed` (a non-zero exit code). The run folder holds ``run_status.json``: ``running``
while it works (so a killed run is visibly unfinished), then ``complete`` or ``failed``. A rerun of a killed run
finds every finished image and verdict in the store: at most the batch in flight is redone.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from eval_learn.engine.attacking import attack_session, close_attack
from eval_learn.engine.evaluation import Evaluation
from eval_learn.engine.image_store import Store, StoredImage, image_key
from eval_learn.engine.judging import CachedJudge
from eval_learn.engine.report_builder import ReportBuilder
from eval_learn.engine.requests import GenerationRequest, make_plan, request_for
from eval_learn.engine.sampling import GenerationMode, image_context, render
from eval_learn.engine.spec import MetricSpec, RunSpec
from eval_learn.errors import RunError
from eval_learn.models.availability import ensure_available
from eval_learn.storage import atomic_write, canonical_json, write_json
from eval_learn.types import PromptRecord

if TYPE_CHECKING:
    from eval_learn.techniques.base import Technique

log = logging.getLogger(__name__)


class MetricsFailed(RunError):
    """Some metrics of a run raised; the others' results were written. ``report`` is what the run wrote."""

    def __init__(self, message: str, report: dict[str, Any]) -> None:
        super().__init__(message)
        self.report = report


@dataclass
class Batch:
    """One batch of the plan on its way through: images found or made, the store lock held while making them."""

    positions: list[int]
    images: dict[int, StoredImage] = field(default_factory=dict)
    new: dict[int, Any] = field(default_factory=dict)  # rendered pixels not yet encoded and stored
    generation_s: float = 0.0
    lock: Any = None

    def release(self) -> None:
        if self.lock is not None:
            lock, self.lock = self.lock, None
            lock.__exit__(None, None, None)


class RunStatus:
    """``<run>/run_status.json``: a run that was killed stays marked ``running`` (with its pid and host)."""

    def __init__(self, root: Path, run_id: str) -> None:
        self.path = root / "run_status.json"
        self.data: dict[str, Any] = {"run_id": run_id, "status": "running", "pid": os.getpid(),
                                     "host": socket.gethostname(), "started": time.time()}  # fmt: skip

    def write(self, **changes: Any) -> None:
        self.data.update(changes)
        write_json(self.path, self.data)


class Engine:
    """Runs one technique against the spec's metrics. ``layout``: ``single`` (the metric's files in the run
    folder) or ``multi`` (one folder per metric plus ``multi/report.json``)."""

    def __init__(self, spec: RunSpec, layout: str) -> None:
        self.spec = spec
        self.layout = layout
        self.context = spec.context
        settings = self.context.settings
        self.store = Store(
            self.context.cache_dir,
            settings.image_cache,
            int(settings.image_cache_max_gb * 1e9) if settings.image_cache_max_gb else None,
        )
        self.timings: dict[str, float] = {}
        self.generated: set[int] = set()  # plan positions rendered in this run

    def _time(self, key: str, start: float) -> float:
        elapsed = time.perf_counter() - start
        self.timings[key] = round(self.timings.get(key, 0.0) + elapsed, 4)
        return elapsed

    # --- the run --------------------------------------------------------------------------------------------------
    def run(self, run_id: str, timestamp: float) -> dict[str, Any]:
        started = time.perf_counter()
        root = self.spec.output_dir / run_id
        log.info("Run %s → %s", run_id, root)
        # Before anything is written: a model that cannot be had leaves no folder behind (images made elsewhere need
        # no base model).
        if not self.spec.technique_cls.supplies_images:
            ensure_available(self.context.model)
        status = RunStatus(root, run_id)
        status.write()
        technique: Technique | None = None
        evaluations: list[Evaluation] = []
        try:
            evaluations = [self._setup(spec, root) for spec in self.spec.metrics]
            technique = self._prepare_technique()
            self._evaluate(technique, evaluations)
            for evaluation in evaluations:
                self._finish(evaluation)
            self._time("total_s", started)
            builder = ReportBuilder(self.spec, self.layout, technique, self.mode(technique), self.timings,
                                    len(self.generated), self.planned)  # fmt: skip
            report = builder.write(run_id, timestamp, evaluations, root)
        except BaseException as err:
            status.write(status="failed", finished=time.time(), error=f"{type(err).__name__}: {err}")
            raise
        finally:
            if technique is not None:
                technique.close()
            for evaluation in evaluations:
                close_attack(evaluation.metric)
            self._evict()
        failed = {e.name: e.error for e in evaluations if e.error}
        status.write(status="failed" if failed else "complete", finished=time.time(),
                     failed_metrics=sorted(failed))  # fmt: skip
        if failed:
            names = ", ".join(f"{n} ({e['type']}: {e['message'][:200]})" for n, e in failed.items())
            raise MetricsFailed(f"{len(failed)} of {len(evaluations)} metric(s) failed: {names}. The other results "
                                f"are in {root}", report)  # fmt: skip
        return report

    def _evict(self) -> None:
        try:
            self.store.evict()
        except OSError as err:  # eviction is housekeeping: never the reason a run fails
            log.warning("Image store eviction failed: %s", err)

    def _setup(self, spec: MetricSpec, root: Path) -> Evaluation:
        start = time.perf_counter()
        log.info("Instantiating metric <%s>", spec.name)
        metric = spec.cls(spec.config, self.context)
        dataset = metric.load_dataset()
        shard = self.context.settings.shard
        if shard.count > 1:  # this job's part of a split run; indices (and so seeds and file names) stay the same
            dataset.records = [r for r in dataset.records if shard.keeps(r.index)]
            dataset.metadata = {**dataset.metadata, "shard": asdict(shard), "shard_images": len(dataset.records)}
        load_s = time.perf_counter() - start
        folder = root if self.layout == "single" else root / spec.name
        evaluation = Evaluation(spec, metric, dataset, folder)
        evaluation.add_time("dataset_load_s", load_s)
        self.timings["dataset_load_s"] = round(self.timings.get("dataset_load_s", 0.0) + load_s, 4)
        log.info("Metric <%s>: %d images from %s", spec.name, len(dataset), dataset.metadata.get("source"))
        return evaluation

    def _prepare_technique(self) -> Technique:
        run = self.spec
        start = time.perf_counter()
        log.info("Instantiating technique <%s>", run.technique_name)
        technique = run.technique_cls(run.technique_config, self.context)
        technique.prepare()
        self._time("technique_prepare_s", start)
        return technique

    def mode(self, technique: Technique) -> GenerationMode:
        settings = self.context.settings
        return GenerationMode.for_device(technique.device, settings.batch_size, settings.batch_invariant)

    def image_context(self, technique: Technique) -> dict[str, Any]:
        """Everything besides the request that determines an image's pixels."""
        return image_context(technique, self.mode(technique))

    # --- generation and judging -----------------------------------------------------------------------------------
    def _evaluate(self, technique: Technique, evaluations: list[Evaluation]) -> None:
        loop_start = time.perf_counter()
        for evaluation in evaluations:
            metric = evaluation.metric
            metric.judges = {role: CachedJudge(j, self.store) for role, j in metric.judges.items()}
            if metric.needs_model:
                metric.attach_model(technique)
            if getattr(metric, "attack", None) is not None:  # asr under attack: the engine's side of the search
                metric.attach_attack(attack_session(self, technique, metric, evaluation.folder))
            (evaluation.folder / "images").mkdir(parents=True, exist_ok=True)
        by_name = {e.name: e for e in evaluations}
        self.generation = technique.generation_settings()
        plan = make_plan({e.name: e.dataset.records for e in evaluations}, self.generation)
        technique.check_plan(plan.requests)
        self.planned = len(plan.requests)
        users = plan.users()
        mode = self.mode(technique)
        context = self.image_context(technique)
        keys = [image_key(context, r.fields()) for r in plan.requests]
        log.info("Plan: %d images asked for by %d metric(s), %d distinct; generation mode %s, %d rows per call",
                 plan.asked, len(evaluations), len(plan.requests), mode.name, mode.rows)  # fmt: skip
        batch_size = self.context.settings.batch_size
        # encode, write and judge on the CPU while the GPU renders (not while an attack renders in the same pipeline)
        overlap = technique.device.startswith("cuda") and not any(
            getattr(e.metric, "attack", None) for e in evaluations
        )
        starts = range(0, len(plan.requests), batch_size)
        with ThreadPoolExecutor(max_workers=1) as worker:
            pending: Future | None = None
            for start in tqdm(starts, desc=f"{technique.name} images", unit="batch", disable=len(starts) < 2):
                positions = list(range(start, min(start + batch_size, len(plan.requests))))
                batch = self._images(technique, plan.requests, keys, positions, mode)
                if pending is not None:
                    pending.result()
                job = (technique, plan.requests, keys, batch, users, by_name)
                if overlap:
                    pending = worker.submit(self._deliver, *job)
                else:
                    self._deliver(*job)
            if pending is not None:
                pending.result()
        self._time("evaluate_s", loop_start)

    def _images(
        self, technique: Technique, requests: list[GenerationRequest], keys: list[str], positions: list[int],
        mode: GenerationMode,
    ) -> Batch:  # fmt: skip
        """The batch's images: from the store (verified), or rendered under the store's lock (held until they are
        stored, possibly by the worker thread)."""
        batch = Batch(positions)
        for p in positions:
            image = self.store.get_image(keys[p])
            if image is not None:
                batch.images[p] = image
        missing = [p for p in positions if p not in batch.images]
        if not missing:
            return batch
        batch.lock = self.store.generating([keys[p] for p in missing])
        batch.lock.__enter__()
        try:
            for p in list(missing):  # another run may have made them while we waited
                image = self.store.get_image(keys[p])
                if image is not None:
                    batch.images[p] = image
                    missing.remove(p)
            start = time.perf_counter()
            for p, pixels in zip(missing, render(technique, [requests[p] for p in missing], mode), strict=True):
                batch.new[p] = pixels
            batch.generation_s = self._time("generation_s", start)
        except BaseException:
            batch.release()
            raise
        self.generated.update(missing)
        return batch

    def _store_new(
        self, technique: Technique, requests: list[GenerationRequest], keys: list[str], batch: Batch
    ) -> None:
        """Encode the batch's new images (PNG with provenance text chunks and pixel digest) and store them."""
        try:
            fingerprint = canonical_json(technique.fingerprint())
            for p, pixels in batch.new.items():
                text = {"eval_learn:key": keys[p], "eval_learn:request": canonical_json(requests[p].fields()),
                        "eval_learn:technique": fingerprint}  # fmt: skip
                image = StoredImage.from_pixels(pixels, text)
                self.store.put_image(keys[p], image)
                batch.images[p] = image
            batch.new.clear()
        finally:
            batch.release()

    def _deliver(
        self, technique: Technique, requests: list[GenerationRequest], keys: list[str], batch: Batch,
        users: list[list[tuple[str, PromptRecord]]], by_name: dict[str, Evaluation],
    ) -> None:  # fmt: skip
        """Store the batch's new images, then hand the batch to every metric that asked for its images: files,
        judgements, state. A metric that raises is recorded as failed (in a multi run; a single run stops) and gets
        no more images."""
        self._store_new(technique, requests, keys, batch)
        generation_s = batch.generation_s
        per_metric: dict[str, list[tuple[PromptRecord, int]]] = {}
        for p in batch.positions:
            for name, record in users[p]:
                per_metric.setdefault(name, []).append((record, p))
        fresh_uses = sum(p in self.generated for pairs in per_metric.values() for _, p in pairs)
        sampling = technique.sampling_settings()
        for name, pairs in per_metric.items():
            evaluation = by_name[name]
            pairs.sort(key=lambda pair: pair[0].index)
            fresh = sum(p in self.generated for _, p in pairs)
            evaluation.counts["images_generated"] += fresh
            evaluation.counts["images_reused"] += len(pairs) - fresh
            if fresh_uses:
                evaluation.add_time("generation_s", generation_s * fresh / fresh_uses)
            if evaluation.error:
                continue
            start = time.perf_counter()
            try:
                self._update(evaluation, [r for r, _ in pairs], [batch.images[p] for _, p in pairs], sampling)
            except Exception as err:  # a failing metric must not take the others down
                if self.layout == "single":
                    raise
                evaluation.fail("judging", err)
            evaluation.add_time("evaluate_s", time.perf_counter() - start)

    def _update(
        self, evaluation: Evaluation, records: list[PromptRecord], images: list[StoredImage], sampling: dict[str, Any]
    ) -> None:
        folder = evaluation.folder
        for record, image in zip(records, images, strict=True):
            atomic_write(folder / "images" / f"{record.index:05d}.png", image.png)
        start = time.perf_counter()
        judged = evaluation.metric.update([im.pil() for im in images], records)
        evaluation.add_time("metric_update_s", time.perf_counter() - start)
        for record, image, judgement in zip(records, images, judged, strict=True):
            evaluation.entries.append(self._entry(record, image, judgement, sampling))
        evaluation.metric.save_state(folder / "state")

    def _entry(
        self, record: PromptRecord, image: StoredImage, judgement: dict[str, Any], sampling: dict[str, Any]
    ) -> dict[str, Any]:
        request = request_for(record, self.generation)
        if "per_prompt" in sampling:  # what a technique did differently per prompt: this image's entry only
            own = sampling["per_prompt"].get(record.prompt, {})
            sampling = {**{k: v for k, v in sampling.items() if k != "per_prompt"}, **own}
        return {
            "file": f"images/{record.index:05d}.png",
            "index": record.index,
            "prompt": record.prompt,
            "seed": record.seed,
            "guidance_scale": request.guidance_scale,
            "num_inference_steps": request.num_inference_steps,
            "categories": list(record.categories),
            "source": record.extra,
            "pixels_sha256": image.digest,
            **({"sampling": sampling} if sampling else {}),
            "judgement": judgement,
        }

    # --- results --------------------------------------------------------------------------------------------------
    def _finish(self, evaluation: Evaluation) -> None:
        """Compute the metric's value (a multi run records a metric that raises here and goes on)."""
        if evaluation.error is not None:
            return
        start = time.perf_counter()
        try:
            evaluation.result = evaluation.metric.compute()
        except Exception as err:
            if self.layout == "single":
                raise
            evaluation.fail("computing its value", err)
        elapsed = time.perf_counter() - start
        evaluation.add_time("metric_compute_s", elapsed)
        evaluation.add_time("evaluate_s", elapsed)
        self._time("metric_compute_s", start)
        self._time("evaluate_s", start)
        # Judges load on their first image (a rerun with every verdict cached never loads them): that is the
        # metric's setup time, taken out of its update time.
        setup = sum(j.load_seconds_total() if isinstance(j, CachedJudge) else getattr(j, "load_seconds", 0.0)
                    for j in evaluation.metric.judges.values())  # fmt: skip
        update = max(0.0, evaluation.timings.get("metric_update_s", 0.0) - setup)
        evaluation.timings.update(metric_setup_s=round(setup, 4), metric_update_s=round(update, 4))
        for key, value in (("metric_setup_s", setup), ("metric_update_s", update)):
            self.timings[key] = round(self.timings.get(key, 0.0) + value, 4)
