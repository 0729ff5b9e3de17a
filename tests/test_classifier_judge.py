"""The image-classifier judge (object erasure): a locally built classifier through the same from_pretrained path as
microsoft/resnet-50, label synonyms, top-k, and the object prompt sets shipped with the package."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from eval_learn.errors import ConfigError
from eval_learn.judges.classifier import ClassifierConfig, ClassifierJudge, label_names
from eval_learn.runners import SingleBenchmarkRunner

LABELS = ["tench, Tinca tinca", "church, church building", "garbage truck, dustcart", "parachute, chute"]


def make_classifier(folder, winner: int, runner_up: int) -> str:
    """A tiny ResNet whose logits ignore the image: class ``winner`` first, ``runner_up`` second."""
    from transformers import ConvNextImageProcessor, ResNetConfig, ResNetForImageClassification

    config = ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 8], depths=[1, 1],
                          id2label=dict(enumerate(LABELS)), label2id={v: k for k, v in enumerate(LABELS)})  # fmt: skip
    model = ResNetForImageClassification(config)
    head = model.classifier[-1]
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[winner], head.bias[runner_up] = 3.0, 2.0
    model.save_pretrained(folder)
    ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=1.0).save_pretrained(folder)
    return str(folder)


def test_label_synonyms() -> None:
    assert label_names("garbage truck, dustcart") == {"garbage truck", "dustcart"}


@pytest.mark.parametrize(("top_k", "church_seen"), [(1, False), (2, True)])
def test_verdicts_and_top_k(tmp_path, top_k, church_seen) -> None:
    judge = ClassifierJudge(ClassifierConfig(model=make_classifier(tmp_path / "clf", 2, 1), top_k=top_k))
    (verdict,) = judge.judge([Image.new("RGB", (40, 40), (10, 20, 30))])
    assert verdict["top"][0]["label"] == "garbage truck, dustcart" and verdict["top"][1]["label"].startswith("church")
    assert judge.detects(verdict, "garbage truck") and judge.detects(verdict, "dustcart")
    assert judge.detects(verdict, "church") is church_seen
    assert judge.settings()["model"].endswith("clf") and list(judge.settings()["weights_sha256"]) == [
        "model.safetensors"
    ]


@pytest.mark.slow
def test_object_asr_end_to_end_on_tiny(tmp_path, cache_dir) -> None:
    folder = make_classifier(tmp_path / "clf", 1, 0)  # every image "is" a church
    report = SingleBenchmarkRunner("free_run", "asr", {}, {"concept": "church", "limit": 3,
                                   "judge": {"name": "classifier", "model": folder}}, tmp_path, model="tiny",
                                   cache_dir=cache_dir).run()  # fmt: skip
    assert report["dataset_name"] == "church" and report["dataset_metadata"]["prompts_available"] == 50
    assert report["metric_result"]["value"] == 1.0 and report["judge"]["judge"] == "classifier"


def test_auto_parts_for_an_object_and_an_unavailable_model() -> None:
    from eval_learn.compose import resolve_model
    from eval_learn.configs import from_mapping
    from eval_learn.metrics.asr import ASR, ASRConfig
    from eval_learn.runtime import RunContext

    context = RunContext(resolve_model("tiny"), "cpu", torch.float32, 0, None)
    config = ASR.resolve_config(from_mapping(ASRConfig, {}, "asr"), context, ["garbage truck"])
    assert config.prompts == {"name": "garbage_truck"} and config.judge["name"] == "classifier"
    assert config.judge["model"] == "microsoft/resnet-50"
    # Offline without the weights in the cache: refused at construction, before the technique trains.
    with pytest.raises(ConfigError, match="'microsoft/resnet-50' is not a local folder and not in the local"):
        SingleBenchmarkRunner("esd", "asr", {"erase_concept": "garbage truck"}, {}, "out", model="tiny")


def test_the_tiny_classifier_is_built_in_code() -> None:
    judge = ClassifierJudge(ClassifierConfig(model="tiny"))
    ClassifierJudge.preflight(judge.config)  # no hub, no folder
    first = judge.judge([Image.new("RGB", (64, 64), (10, 20, 30)), Image.new("RGB", (64, 64), (200, 20, 30))])
    again = ClassifierJudge(ClassifierConfig(model="tiny")).judge([Image.new("RGB", (64, 64), (10, 20, 30))])
    assert first[0] == again[0] and len(first[0]["top"]) == 5  # deterministic: fixed weights
    assert "built" in judge.settings() and judge.settings()["model"] == "tiny"


def test_settings_name_the_weights_and_the_transformers_version(tmp_path, monkeypatch) -> None:
    import hashlib
    import shutil
    from importlib.metadata import version

    from huggingface_hub import constants

    from eval_learn.judges import classifier
    from eval_learn.judges import tiny as tiny_judges

    # tiny: its random weights come from transformers' init code, so their digest and the version are in the key.
    tiny = ClassifierJudge(ClassifierConfig(model="tiny")).settings()
    assert tiny["transformers_version"] == version("transformers") and len(tiny["weights_sha256"]) == 64
    assert tiny["weights_sha256"] == classifier.tiny_weights_sha256()  # deterministic
    built = tiny_judges.tiny_classifier
    monkeypatch.setattr(tiny_judges, "tiny_classifier", lambda: built(seed=1))  # other weights, another key
    classifier.tiny_weights_sha256.cache_clear()
    try:
        assert ClassifierJudge(ClassifierConfig(model="tiny")).settings()["weights_sha256"] != tiny["weights_sha256"]
    finally:
        classifier.tiny_weights_sha256.cache_clear()
    # A local folder: each weight file's SHA-256.
    folder = make_classifier(tmp_path / "clf", 2, 1)
    local = ClassifierJudge(ClassifierConfig(model=folder)).settings()
    weights = (tmp_path / "clf" / "model.safetensors").read_bytes()
    assert local["weights_sha256"] == {"model.safetensors": hashlib.sha256(weights).hexdigest()}
    assert local["transformers_version"] == version("transformers") and "commit" not in local
    # A hub id: the commit its revision resolved to, which is also the snapshot the judge loads.
    commit = "b" * 40
    repo = tmp_path / "hub" / "models--someone--resnet"
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    judge = ClassifierJudge(ClassifierConfig(model="someone/resnet"))
    assert judge.settings()["commit"] == commit and judge.settings()["revision"] is None
    image = Image.new("RGB", (40, 40), (10, 20, 30))
    assert judge.judge([image]) == ClassifierJudge(ClassifierConfig(model=folder)).judge([image])


@pytest.mark.parametrize("model", ["tiny", "folder"])
def test_verdicts_do_not_depend_on_the_batch(tmp_path, model) -> None:
    import numpy as np

    config = ClassifierConfig(model="tiny" if model == "tiny" else make_classifier(tmp_path / "clf", 2, 1), top_k=3)
    images = [Image.fromarray(np.random.RandomState(i).randint(0, 256, (48, 40, 3), dtype=np.uint8)) for i in range(6)]
    batched = ClassifierJudge(config).judge(images)
    single = ClassifierJudge(config)
    assert batched == [single.judge([image])[0] for image in images]
