"""A training killed part-way resumes from its last saved state on the next run and ends with the same weights, bit
for bit, as a run that was never interrupted; the saved state is removed once the weights are cached."""

from __future__ import annotations

import pytest
import torch

from eval_learn.compose import resolve_model
from eval_learn.configs import from_mapping
from eval_learn.runtime import RunContext
from eval_learn.techniques.base import Technique
from eval_learn.techniques.ca import CAConfig, CATrainer, ConceptAblation
from eval_learn.techniques.checkpoint import TrainingCheckpoint
from eval_learn.techniques.esd import ESD, ESDConfig
from eval_learn.techniques.mace import MACE, MACEConfig, MACETrainer

TRAINERS = {
    "esd": (ESD, ESDConfig, {"train_steps": 6, "sample_steps": 4, "train_method": "xattn"}),
    "ca": (
        ConceptAblation,
        CAConfig,
        {
            "erase_concept": "cat",
            "anchor_concept": "dog",
            "train_steps": 6,
            "train_batch_size": 2,
            "num_anchor_images": 4,
            "anchor_steps": 2,
        },
    ),  # fmt: skip
    # MACE saves after each concept's LoRA: four concepts, killed after the third.
    "mace": (
        MACE,
        MACEConfig,
        {
            "erase_concept": ["red", "dog", "car", "tree"],
            "mapping_concept": "",
            "prompt_templates": ["a photo of a {}", "{}"],
            "num_images": 2,
            "image_steps": 2,
            "train_steps": 2,
            "preserve_coco": 10,
            "lamb": 0.5,
        },
    ),  # fmt: skip
}


class Killed(Exception):
    """Stands in for a kill: raised right after a save, so the next run finds exactly that state on disk."""


def build(name: str, cache) -> Technique:
    cls, config_cls, fields = TRAINERS[name]
    config = from_mapping(config_cls, fields, name)
    return cls(config, RunContext(model=resolve_model("tiny"), device="cpu", dtype=torch.float32, seed=0,
                                  cache_dir=cache))  # fmt: skip


@pytest.mark.parametrize(
    "name", [n if n == "esd" else pytest.param(n, marks=pytest.mark.slow) for n in sorted(TRAINERS)]
)
def test_a_killed_training_resumes_and_ends_with_the_same_weights(name, tmp_path, monkeypatch) -> None:
    clean = build(name, tmp_path / "clean")
    clean.prepare()
    assert "training_resumed_from_step" not in clean.info

    monkeypatch.setattr(Technique, "checkpoint_every_s", 0.0)  # save after every step
    save = TrainingCheckpoint.maybe_save

    def save_then_die(self, step, state, force=False):
        save(self, step, state, True)  # every step (the interval would otherwise grow with the save's duration)
        if step == 3:
            raise Killed

    monkeypatch.setattr(TrainingCheckpoint, "maybe_save", save_then_die)
    with pytest.raises(Killed):
        build(name, tmp_path / "killed").prepare()
    partial = list((tmp_path / "killed").rglob("*.pt"))  # the training state (and CA's anchors, MACE's images)
    assert len(partial) == (1 if name == "esd" else 2) and not list((tmp_path / "killed").rglob("*.safetensors"))

    monkeypatch.setattr(TrainingCheckpoint, "maybe_save", save)

    def render_again(self, *args):
        raise AssertionError("the training images were saved: they must not be rendered again")

    monkeypatch.setattr(CATrainer, "make_anchor_images", render_again)
    monkeypatch.setattr(MACETrainer, "prepare_data", render_again)
    resumed = build(name, tmp_path / "killed")
    resumed.prepare()
    assert resumed.info["training_resumed_from_step"] == 3
    assert resumed.weights_sha256 == clean.weights_sha256  # bit for bit
    assert resumed.info["losses"] == clean.info["losses"]
    assert not any(p.exists() for p in partial)  # the finished weights are cached: the saved state is gone


def test_a_damaged_checkpoint_means_starting_over(tmp_path) -> None:
    path = tmp_path / "x.partial.pt"
    path.write_bytes(b"not a checkpoint")
    checkpoint = TrainingCheckpoint(path)
    assert checkpoint.load() is None and not path.exists()


def test_a_failed_save_never_stops_training(tmp_path, monkeypatch) -> None:
    import eval_learn.techniques.checkpoint as checkpoint_module
    from eval_learn.errors import RunError

    def disk_full(path, data):
        raise RunError(f"no space left on the device for {path}")

    monkeypatch.setattr(checkpoint_module, "atomic_write", disk_full)
    checkpoint = TrainingCheckpoint(tmp_path / "x.partial.pt", every_s=0.0)
    checkpoint.maybe_save(1, lambda: {"losses": [1.0]})  # logs, does not raise
    assert checkpoint.disabled and checkpoint.saves == 0 and not (tmp_path / "x.partial.pt").exists()


def test_a_state_saved_by_other_library_versions_is_not_used(tmp_path) -> None:
    checkpoint = TrainingCheckpoint(tmp_path / "x.partial.pt", every_s=0.0)
    checkpoint.maybe_save(2, lambda: {"losses": [1.0, 0.5]})
    (tmp_path / ".x.partial.pt.abc.tmp").write_bytes(b"left by a kill during a save")
    assert TrainingCheckpoint(tmp_path / "x.partial.pt").load()["step"] == 2
    assert not (tmp_path / ".x.partial.pt.abc.tmp").exists()  # the killed save's temporary file is removed
    state = torch.load(tmp_path / "x.partial.pt", weights_only=True)
    state["versions"]["torch"] = "0.0.1"
    torch.save(state, tmp_path / "x.partial.pt")
    assert TrainingCheckpoint(tmp_path / "x.partial.pt").load() is None and not (tmp_path / "x.partial.pt").exists()


def test_a_diverging_training_leaves_no_saved_state(tmp_path, monkeypatch) -> None:
    from eval_learn.errors import NonFiniteError

    monkeypatch.setattr(Technique, "checkpoint_every_s", 0.0)  # a save after the first step, before it diverges
    saves = []
    save = TrainingCheckpoint.maybe_save
    monkeypatch.setattr(TrainingCheckpoint, "maybe_save", lambda self, *a, **k: (save(self, *a, **k),
                                                                                  saves.append(self.saves)))  # fmt: skip
    technique = build("esd", tmp_path)
    technique.config.learning_rate = 1e30  # diverges within a few steps
    with pytest.raises(NonFiniteError):
        technique.prepare()
    assert saves and saves[0] == 1  # a state was saved ...
    assert not list(tmp_path.rglob("*.pt")) and not list(tmp_path.rglob("*.tmp"))  # ... and removed
