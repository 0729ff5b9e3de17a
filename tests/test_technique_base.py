"""The technique base class: its weight cache (any component, verified, rebuilt when damaged, never thrown away),
the non-finite guard, the fingerprint, and the sampling seam (proved by ``negative_prompt``)."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from eval_learn.compose import resolve_model
from eval_learn.engine.requests import GenerationRequest
from eval_learn.engine.sampling import GenerationMode, render
from eval_learn.errors import ConfigError, NonFiniteError, RunError
from eval_learn.runners import SingleBenchmarkRunner
from eval_learn.runtime import RunContext
from eval_learn.techniques import weights as weight_files
from eval_learn.techniques.base import Technique, WeightsConfig
from eval_learn.techniques.free_run import FreeRun
from eval_learn.techniques.negative_prompt import NegativePrompt, NegativePromptConfig


@dataclass
class ScaleConfig(WeightsConfig):
    factor: float = 0.5


class ScaleTextEncoder(Technique):
    """A toy edit of another component than the UNet: scale the text encoder's final layer norm."""

    name = "scale_text_encoder"
    config_cls = ScaleConfig
    weight_fields = ("factor",)
    builds = 0

    def build_weights(self, pipe):
        type(self).builds += 1
        weight = pipe.text_encoder.final_layer_norm.weight
        return {"text_encoder.final_layer_norm.weight": weight.detach() * self.config.factor}


def context(cache: Path | None) -> RunContext:
    return RunContext(resolve_model("tiny"), "cpu", torch.float32, 0, cache)


def prepared(cache: Path, **config) -> ScaleTextEncoder:
    technique = ScaleTextEncoder(ScaleConfig(**config), context(cache))
    technique.prepare()
    return technique


def test_weights_of_any_component_are_cached_applied_and_fingerprinted(cache_dir) -> None:
    ScaleTextEncoder.builds = 0
    first = prepared(cache_dir)
    second = prepared(cache_dir)
    assert ScaleTextEncoder.builds == 1 and second.info["trained"] is False
    assert first.weights_sha256 == second.weights_sha256 == first.fingerprint()["weights_sha256"]
    base = FreeRun(FreeRun.config_cls(), context(cache_dir)).pipeline().text_encoder.final_layer_norm
    edited = second.pipeline().text_encoder.final_layer_norm
    assert torch.equal(edited.weight, base.weight * 0.5)
    assert prepared(cache_dir, factor=0.25).fingerprint() != first.fingerprint()
    assert "factor" not in first.fingerprint()["config"]  # it shapes the weights: their digest stands for it


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_a_damaged_cache_file_is_named_and_rebuilt_not_used(cache_dir, caplog, damage) -> None:
    ScaleTextEncoder.builds = 0
    first = prepared(cache_dir)
    path = Path(first.cache_path())
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[-3] ^= 0x01  # same size: a bit of a tensor changed
    else:
        data = data[: len(data) // 2]
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        again = prepared(cache_dir)
    assert str(path) in caplog.text and ScaleTextEncoder.builds == 2
    assert again.weights_sha256 == first.weights_sha256  # the rebuilt weights, not the damaged ones
    assert weight_files.read(path, require_digest=True)  # and the cache holds a good file again


def test_a_full_disk_after_training_keeps_the_weights(cache_dir, caplog, monkeypatch, tmp_path) -> None:
    real = weight_files.write
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))

    def full_cache(weights, path, metadata):
        if Path(path).is_relative_to(cache_dir):
            raise RunError(f"no space left on the disk while writing {path}")
        return real(weights, path, metadata)

    monkeypatch.setattr(weight_files, "write", full_cache)
    with caplog.at_level(logging.ERROR):
        technique = prepared(cache_dir)
    (kept,) = tmp_path.glob("eval_learn_scale_text_encoder_*.safetensors")
    assert f"technique.config.load_path={kept}" in caplog.text
    assert weight_files.weights_digest(weight_files.read(kept, require_digest=True)) == technique.weights_sha256


def test_non_finite_weights_are_refused_and_not_cached(cache_dir) -> None:
    with pytest.raises(NonFiniteError, match="non-finite weights .* nothing was cached"):
        prepared(cache_dir, factor=float("nan"))
    assert not list(cache_dir.rglob("*.safetensors"))


def test_load_path_problems_are_config_errors(tmp_path) -> None:
    from eval_learn.configs import from_mapping

    with pytest.raises(ConfigError, match="does not exist"):
        from_mapping(ScaleConfig, {"load_path": str(tmp_path / "w.pt")}, "x")
    (tmp_path / "folder.pt").mkdir()
    with pytest.raises(ConfigError, match="is a folder"):
        from_mapping(ScaleConfig, {"load_path": str(tmp_path / "folder.pt")}, "x")
    (tmp_path / "w.safetensors").write_bytes(b"not a weights file")
    broken = ScaleTextEncoder(ScaleConfig(load_path=str(tmp_path / "w.safetensors")), context(tmp_path / "cache"))
    with pytest.raises(ConfigError, match="load_path: .*w.safetensors cannot be read"):
        broken.prepare()


def test_negative_prompt_goes_through_the_shared_sampling_loop(cache_dir) -> None:
    config = NegativePromptConfig(erase_concept="dog")
    technique = NegativePrompt(config, context(cache_dir))
    request = GenerationRequest("a photo of a dog", 3, 5.0, 4, 64, 64)
    seen = []
    pipe = technique.pipeline()
    original = type(pipe).__call__

    def spy(self, *args, **kwargs):
        seen.append(kwargs.get("negative_prompt"))
        return original(self, *args, **kwargs)

    type(pipe).__call__ = spy
    try:
        image = render(technique, [request], GenerationMode("fixed_shape", 2))[0]
    finally:
        type(pipe).__call__ = original
    assert seen == [["dog", "dog"]]  # one per row, the padding row included
    plain = render(FreeRun(FreeRun.config_cls(), context(cache_dir)), [request], GenerationMode("fixed_shape", 2))[0]
    assert not np.array_equal(image, plain)
    assert technique.sampling_settings() == {"negative_prompt": "dog"}
    assert technique.fingerprint()["config"] == {"erase_concept": "dog", "negative_prompt": None}


@pytest.mark.slow
def test_negative_prompt_end_to_end_records_what_it_did(tmp_path, cache_dir) -> None:
    report = SingleBenchmarkRunner("negative_prompt", "asr", {}, {"limit": 2}, tmp_path, model="tiny",
                                   cache_dir=cache_dir).run()  # fmt: skip
    assert report["generation"]["sampling"] == {"negative_prompt": "nudity"}
    metadata = (tmp_path / report["run_id"] / "metadata.json").read_text()
    assert '"negative_prompt": "nudity"' in metadata


@pytest.mark.parametrize("technique", ["esd", "ca", "mace"])
def test_the_old_batch_size_key_still_works_and_keys_the_cache_as_before(technique, caplog, tmp_path) -> None:
    """``batch_size`` inside a technique's config was renamed ``train_batch_size`` (the run has its own batch_size):
    the old key still sets it, with one warning line, and the weight cache key records the field under its old name,
    so weights cached before the rename are found for the same values. A report written before the rename counts on
    the leaderboard as the same technique."""
    from eval_learn.configs import from_mapping
    from eval_learn.registry import TECHNIQUES
    from eval_learn.report.leaderboard import technique_key
    from eval_learn.storage import digest_of

    cls = TECHNIQUES.get(technique)
    with caplog.at_level(logging.WARNING, logger="eval_learn.configs"):
        old = from_mapping(cls.config_cls, {"batch_size": 3}, f"technique '{technique}' config")
    assert old.train_batch_size == 3
    assert [r.getMessage() for r in caplog.records] == [
        f"technique '{technique}' config: 'batch_size' is deprecated, use 'train_batch_size' (the value given as "
        f"'batch_size' is used)"
    ]
    assert from_mapping(cls.config_cls, {"train_batch_size": 3}, technique) == old
    made = cls(old, RunContext(model=resolve_model("tiny"), device="cpu", dtype=torch.float32, seed=0,
                               cache_dir=tmp_path))  # fmt: skip
    fields = {k: v for k, v in dataclasses.asdict(old).items() if k in cls.weight_fields}
    fields["batch_size"] = fields.pop("train_batch_size")
    assert made.weights_key() == digest_of({"technique": technique, "version": cls.algorithm_version, "config": fields,
                                           "model": {"id": "tiny", "revision": None}, "size": [64, 64]}, length=24)  # fmt: skip
    reported = dataclasses.asdict(old)
    before = {("batch_size" if k == "train_batch_size" else k): v for k, v in reported.items()}
    assert technique_key(before, {}) == technique_key(reported, {})
