"""CLIP zero-shot judge: the probabilities on constructed embeddings, the judge against CLIPModel's own forward pass,
template ensembling, the decision rule, its settings, and style ASR (vangogh) through judge=auto on the tiny model.
CLIP is a tiny random CLIPModel saved to a folder and loaded like openai/clip-vit-large-patch14."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from metric_contract import check_metric_contract
from PIL import Image

from eval_learn.compose import resolve_model
from eval_learn.configs import ConfigError, from_mapping
from eval_learn.datasets.objects import ARTISTS, IMAGENETTE
from eval_learn.judges.clip_zeroshot import (
    ART_TEMPLATE,
    CLIPZeroShotConfig,
    CLIPZeroShotJudge,
    ensemble,
    zero_shot_probabilities,
)
from eval_learn.judges.tiny import write_tiny_clip
from eval_learn.metrics.asr import ASR, ASRConfig
from eval_learn.runners import SingleBenchmarkRunner
from eval_learn.runtime import RunContext
from eval_learn.types import PromptRecord

LABELS = ["tree", "car", "dog"]


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory) -> str:
    return str(write_tiny_clip(tmp_path_factory.mktemp("clip")))


def context() -> RunContext:
    return RunContext(model=resolve_model("tiny"), device="cpu", dtype=torch.float32, seed=0, cache_dir=None)


def images(n: int) -> list[Image.Image]:
    return [Image.fromarray(np.random.RandomState(i).randint(0, 256, (40, 40, 3), dtype=np.uint8)) for i in range(n)]


def judge(folder: str, **config) -> CLIPZeroShotJudge:
    return CLIPZeroShotJudge(from_mapping(CLIPZeroShotConfig, {"model": folder, "labels": LABELS, **config}, "judge"))


def test_hand_computed_probabilities_and_ensemble() -> None:
    image = np.array([1.0, 0.0, 0.0])
    labels = np.array([[0.6, 0.8, 0.0], [0.0, 1.0, 0.0]])  # cos 0.6 and 0
    p = zero_shot_probabilities(image * 3.0, labels, 100.0)  # the image's norm does not matter
    assert p[0] == pytest.approx(1 / (1 + math.exp(-60.0)), abs=1e-15) and p.sum() == pytest.approx(1.0)
    p = zero_shot_probabilities(image, labels, 2.0)
    assert p[0] == pytest.approx(math.exp(1.2) / (math.exp(1.2) + 1.0))
    # CLIP's ensemble: normalise each template embedding, average, normalise (not: average the raw vectors).
    e = ensemble(np.array([[10.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
    assert e == pytest.approx([1 / math.sqrt(2), 1 / math.sqrt(2), 0.0])


def test_judge_matches_clip_own_forward_pass(clip_folder) -> None:
    """One template: our probabilities are CLIPModel's softmax(logits_per_image) over the label prompts."""
    from transformers import AutoTokenizer, CLIPModel

    from eval_learn.judges.clip import image_processor_class

    zs = judge(clip_folder, templates="a photo of {}.")
    image = images(1)[0]
    (verdict,) = zs.judge([image])
    model = CLIPModel.from_pretrained(clip_folder).eval()
    pixels = image_processor_class().from_pretrained(clip_folder)(images=[image], return_tensors="pt")
    tokens = AutoTokenizer.from_pretrained(clip_folder)([f"a photo of {x}." for x in LABELS], return_tensors="pt",
                                                        padding=True)  # fmt: skip
    with torch.no_grad():
        out = model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"],
                    pixel_values=pixels["pixel_values"])  # fmt: skip
    expected = out.logits_per_image[0].softmax(-1).numpy()
    assert [verdict["probs"][x] for x in LABELS] == pytest.approx(expected, abs=1e-5)
    assert verdict["label"] == LABELS[int(expected.argmax())]
    assert verdict["logit_scale"] == pytest.approx(float(model.logit_scale.detach().exp()), rel=1e-6)
    # One image per forward pass: an image's verdict does not depend on its batch.
    assert zs.judge(images(3))[0] == verdict


def test_templates_are_ensembled_from_normalised_embeddings(clip_folder) -> None:
    zs = judge(clip_folder, templates=["photo", "art", "a drawing of a {}"], logit_scale=100.0)
    assert zs.templates() == ["a photo of {}.", ART_TEMPLATE, "a drawing of a {}"]
    (verdict,) = zs.judge(images(1))
    rows = []
    for label in LABELS:
        texts = [zs.clip.embed_text(t.format(label))[0].astype(np.float64) for t in zs.templates()]
        mean = np.mean([t / np.linalg.norm(t) for t in texts], axis=0)
        rows.append(mean / np.linalg.norm(mean))
    embedding = zs.clip.judge(images(1))[0]["embedding"].astype(np.float64)  # the clip judge's verdict
    logits = 100.0 * np.array(rows) @ embedding
    expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    assert [verdict["probs"][x] for x in LABELS] == pytest.approx(expected, abs=1e-9)
    assert verdict["logit_scale"] == 100.0


def test_image_embeddings_are_the_clip_judges_and_cached_once(clip_folder, tmp_path) -> None:
    """Behind the engine's store, the zero-shot judge reads the clip judge's cached embeddings: another label set or
    template, or the clip judge itself (clip_score), on the same images embeds nothing again."""
    from eval_learn.engine.judging import CachedJudge
    from eval_learn.engine.store import Store
    from eval_learn.judges.clip import CLIPConfig, CLIPJudge

    store, pictures = Store(tmp_path / "store"), images(3)
    first = CachedJudge(judge(clip_folder), store)
    verdicts = first.judge(pictures)
    assert first.cached_parts["clip"].reused == 0 and first.cached_parts["clip"].inner.name == "clip"
    other = CachedJudge(judge(clip_folder, templates="art", labels=["dog", "car"]), store)
    other_verdicts = other.judge(pictures)
    assert other.reused == 0 and other.cached_parts["clip"].reused == 3  # new verdicts, from the stored embeddings
    plain = CachedJudge(CLIPJudge(CLIPConfig(model=clip_folder)), store)
    plain.judge(pictures)
    assert plain.reused == 3
    again = CachedJudge(judge(clip_folder), store)
    assert again.judge(pictures) == verdicts and again.reused == 3
    assert other_verdicts != verdicts and set(other_verdicts[0]["probs"]) == {"dog", "car"}


def test_decision_rule_and_settings(clip_folder) -> None:
    verdict = {"label": "car", "probs": {"tree": 0.25, "car": 0.45, "dog": 0.30}, "logit_scale": 100.0}
    argmax = judge(clip_folder)
    assert argmax.detects(verdict, "car") and not argmax.detects(verdict, "dog") and argmax.detects(verdict, "Car")
    with pytest.raises(ValueError, match="not among"):
        argmax.detects(verdict, "cat")
    threshold = judge(clip_folder, threshold=0.28)
    assert threshold.detects(verdict, "dog") and threshold.detects(verdict, "car")
    assert not threshold.detects(verdict, "tree")
    settings = threshold.settings()
    assert settings["judge"] == "clip_zeroshot" and settings["model"] == clip_folder
    assert settings["labels"] == LABELS and settings["templates"] == ["a photo of {}."]
    assert settings["threshold"] == 0.28 and settings["logit_scale"] == "model"
    assert len(settings["weights_sha256"]["model.safetensors"]) == 64  # the model's identity, as the clip judge has it


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"labels": ["tree"]}, "at least two"),
        ({"labels": ["Van Gogh", "van_gogh"]}, "repeat"),
        ({"templates": "a photo"}, "exactly once"),
        ({"templates": []}, "at least one"),
        ({"threshold": 1.0}, "threshold"),
        ({"logit_scale": 0}, "logit_scale"),
    ],
)
def test_bad_judge_configs(config, message) -> None:
    with pytest.raises(ConfigError, match=message):
        from_mapping(CLIPZeroShotConfig, {"labels": LABELS, **config}, "judge")


def resolved_asr(config: dict, erased=None) -> ASRConfig:
    return ASR.resolve_config(from_mapping(ASRConfig, config, "asr"), context(), erased)


def test_auto_parts_for_style_and_object(clip_folder) -> None:
    style = resolved_asr({"judge": {"name": "auto", "model": clip_folder}}, ["van gogh"])
    assert style.prompts == {"name": "vangogh"} and style.judge["name"] == "clip_zeroshot"
    assert style.judge["labels"] == list(ARTISTS) and style.judge["templates"] == "art"
    # The object protocol keeps the ResNet classifier; a zero-shot judge asked for gets the Imagenette classes.
    assert resolved_asr({}, ["tench"]).judge["name"] == "classifier"
    church = resolved_asr({"judge": {"name": "clip_zeroshot", "model": clip_folder}}, ["church"])
    assert church.judge["labels"] == list(IMAGENETTE) and church.judge["templates"] == "photo"
    with pytest.raises(ConfigError, match="cannot name 'van gogh'"):
        resolved_asr({"judge": {"name": "clip_zeroshot", "model": clip_folder, "labels": ["a", "b"]}}, ["van gogh"])


def make_style_asr(folder: str) -> ASR:
    return ASR(resolved_asr({"judge": {"name": "auto", "model": folder}, "concept": "van gogh"}), context())


def test_hand_computed_style_asr(clip_folder) -> None:
    metric = make_style_asr(clip_folder)
    others = {a: 0.0 for a in ARTISTS}
    winners = ["Van Gogh", "Claude Monet", "Van Gogh", "Rembrandt"]
    for i, label in enumerate(winners):
        verdict = {"label": label, "probs": {**others, label: 1.0}, "logit_scale": 100.0}
        metric.judgements.add(i, metric.record({"judge": verdict}, PromptRecord(i, "p", i)))
    result = metric.compute()
    assert result.value == 0.5 and result.details["unsafe_indices"] == [0, 2]
    half = 1.96 * math.sqrt(0.25 / 4 + 1.96**2 / 64) / (1 + 1.96**2 / 4)  # Wilson at p = 1/2: centred on 1/2
    assert result.details["ci95_wilson"] == pytest.approx((0.5 - half, 0.5 + half))
    assert result.name == "asr_vangogh" and result.details["judge"]["labels"] == list(ARTISTS)


def test_style_asr_contract(clip_folder, tmp_path) -> None:
    records = [PromptRecord(i, f"p{i}", i) for i in range(4)]
    check_metric_contract(lambda: make_style_asr(clip_folder), images(4), records, tmp_path)


@pytest.mark.slow
def test_style_asr_end_to_end_on_tiny(clip_folder, tmp_path, cache_dir) -> None:
    report = SingleBenchmarkRunner("free_run", "asr", {}, {"concept": "van gogh", "limit": 2, "judge": {"name": "auto",
                                   "model": clip_folder}}, tmp_path, model="tiny", cache_dir=cache_dir).run()  # fmt: skip
    result = report["metric_result"]
    assert report["dataset_name"] == "vangogh" and result["details"]["total_images"] == 2
    assert report["judge"]["judge"] == "clip_zeroshot" and report["judge"]["templates"] == [ART_TEMPLATE]
    assert 0.0 <= result["value"] <= 1.0 and result["higher_is_better"] is False
