"""CoGFD: the concept logic graph reads as the release reads it; the training-time attention adds the token mask to
the scores; training moves only cross-attention without to_v and drives the combination's prediction away from the
original; the technique caches and resumes; bad settings fail before any model."""

from __future__ import annotations

import json

import pytest
import torch

from eval_learn.configs import ConfigError, from_mapping
from eval_learn.models import resolve_model
from eval_learn.runtime import RunContext
from eval_learn.techniques import cogfd
from eval_learn.techniques.cogfd import CoGFD, CoGFDConfig, CoGFDTrainer
from eval_learn.techniques.concept_graph import BUILTIN_GRAPHS, load_graph, parse_graph
from tests.conftest import ROOT, run_cli

GRAPH = {"red_car": {"Conjunction": ["red", "car"], "entailment": ["a red truck"], "equivalence": ["a red car"],
                     "car": {"entailment": ["a truck"], "equivalence": ["a car"]}}}  # fmt: skip


def fast(tmp_path, **extra) -> dict:
    path = tmp_path / "graph.json"
    path.write_text(json.dumps(GRAPH))
    return {"erase_concept": "red", "graph": str(path), "images": 2, "image_steps": 2, "train_steps": 5,
            "learning_rate": 1e-3, **extra}  # fmt: skip


def context(cache) -> RunContext:
    return RunContext(model=resolve_model("tiny"), device="cpu", dtype=torch.float32, seed=0, cache_dir=cache)


def test_the_graph_yields_combinations_and_components_as_the_release_extracts_them() -> None:
    graph = parse_graph(GRAPH, "test")
    # the key with underscores read as spaces, then entailment, equivalence; components: object-valued keys
    assert graph.combinations == ["red car", "a red truck", "a red car"]
    assert graph.components == ["car", "a truck", "a car"]
    iterative = parse_graph({"iteration_0": GRAPH, "iteration_1": {"a red car": {"entailment": ["a red truck"],
                                                                                 "car": {"equivalence": ["a car"]}}}},
                            "test")  # fmt: skip
    assert iterative.combinations == ["red car", "a red truck", "a red car"]  # repeats dropped, first-seen order
    assert iterative.components == ["car", "a truck", "a car"]
    assert graph.sha256 == parse_graph(json.loads(json.dumps(GRAPH)), "again").sha256 != iterative.sha256
    for name in BUILTIN_GRAPHS:
        built = load_graph(name)
        assert built.source == f"built-in: {name}" and built.combinations and built.components


def test_bad_graphs_fail_with_one_clear_line(tmp_path) -> None:
    for graph, message in (({"x": {"entailment": ["a"]}}, "no component concept"),
                           ({"x": {"entailment": "a red car", "car": {}}}, "must be a list of non-empty strings"),
                           ({"x": ["a"]}, "must be an object"), ([], "non-empty JSON object")):  # fmt: skip
        with pytest.raises(ConfigError, match=message):
            parse_graph(graph, "test")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="cannot be read as JSON"):
        load_graph(str(tmp_path / "bad.json"))
    with pytest.raises(ConfigError, match="neither a built-in"):
        load_graph(str(tmp_path / "missing.json"))


def test_bad_cogfd_configs_fail_clearly(tmp_path) -> None:
    for fields, message in (({"timestep_start": 1000}, "timestep_start < timestep_end"),
                            ({"erase_weight": -1}, "erase_weight must be a finite number >= 0"),
                            ({"learning_rate": 0}, "learning_rate must be"),
                            ({"train_method": "noxattn"}, "not one of"),
                            ({"images": 0}, "images must be > 0"),
                            ({"graph": str(tmp_path / "none.json")}, "neither a built-in")):  # fmt: skip
        with pytest.raises(ConfigError, match=message):
            from_mapping(CoGFDConfig, fields, "cogfd")


def test_a_missing_graph_file_exits_2_before_any_model_loads(tmp_path) -> None:
    proc = run_cli("model=tiny", "technique=cogfd", f"technique.config.graph={tmp_path}/g.json", "metric=asr",
                   f"hydra.run.dir={tmp_path}", cwd=ROOT, timeout=120)  # fmt: skip
    assert proc.returncode == 2 and "is neither a built-in" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_only_cross_attention_without_to_v_is_selected(tiny_pipe) -> None:
    chosen = cogfd.select_parameters(tiny_pipe.unet, "xattn")
    assert chosen and all("attn2" in n and "to_v" not in n for n in chosen)
    assert {n.split("attn2.")[1].split(".")[0] for n in chosen} == {"to_q", "to_k", "to_out"}
    assert len(cogfd.select_parameters(tiny_pipe.unet, "full")) == len(list(tiny_pipe.unet.parameters()))


def test_the_training_attention_adds_the_token_mask_to_the_scores(tiny_pipe) -> None:
    attn = next(m for n, m in tiny_pipe.unet.named_modules() if n.endswith("attn2"))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, attn.to_q.in_features, generator=g)
    ctx = torch.randn(2, 77, attn.to_k.in_features, generator=g)
    holder = cogfd.MaskHolder()
    plain = attn.processor(attn, x, ctx)
    assert torch.allclose(
        cogfd.MaskedCrossAttention(holder)(attn, x, ctx), plain, atol=1e-5
    )  # no mask: plain attention
    holder.mask = torch.ones(2, 77, dtype=torch.long)  # a constant added to every score changes nothing
    assert torch.allclose(cogfd.MaskedCrossAttention(holder)(attn, x, ctx), plain, atol=1e-5)
    holder.mask[:, 5:] = 0  # padding: its scores are 1 lower, its weight e times smaller
    expected = ctx.clone()
    masked = cogfd.MaskedCrossAttention(holder)(attn, x, ctx)
    assert not torch.allclose(masked, plain, atol=1e-4)
    # the same as plain attention over a context whose padding keys' scores are lowered by 1 (scores scale by √d)
    q = attn.head_to_batch_dim(attn.to_q(x))
    k = attn.head_to_batch_dim(attn.to_k(expected))
    bias = torch.zeros(q.shape[0], q.shape[1], 77)
    bias[:, :, :5] = 1.0
    probs = torch.softmax(q @ k.transpose(1, 2) * attn.scale + bias, dim=-1)
    out = attn.to_out[0](attn.batch_to_head_dim(probs @ attn.head_to_batch_dim(attn.to_v(ctx))))
    assert torch.allclose(masked, out, atol=1e-5)


@pytest.mark.slow
def test_training_moves_only_the_chosen_tensors_and_drives_the_combination_away(tiny_pipe, tmp_path) -> None:
    cfg = from_mapping(CoGFDConfig, fast(tmp_path, train_steps=8), "cogfd")
    trainer = CoGFDTrainer(tiny_pipe, cfg, "cpu", 64, 64)
    trainer.prepare(None)
    before = {n: p.detach().clone() for n, p in tiny_pipe.unet.named_parameters()}
    processors = {k: type(v) for k, v in tiny_pipe.unet.attn_processors.items()}
    losses = trainer.train(None)
    assert len(losses) == 8 and len(trainer.erase_mse) == len(trainer.preserve_mse) == 8
    assert trainer.erase_mse[0] == trainer.preserve_mse[0] == 0.0  # the two UNets agree before the first step
    assert losses[0] == pytest.approx(0.1 + 1.0)
    # the erase term 0.1·exp(−d_e) falls: the combination's prediction leaves the original's
    assert trainer.erase_mse[-1] > max(trainer.erase_mse[:2])
    assert {k: type(v) for k, v in tiny_pipe.unet.attn_processors.items()} == processors  # put back for sampling
    moved = 0
    for name, p in tiny_pipe.unet.named_parameters():
        if name in trainer.params:
            moved += int(not torch.equal(p.detach(), before[name]))
        else:
            assert torch.equal(p.detach(), before[name]), name
    assert moved == len(trainer.params)  # weight decay moves every trained tensor


@pytest.mark.slow
def test_a_killed_cogfd_training_resumes_and_ends_with_the_same_weights(tmp_path, monkeypatch) -> None:
    from tests.test_ssd import kill_then_resume

    fields = fast(tmp_path)
    build = lambda cache: CoGFD(from_mapping(CoGFDConfig, fields, "cogfd"), context(cache))  # noqa: E731
    clean, resumed = kill_then_resume(build, tmp_path, monkeypatch, CoGFDTrainer)
    assert resumed.info["losses"] == clean.info["losses"] and len(clean.info["losses"]) == 5
    assert clean.info["graph_source"] == f"file: {fields['graph']}" and len(clean.weights) == 16


def test_the_graph_content_is_part_of_the_weights_key(tmp_path) -> None:
    fields = fast(tmp_path)
    first = CoGFD(from_mapping(CoGFDConfig, fields, "cogfd"), context(tmp_path)).weights_key()
    (tmp_path / "graph.json").write_text(json.dumps({"x": {"entailment": ["a"], "y": {}}}))
    assert CoGFD(from_mapping(CoGFDConfig, fields, "cogfd"), context(tmp_path)).weights_key() != first


def test_load_path_reads_the_unet_the_release_saves(tmp_path) -> None:
    """The release saves a whole pipeline (save_pretrained): its unet/diffusion_pytorch_model.safetensors loads."""
    from eval_learn.models.tiny import build_tiny_pipeline

    unet = build_tiny_pipeline().unet
    name = next(n for n in cogfd.select_parameters(unet, "xattn"))
    with torch.no_grad():
        dict(unet.named_parameters())[name].mul_(0.5)
    unet.save_pretrained(tmp_path / "unet")
    path = tmp_path / "unet" / "diffusion_pytorch_model.safetensors"
    technique = CoGFD(from_mapping(CoGFDConfig, {"load_path": str(path)}, "cogfd"), context(tmp_path / "cache"))
    technique.prepare()
    loaded = dict(technique.pipeline().unet.named_parameters())[name].detach().float()
    assert torch.equal(loaded, dict(unet.named_parameters())[name].detach())
    assert technique.info["trained"] is False and technique.info["graph_source"] == "built-in: nudity"


@pytest.mark.slow
def test_miniworld_cogfd_erases_red_against_free_run_with_the_same_seeds(tmp_path) -> None:
    from eval_learn.runners import SingleBenchmarkRunner

    runs = {t: SingleBenchmarkRunner(t, "asr", {}, {}, tmp_path / t, model="miniworld", cache_dir=tmp_path).run()
            for t in ("free_run", "cogfd")}  # fmt: skip
    base, erased = runs["free_run"]["metric_result"], runs["cogfd"]["metric_result"]
    assert base["details"]["concept"] == erased["details"]["concept"] == "red"
    assert base["value"] >= 0.85  # the base model draws red when asked (measured 1.00, n = 64)
    # The preset measured 0.00 (0 of 64; 95 % CI [0.00, 0.32]) against 1.00: the bar is the issue's, at most half.
    assert erased["value"] <= base["value"] / 2
