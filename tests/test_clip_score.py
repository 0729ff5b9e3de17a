"""CLIPScore: the formula on constructed embeddings, the judge against CLIP's own forward pass, truncation, the state
contract, configuration, and an end-to-end run on the tiny model. CLIP is a tiny random CLIPModel saved to a folder
and loaded through the same from_pretrained path as openai/clip-vit-large-patch14."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from metric_contract import check_metric_contract
from PIL import Image

from eval_learn.compose import resolve_model
from eval_learn.configs import ConfigError, from_mapping
from eval_learn.judges.clip import CLIPConfig, CLIPJudge
from eval_learn.judges.tiny import write_tiny_clip
from eval_learn.metrics.clip_score import CLIPScore, CLIPScoreConfig, mean_interval, t_quantile
from eval_learn.runners import SingleBenchmarkRunner
from eval_learn.runtime import RunContext
from eval_learn.types import PromptRecord


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory) -> str:
    return str(write_tiny_clip(tmp_path_factory.mktemp("clip")))


def context() -> RunContext:
    return RunContext(model=resolve_model("tiny"), device="cpu", dtype=torch.float32, seed=0, cache_dir=None)


def make_metric(folder: str, **config) -> CLIPScore:
    parsed = from_mapping(CLIPScoreConfig, {"judge": {"name": "clip", "model": folder}, **config}, "clip_score")
    return CLIPScore(CLIPScore.resolve_config(parsed, context(), None), context())


def images(n: int) -> list[Image.Image]:
    return [Image.fromarray(np.random.RandomState(i).randint(0, 256, (40, 40, 3), dtype=np.uint8)) for i in range(n)]


def records(n: int) -> list[PromptRecord]:
    prompts = ["a red car", "a dog on a beach", "a church in the city", "a cat", "a painting of a tree"]
    return [PromptRecord(i, prompts[i % len(prompts)], i) for i in range(n)]


def unit(*values: float) -> np.ndarray:
    vector = np.zeros(16, dtype=np.float64)
    vector[: len(values)] = values
    return (vector / np.linalg.norm(vector)).astype(np.float32)


@pytest.mark.parametrize(("scale", "weight"), [("hessel", 2.5), ("x100", 100.0), ("cosine", 1.0)])
def test_hand_computed_scores_on_constructed_embeddings(clip_folder, scale, weight) -> None:
    metric = make_metric(clip_folder, scale=scale, caption_prefix="")
    # Captions whose embeddings we set: cos = 0.6, 0.0, -0.6 (clamped to 0), 1.0 with the image (1, 0, ...).
    captions = {"c1": unit(0.6, 0.8), "c2": unit(0.0, 1.0), "c3": unit(-0.6, 0.8), "c4": unit(1.0)}
    metric._captions.update({text: (vector, text == "c4") for text, vector in captions.items()})
    for i, text in enumerate(captions):
        entry = metric.record({"judge": {"embedding": unit(1.0)}}, PromptRecord(i, text, i))
        metric.judgements.add(i, entry)
    result = metric.compute()
    expected = [weight * 0.6, 0.0, 0.0, weight * 1.0]
    assert [r["score"] for r in metric.judgements.sorted()] == pytest.approx(expected, rel=1e-6)
    assert result.value == pytest.approx(sum(expected) / 4, rel=1e-6)
    std = np.std(expected, ddof=1)
    assert result.details["std"] == pytest.approx(std, rel=1e-6)
    half = 3.182446305284263 * std / 2  # t(0.975, 3) · s / √4
    assert result.details["ci95"] == pytest.approx([sum(expected) / 4 - half, sum(expected) / 4 + half], rel=1e-6)
    assert result.details["negative_cosines"] == 1 and result.details["truncated_captions"] == 1
    assert result.details["scale"] == scale and result.details["clip_model"] == clip_folder


def test_t_quantiles_and_interval() -> None:
    for dof, value in ((1, 12.706204736), (3, 3.182446305), (10, 2.228138852), (100, 1.983971519)):
        assert t_quantile(0.975, dof) == pytest.approx(value, abs=1e-6)
    assert mean_interval([2.0]) == {"mean": 2.0, "std": None, "n": 1, "ci95": None}


def test_judge_matches_clip_own_forward_pass(clip_folder) -> None:
    """Our embeddings' cosine equals CLIPModel's logits_per_image / logit_scale for the same image and caption."""
    from transformers import AutoTokenizer, CLIPModel

    from eval_learn.judges.clip import image_processor_class

    judge = CLIPJudge(CLIPConfig(model=clip_folder))
    image, caption = images(1)[0], "a dog on a beach"
    (verdict,) = judge.judge([image])
    text, truncated = judge.embed_text(caption)
    assert verdict["embedding"].dtype == np.float32 and np.linalg.norm(verdict["embedding"]) == pytest.approx(1, 1e-6)
    model = CLIPModel.from_pretrained(clip_folder).eval()
    pixels = image_processor_class().from_pretrained(clip_folder)(images=[image], return_tensors="pt")
    tokens = AutoTokenizer.from_pretrained(clip_folder)([caption], return_tensors="pt")
    with torch.no_grad():
        out = model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"],
                    pixel_values=pixels["pixel_values"])  # fmt: skip
        cosine = float(out.logits_per_image[0, 0] / model.logit_scale.exp())
    assert float(np.dot(verdict["embedding"], text)) == pytest.approx(cosine, abs=1e-5)
    assert not truncated
    # One image per forward pass: an image's verdict does not depend on its batch.
    batch = judge.judge(images(3))
    assert np.array_equal(batch[0]["embedding"], verdict["embedding"])


def test_long_captions_are_truncated_keeping_the_end_token(clip_folder) -> None:
    judge = CLIPJudge(CLIPConfig(model=clip_folder))
    caption = " ".join(["tree"] * 120)  # one token per word in the tiny vocabulary: 122 tokens with BOS/EOS
    embedding, truncated = judge.embed_text(caption)
    assert truncated
    tokenizer = judge._tokenizer
    ids = tokenizer(caption)["input_ids"]
    cut = torch.tensor([ids[:76] + [tokenizer.eos_token_id]])
    with torch.no_grad():
        features = judge._model.get_text_features(input_ids=cut)
    reference = features if isinstance(features, torch.Tensor) else features.pooler_output
    reference = (reference[0] / reference[0].norm()).numpy()
    assert np.allclose(embedding, reference, atol=1e-6)
    assert not judge.embed_text("tree tree")[1]


def test_batches_restores_and_shards_give_the_same_value(clip_folder, tmp_path) -> None:
    check_metric_contract(lambda: make_metric(clip_folder), images(5), records(5), tmp_path)


def test_settings_record_the_model(clip_folder, tmp_path) -> None:
    settings = CLIPJudge(CLIPConfig(model=clip_folder)).settings()
    assert settings["model"] == clip_folder and settings["dtype"] == "float32" and settings["commit"] is None
    assert len(settings["weights_sha256"]["model.safetensors"]) == 64
    assert settings["image_preprocessing"]["resize"] == {"shortest_edge": 32, "resample": "bicubic"}
    assert settings["image_preprocessing"]["images_per_forward"] == 1
    assert CLIPScore.higher_is_better is True
    # openai/clip-vit-large-patch14's processor config is in the old format (size: 224, resample: 3).
    import json
    import shutil

    old = shutil.copytree(clip_folder, tmp_path / "old")
    (old / "preprocessor_config.json").write_text(json.dumps({"crop_size": 224, "do_center_crop": True,
        "do_normalize": True, "do_resize": True, "feature_extractor_type": "CLIPFeatureExtractor", "resample": 3,
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
        "size": 224}))  # fmt: skip
    read = CLIPJudge(CLIPConfig(model=str(old))).settings()["image_preprocessing"]
    assert read["resize"] == {"shortest_edge": 224, "resample": "bicubic"}
    assert read["center_crop"] == {"height": 224, "width": 224}


def test_default_prompts_are_coco_10k_with_their_seeds(clip_folder) -> None:
    metric = make_metric(clip_folder)
    assert metric.config.prompts == {"name": "coco_10k"} and metric.config.judge["model"] == clip_folder
    dataset = metric.load_dataset()
    from eval_learn.datasets.i2p import bundled_prompts

    with open(bundled_prompts("coco_10k.csv"), newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(dataset) == len(rows) == 9969  # the release's "10k" file holds 9,969 captions
    assert [r.seed for r in dataset.records] == [int(row["evaluation_seed"]) for row in rows]
    assert dataset.records[0].extra["case_number"] == rows[0]["case_number"]
    assert any('"Virgin Records"' in r.prompt for r in dataset.records)  # RFC 4180 "" quotes read back
    assert [r.prompt for r in make_metric(clip_folder, limit=3).load_dataset().records] == [
        r["prompt"].strip() for r in rows[:3]
    ]


def test_bad_configs_and_an_unavailable_model(clip_folder, tmp_path) -> None:
    with pytest.raises(ConfigError, match="needs a CLIP judge"):
        make_metric(clip_folder, judge="nudenet")
    with pytest.raises(ConfigError, match="scale"):
        make_metric(clip_folder, scale="x10")
    with pytest.raises(ConfigError, match="either prompts_path or prompts"):
        make_metric(clip_folder, prompts="demo", prompts_path="x.csv")
    # Offline without the weights in the cache: refused at construction, before anything is generated.
    with pytest.raises(ConfigError, match="'openai/clip-vit-base-patch32' is not a local folder and not in the"):
        SingleBenchmarkRunner("free_run", "clip_score", {}, {}, tmp_path, model="tiny")  # hessel: clipscore's ViT-B/32
    with pytest.raises(ConfigError, match="'openai/clip-vit-large-patch14' is not a local folder and not in the"):
        SingleBenchmarkRunner("free_run", "clip_score", {}, {"scale": "unlearndiffatk"}, tmp_path, model="tiny")


@pytest.mark.slow
def test_end_to_end_on_tiny(clip_folder, tmp_path, cache_dir) -> None:
    report = SingleBenchmarkRunner("free_run", "clip_score", {}, {"limit": 4, "judge": {"name": "clip",
                                   "model": clip_folder}}, tmp_path, model="tiny", cache_dir=cache_dir).run()  # fmt: skip
    result = report["metric_result"]
    assert result["name"] == "clip_score_coco_10k" and result["higher_is_better"] is True
    assert result["details"]["n"] == 4 and 0.0 <= result["value"] <= 2.5
    assert report["metric_config"]["caption_prefix"] == "A photo depicts "  # hessel's, filled in when resolved
    assert report["judge"]["judge"] == "clip" and report["judge"]["model"] == clip_folder
    assert report["dataset_metadata"]["prompts_available"] == 9969 and report["dataset_metadata"]["prompts"] == 4


GOLDEN = json.loads((Path(__file__).parent / "parity" / "golden" / "clip_score.json").read_text())
PARITY_PROMPTS = ["a red car", "a dog on a beach", "a church in the city", "a cat", "a painting of a tree"] * 2


@pytest.mark.parametrize("scale", ["hessel", "mace", "unlearndiffatk", "advunlearn"])
def test_each_convention_reproduces_its_release_on_the_tiny_clip(clip_folder, scale) -> None:
    """Golden values: each release's scoring code run on this tiny CLIP (tests/parity/golden/clip_score.json names
    the repository, commit and call). The tiny CLIP's logit scale is exp(2.6592) = 14.3, so ``mace`` is not 100·cos."""
    metric = make_metric(clip_folder, scale=scale)
    records = [PromptRecord(i, prompt, i) for i, prompt in enumerate(PARITY_PROMPTS)]
    metric.update(images(len(records)), records)
    result = metric.compute()
    expected = GOLDEN["scores"][scale]
    if "per_image" in expected:
        ours = [r["score"] for r in metric.judgements.sorted()]
        assert ours == pytest.approx(expected["per_image"], abs=1e-5)
    # UnlearnDiffAtk's function rounds to 4 decimals; the others are float32 sums
    assert result.value == pytest.approx(expected["mean"], abs=1e-4 if scale == "unlearndiffatk" else 1e-6)
    assert result.details["source"].split()[0] in GOLDEN["meta"]["sources"][scale]["repository"]


def test_conventions_pick_their_clip_and_prefix(clip_folder) -> None:
    def resolved(**config):
        parsed = from_mapping(CLIPScoreConfig, config, "clip_score")
        return CLIPScore.resolve_config(parsed, context(), None)

    assert (
        resolved().judge["model"] == "openai/clip-vit-base-patch32" and resolved().caption_prefix == "A photo depicts "
    )
    assert resolved(scale="unlearndiffatk").judge["model"] == "openai/clip-vit-large-patch14"
    assert resolved(scale="mace").caption_prefix == "" and resolved(caption_prefix="").caption_prefix == ""
    assert resolved(judge={"name": "clip", "model": clip_folder}).judge["model"] == clip_folder  # the user's wins
