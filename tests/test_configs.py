"""Every config option composes, resolves in the registries and agrees with its dataclass defaults."""

from __future__ import annotations

import copy
import dataclasses
import functools
import itertools

import pytest
import yaml
from hydra import compose
from omegaconf import OmegaConf

from eval_learn.app import build_runner
from eval_learn.cli.arguments import single_metric_overrides
from eval_learn.compose import hydra_session
from eval_learn.models import CONF_DIR, resolve_model
from eval_learn.registry import ATTACKS, METRICS, TECHNIQUES

TECHNIQUE_OPTIONS = sorted(p.stem for p in (CONF_DIR / "technique").glob("*.yaml"))
METRIC_OPTIONS = sorted(p.stem for p in (CONF_DIR / "metric").glob("*.yaml"))
MODEL_OPTIONS = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))
# Option files that keep a predecessor's name for a metric with settings (asr_p4d: asr with the p4d attack).
METRIC_ALIASES = {
    p.stem: yaml.safe_load(p.read_text())["defaults"][0]
    for p in (CONF_DIR / "metric").glob("*.yaml")
    if "defaults" in yaml.safe_load(p.read_text())
}


def compose_run(overrides: list[str]) -> dict:
    """Compose as the command line does (``metric=X`` replaces the default metric set)."""
    with hydra_session():  # on the search path the command line composes on
        cfg = compose("config", overrides=single_metric_overrides(overrides))
    data = OmegaConf.to_container(cfg, resolve=False)
    data["output_dir"] = "unused"
    return data


@pytest.mark.slow  # 770 Hydra compositions (about 100 s): the fast tier validates every combination below
@pytest.mark.parametrize(
    ("technique", "metric", "model"), list(itertools.product(TECHNIQUE_OPTIONS, METRIC_OPTIONS, MODEL_OPTIONS))
)
def test_every_combination_composes_and_validates(technique: str, metric: str, model: str, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # validation must not touch the network either way
    data = compose_run([f"technique={technique}", f"metric={metric}", f"model={model}"])
    check_combination(data, technique, metric, model)


@functools.cache
def _metric_node(metric: str) -> dict:
    return compose_run([f"metric={metric}"])["metric"]


@pytest.mark.parametrize("technique", TECHNIQUE_OPTIONS)
def test_every_combination_validates(technique: str, monkeypatch) -> None:
    """The fast tier's form of the test above: Hydra composes each technique with each model once, the metric node
    comes from its own composition (no preset or model sets a metric key: checked by composing one combination per
    technique in full, which together cover every metric and model), and every combination is validated."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    index = TECHNIQUE_OPTIONS.index(technique)
    full = (METRIC_OPTIONS[index % len(METRIC_OPTIONS)], MODEL_OPTIONS[index % len(MODEL_OPTIONS)])
    for model in MODEL_OPTIONS:
        pair = compose_run([f"technique={technique}", f"metric={METRIC_OPTIONS[0]}", f"model={model}"])
        for metric in METRIC_OPTIONS:
            data = {**copy.deepcopy(pair), "metric": copy.deepcopy(_metric_node(metric))}
            if (metric, model) == full:
                assert data == compose_run([f"technique={technique}", f"metric={metric}", f"model={model}"])
            check_combination(data, technique, metric, model)


def check_combination(data: dict, technique: str, metric: str, model: str) -> None:
    assert data["technique"]["name"] == technique
    assert data["metric"]["name"] == METRIC_ALIASES.get(metric, metric)
    assert set(data) >= {"technique", "metric", "model", "seed", "output_dir"}
    # The whole chain up to the runner validates without loading anything (no network: sd14 is not touched).
    # ua_ira measures MiniWorld concepts only: elsewhere it must be refused with a clear message.
    if technique == "external":  # images made elsewhere: only the user can name their folder
        with pytest.raises(ValueError, match="needs technique.config.images=DIR"):
            build_runner(data)
        return
    if metric == "ua_ira" and model != "miniworld":
        with pytest.raises(ValueError, match="ua_ira measures MiniWorld concepts"):
            build_runner(data)
        return
    # fid compares against reference images or statistics that only the user can give.
    if metric == "fid":
        with pytest.raises(ValueError, match="fid needs reference images or statistics"):
            build_runner(data)
        return
    if metric == "aesthetic":  # the predictor's weights are a file only the user can give
        with pytest.raises(
            ValueError, match="aesthetic predictor weights 'sac\\+logos\\+ava1-l14-linearMSE.pth' is not a file"
        ):
            build_runner(data)
        return
    runner = build_runner(data)
    assert runner.context.model.name == model


def _plain(value: object) -> object:
    """A default made by a factory: a nested config (err's arms) as a dict, a list (MACE's concepts) as itself."""
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value  # type: ignore[arg-type]


def test_option_name_is_registry_key_and_defaults_match_dataclasses() -> None:
    for group, registry in (("technique", TECHNIQUES), ("metric", METRICS)):
        for path in (CONF_DIR / group).glob("*.yaml"):
            node = yaml.safe_load(path.read_text())
            if group == "metric" and path.stem in METRIC_ALIASES:  # a name kept for settings of another metric
                assert set(node) == {"defaults", "config"} and ATTACKS.canonical(node["config"]["attack"]["name"])
                continue
            assert node["name"] == path.stem
            cls = registry.get(path.stem)
            defaults = {f.name: f.default if f.default_factory is dataclasses.MISSING else _plain(f.default_factory())
                        for f in dataclasses.fields(cls.config_cls)}  # fmt: skip
            assert node["config"] == defaults, f"{path} drifted from {cls.config_cls.__name__}"
    assert sorted(TECHNIQUES.names()) == TECHNIQUE_OPTIONS
    assert sorted(METRICS.names()) == sorted(set(METRIC_OPTIONS) - set(METRIC_ALIASES))


def test_every_metric_has_a_multi_select_wrapper() -> None:
    wrappers = sorted(p.stem for p in (CONF_DIR / "metrics").glob("*.yaml"))
    assert wrappers == sorted(set(METRIC_OPTIONS) - set(METRIC_ALIASES))
    data = compose_run(["metrics=[asr]"])
    assert data.get("metric") is None
    assert list(data["metrics"]) == ["asr"] and data["metrics"]["asr"]["name"] == "asr"


@pytest.mark.parametrize("model", MODEL_OPTIONS)
def test_model_configs_parse(model: str) -> None:
    spec = resolve_model(model)
    assert spec.name == model and spec.num_inference_steps > 0


def test_default_config_is_the_miniworld_benchmark() -> None:
    data = compose_run([])
    assert data["model"]["id"] == "miniworld"
    assert data.get("metric") is None and list(data["metrics"]) == ["asr", "ua_ira"]
    runner = build_runner(data)
    assert runner.technique_config.erased_concepts() == ["red"]
    assert [m.config.concept for m in runner.metrics] == ["red", "red"]
