"""TIFA: the hand-made 3-question case against the release's own BLIP / SBERT / scoring code run on the same tiny
random models (tests/parity/golden/tifa.json), the SBERT choice mapping by hand, the questions file checks, the state
contract and an end-to-end run on model=tiny over the shipped sample. The BLIP VQA and SBERT models are tiny random
models built in code and loaded through the same from_pretrained path as Salesforce/blip-vqa-capfilt-large."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from metric_contract import check_metric_contract
from PIL import Image

from eval_learn.compose import resolve_model
from eval_learn.configs import ConfigError, from_mapping
from eval_learn.datasets.tifa import TIFA
from eval_learn.datasets.tifa import TIFAConfig as TIFAPromptsConfig
from eval_learn.judges.tiny import write_tiny_blip_vqa, write_tiny_sbert
from eval_learn.judges.vqa import VQAConfig, VQAJudge
from eval_learn.metrics.tifa import TIFAConfig, TIFAMetric
from eval_learn.runners import SingleBenchmarkRunner
from eval_learn.runtime import RunContext
from eval_learn.types import PromptRecord

GOLDEN = json.loads((Path(__file__).parent / "parity" / "golden" / "tifa.json").read_text())


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("tifa")
    return {
        "name": "vqa",
        "model": str(write_tiny_blip_vqa(root / "blip")),
        "sbert": str(write_tiny_sbert(root / "sbert")),
    }


def context() -> RunContext:
    return RunContext(model=resolve_model("tiny"), device="cpu", dtype=torch.float32, seed=0, cache_dir=None)


def questions_file(folder: Path, captions: dict[str, list[dict]]) -> str:
    entries = [{"id": cid, "caption": f"caption {cid}", "element": "", **q} for cid, qs in captions.items() for q in qs]
    path = folder / "questions.json"
    path.write_text(json.dumps(entries))
    return str(path)


def make_metric(judge: dict, prompts: dict | str = "auto", **config) -> TIFAMetric:
    parsed = from_mapping(TIFAConfig, {"judge": judge, "prompts": prompts, **config}, "tifa")
    return TIFAMetric(TIFAMetric.resolve_config(parsed, context(), None), context())


def image(seed: int) -> Image.Image:
    return Image.fromarray(np.random.RandomState(seed).randint(0, 256, (40, 40, 3), dtype=np.uint8))


HAND = [{k: q[k] for k in ("question", "choices", "answer", "element_type")} for q in GOLDEN["questions"]]


def test_hand_made_case_matches_the_release(models, tmp_path) -> None:
    """Question 1's first choice is the tiny BLIP's own answer (exact match, correct); question 2's answer maps by
    SBERT to a wrong choice, question 3's to the right one: 2/3, as the release's code gives."""
    metric = make_metric(models, {"name": "tifa", "path": questions_file(tmp_path, {"hand_0": HAND})})
    (entry,) = metric.update([image(0)], [PromptRecord(0, "caption hand_0", 0, extra={"tifa_id": "hand_0"})])
    for ours, theirs in zip(entry["questions"], GOLDEN["questions"], strict=True):
        assert ours["free_form"] == theirs["free_form_vqa"]
        assert ours["choice"] == theirs["multiple_choice_vqa"] and ours["correct"] == bool(theirs["score"])
    assert [a["matched_by"] for a in entry["questions"]] == ["exact", "sbert", "sbert"]
    result = metric.compute()
    assert result.value == pytest.approx(GOLDEN["tifa_score"]) == pytest.approx(2 / 3)
    assert result.details["accuracy_by_type"] == {"animal/human": 1.0, "color": 0.0, "counting": 1.0}
    assert result.details["question_accuracy"] == pytest.approx(2 / 3) and result.details["exact_choice_answers"] == 1


def test_sbert_mapping_by_hand_and_against_the_release(models) -> None:
    from transformers import AutoModel, AutoTokenizer

    judge = VQAJudge(VQAConfig(model=models["model"], sbert=models["sbert"]))
    choices = ["yes", "no", "red", "dog"]
    for answer, theirs in GOLDEN["sbert_choices"].items():
        assert judge.choose(answer, choices) == (theirs, "sbert")
    assert judge.choose("red", choices) == ("red", "exact")
    # By hand: mean of the token states over the mask, normalised, argmax of the dot product.
    tokenizer, model = AutoTokenizer.from_pretrained(models["sbert"]), AutoModel.from_pretrained(models["sbert"])

    def embed(text: str) -> np.ndarray:
        encoded = tokenizer([text], return_tensors="pt")
        with torch.no_grad():
            states = model(**encoded)[0][0].double().numpy()
        pooled = states.mean(axis=0)  # one sentence: every token is in the mask
        return pooled / np.linalg.norm(pooled)

    expected = choices[int(np.argmax([embed(c) @ embed("a red car") for c in choices]))]
    assert judge.choose("a red car", choices)[0] == expected


def test_the_shipped_sample_and_bad_files(tmp_path) -> None:
    prompts = TIFA(TIFAPromptsConfig())
    questions = prompts.questions()
    assert list(questions) == ["coco_301091", "drawbench_52"]
    assert sum(len(c["questions"]) for c in questions.values()) == 19
    rows = prompts.rows()
    assert rows[0].prompt == "On a gray day a surfer carrying a white board walks on a beach."
    assert rows[0].extra == {"tifa_id": "coco_301091"} and prompts.dataset_name() == "tifa_sample"
    bad = {"x": [{"question": "q?", "choices": ["yes", "no"], "answer": "maybe", "element_type": "object"}]}
    with pytest.raises(ConfigError, match="not among its choices"):
        TIFA.preflight(TIFAPromptsConfig(path=questions_file(tmp_path, bad)))
    (tmp_path / "missing.json").write_text(json.dumps([{"id": "x", "caption": "c"}]))
    with pytest.raises(ConfigError, match="needs the fields"):
        TIFA.preflight(TIFAPromptsConfig(path=str(tmp_path / "missing.json")))
    with pytest.raises(ConfigError, match="download them once"):
        TIFA.preflight(TIFAPromptsConfig(path=str(tmp_path / "absent.json")))


def test_bad_configs_and_unavailable_weights(models, tmp_path) -> None:
    with pytest.raises(ConfigError, match="needs the tifa prompts"):
        make_metric(models, "coco_10k")
    with pytest.raises(ConfigError, match="needs the vqa judge"):
        make_metric({"name": "clip"})
    with pytest.raises(ConfigError, match="'Salesforce/blip-vqa-capfilt-large' is not a local folder"):
        SingleBenchmarkRunner("free_run", "tifa", {}, {}, tmp_path, model="tiny")


@pytest.mark.slow
def test_batched_equals_whole_restores_and_shards(models, tmp_path) -> None:
    captions = {f"c_{i}": [HAND[1], HAND[2]] for i in range(3)}
    path = questions_file(tmp_path, captions)
    records = [PromptRecord(i, f"caption c_{i}", i, extra={"tifa_id": f"c_{i}"}) for i in range(3)]
    check_metric_contract(lambda: make_metric(models, {"name": "tifa", "path": path}), [image(i) for i in range(3)],
                          records, tmp_path)  # fmt: skip


@pytest.mark.slow
def test_end_to_end_on_tiny_over_the_shipped_sample(models, tmp_path, cache_dir) -> None:
    report = SingleBenchmarkRunner("free_run", "tifa", {}, {"judge": models}, tmp_path, model="tiny",
                                   cache_dir=cache_dir).run()  # fmt: skip
    result = report["metric_result"]
    assert result["name"] == "tifa_tifa_sample" and result["higher_is_better"] is True
    details = result["details"]
    assert details["n"] == 2 and details["questions"] == 19 and 0.0 <= result["value"] <= 1.0
    low, high = details["ci95"]  # a t interval over two images is wide: clipped to the range a score can take
    assert 0.0 <= low <= result["value"] <= high <= 1.0 and details["interval"].endswith("clipped to [0, 1]")
    assert set(details["accuracy_by_type"]) == {"animal/human", "object", "location", "activity", "color", "counting"}
    assert report["judge"]["judge"] == "vqa" and report["judge"]["architecture"] == "BlipForQuestionAnswering"
    assert report["dataset_metadata"]["questions_available"] == 19
    assert report["judge"]["image_preprocessing"]["size"] == {"height": 32, "width": 32}
    from eval_learn.report.leaderboard import gather

    (column,) = gather(tmp_path).columns  # the leaderboard's column, its interval and detail column
    assert column.name == "tifa_tifa_sample" and column.has_interval and column.details == ("question_accuracy",)


def test_an_image_text_to_text_model_answers_with_the_release_blip2_prompt(models, tmp_path) -> None:
    """kind: image_text_to_text on a tiny random LLaVA: the answer is the model's own greedy continuation of the
    release's BLIP-2 multiple-choice prompt (the new tokens only)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from eval_learn.judges.tiny import write_tiny_vlm

    folder = str(write_tiny_vlm(tmp_path / "vlm"))
    prompt = "<image>\\nQuestion: {question} Choices: {choices} Answer:"
    judge = VQAJudge(VQAConfig(model=folder, kind="image_text_to_text", prompt=prompt, sbert=models["sbert"],
                               max_new_tokens=4))  # fmt: skip
    answer = judge.answer(image(0), "what color is the car?", ["red", "blue"])
    processor, model = AutoProcessor.from_pretrained(folder), AutoModelForImageTextToText.from_pretrained(folder)
    text = "<image>\\nQuestion: what color is the car? Choices: red, blue Answer:"
    inputs = processor(images=[image(0)], text=text, return_tensors="pt")
    ids = model.generate(**inputs, max_new_tokens=4, do_sample=False)[0, inputs["input_ids"].shape[1] :]
    assert answer == processor.decode(ids, skip_special_tokens=True).strip() and answer
    assert judge.settings()["generation"] == {"decoding": "greedy", "max_new_tokens": 4, "prompt": prompt}
