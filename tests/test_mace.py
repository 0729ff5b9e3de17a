"""MACE: stage 1 and stage 3 are the least-squares solutions of the paper's objectives (zero gradient, the same as an
independent solver), stage 2 lowers the masked attention energy and trains only LoRA parameters, masks come from
where the source says, bad configs fail before any model loads, the runner runs it, and it erases red on the
MiniWorld against free_run with the same seeds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from eval_learn.configs import ConfigError, from_mapping
from eval_learn.miniworld.world import Scene, render, render_with_mask
from eval_learn.models import load_pipeline, resolve_model
from eval_learn.runners import SingleBenchmarkRunner
from eval_learn.runtime import RunContext
from eval_learn.techniques.mace import (
    MACE,
    AttentionProbe,
    MACEConfig,
    MACETrainer,
    _resize_mask,
    align_tokens,
    attention_energy,
    fuse,
    importance_weights,
    refinement_matrix,
)
from eval_learn.techniques.uce import cross_attention_projections

FAST = {"erase_concept": "red", "prompt_templates": ["a photo of a {} car", "a {} house", "{}"], "num_images": 2,
        "image_steps": 3, "train_steps": 3, "preserve_coco": 20, "lamb": 0.5}  # fmt: skip


def mace_config(**overrides) -> MACEConfig:
    return from_mapping(MACEConfig, {**FAST, **overrides}, "mace")


def context(cache_dir) -> RunContext:
    return RunContext(model=resolve_model("tiny"), device="cpu", dtype=torch.float32, seed=0, cache_dir=cache_dir)


def trainer(pipe, **overrides) -> MACETrainer:
    return MACETrainer(pipe, mace_config(**overrides), "cpu", 64, 64)


def value_layer(pipe) -> tuple[str, torch.Tensor]:
    name, layer = next((n, m) for n, m in cross_attention_projections(pipe.unet).items() if n.endswith("to_v"))
    return name, layer.weight.detach().to(torch.float64)


# --- stage 1 -------------------------------------------------------------------------------------------------------
def test_tokens_are_aligned_as_in_the_release() -> None:
    bos, eos, a, photo, of, red, car, big = 0, 9, 1, 2, 3, 4, 5, 6
    # "a photo of red car" -> "a photo of car": prefix kept, then "car" and the end-of-text and padding from the end
    # of the differing span on, as far as both sequences go (77 - 1 positions here).
    old, new = [bos, a, photo, of, red, car, eos], [bos, a, photo, of, car, eos]
    i, j = align_tokens(old, new, 10)
    assert i == [0, 1, 2, 3, 5, 6, 7, 8, 9] and j == [0, 1, 2, 3, 4, 5, 6, 7, 8]
    # A longer replacement: "red" -> "big big"; the concept's own token is never mapped.
    i, j = align_tokens([bos, red, car, eos], [bos, big, big, car, eos], 8)
    assert i == [0, 2, 3, 4, 5, 6] and j == [0, 3, 4, 5, 6, 7]
    # The concept alone, removed: begin-of-text stays, the end-of-text after the concept maps onto the empty prompt's.
    assert align_tokens([bos, red, eos], [bos, eos], 5) == ([0, 2, 3, 4], [0, 1, 2, 3])


def stage1_objective(w_new, w, ef, eg, ep_by_prompt, scale, lamb) -> torch.Tensor:
    """Eq. 1 with the release's ridge term, written out row by row (the preservation term over the mean prompt)."""
    mapped = ((ef @ w_new.T - eg @ w.T) ** 2).sum()
    kept = sum(((e @ w_new.T - e @ w.T) ** 2).sum() for e in ep_by_prompt) / len(ep_by_prompt)
    return mapped + scale * kept + lamb * ((w_new - w) ** 2).sum()


@pytest.mark.parametrize(("scale", "lamb"), [(0.43, 0.0), (1.0, 0.5), (0.0, 2.0)])
def test_stage1_closed_form_solves_its_normal_equations(tiny_pipe, scale, lamb) -> None:
    t = trainer(tiny_pipe, erase_concept=["red", "dog"], mapping_concept=["", "cat"], preserve_prompts=["car", "a tree",
                "the sky"])  # fmt: skip
    _, w = value_layer(tiny_pipe)
    ef, eg = t.mapping_rows()
    ep = [e.to(torch.float64) for e in t.encode(["car", "a tree", "the sky"])]
    gram = sum(e.T @ e for e in ep) / len(ep)
    assert torch.allclose(t.preserve_gram(), gram, atol=1e-9 * gram.abs().max())
    w_new = (w @ refinement_matrix(ef, eg, gram, scale, lamb)).requires_grad_(True)
    stage1_objective(w_new, w, ef, eg, ep, scale, lamb).backward()
    scale_of_grad = (ef.T @ ef).norm() * w.norm()
    assert w_new.grad.norm() < 1e-9 * scale_of_grad  # the gradient vanishes at the closed form
    # An independent solver of the same least squares (rows stacked, weights as square roots) agrees.
    eye = torch.eye(w.shape[1], dtype=torch.float64)
    a = torch.cat([ef, *(scale**0.5 / len(ep) ** 0.5 * e for e in ep), lamb**0.5 * eye])
    b = torch.cat([eg @ w.T, *(scale**0.5 / len(ep) ** 0.5 * e @ w.T for e in ep), lamb**0.5 * w.T])
    # (rcond: singular values below 1e-7 of the largest are float32 noise of the text encoder, not information)
    solution = torch.linalg.lstsq(a, b, rcond=1e-7, driver="gelsd").solution.T
    ours, theirs = (((a @ x.T - b) ** 2).sum().item() for x in (w_new.detach(), solution))
    assert ours <= theirs * (1 + 1e-8)  # at least as low an objective as the independent minimiser
    if lamb > 0:  # a unique minimiser
        assert torch.allclose(w_new.detach(), solution, atol=1e-8 * w.abs().max())
    else:  # the tiny encoder's LayerNorm outputs all lie orthogonal to (1, ..., 1): that direction keeps W's values
        values, vectors = torch.linalg.eigh(ef.T @ ef + scale * gram)
        null = vectors[:, :1]
        assert values[0] < 1e-12 * values[-1] and (null.abs() - w.shape[1] ** -0.5).abs().max() < 1e-6
        assert torch.allclose(w_new.detach() @ null, w @ null, atol=1e-12)


def test_stage1_writes_w_times_the_refinement_into_every_cross_attention(tiny_pipe) -> None:
    t = trainer(tiny_pipe, preserve_prompts=["car"], preserve_scale=1.0, lamb=0.01)
    before = {n: m.weight.detach().clone().to(torch.float64) for n, m in t.layers.items()}
    others = {n: p.detach().clone() for n, p in tiny_pipe.unet.named_parameters() if ".attn2.to_" not in n}
    t.refine(t.preserve_gram())
    ef, eg = t.mapping_rows()
    m = refinement_matrix(ef, eg, t.preserve_gram(), 1.0, 0.01)
    for name, layer in t.layers.items():
        assert torch.allclose(layer.weight.to(torch.float64), before[name] @ m, atol=1e-5)
        # the mapped rows move towards their targets: W' e^f is far closer to W e^g than W e^f was
        w = before[name]
        assert (ef @ layer.weight.to(torch.float64).T - eg @ w.T).norm() < 0.5 * (ef @ w.T - eg @ w.T).norm()
    assert all(torch.equal(p, others[n]) for n, p in tiny_pipe.unet.named_parameters() if n in others)
    assert t.info["refinement_residual_max"] < 0.5


# --- stage 2 -------------------------------------------------------------------------------------------------------
def test_attention_energy_counts_only_masked_pixels_and_concept_tokens() -> None:
    g = torch.Generator().manual_seed(0)
    batch, heads, side, tokens = 2, 3, 4, 6
    maps = [torch.rand(batch * heads, side * side, tokens, generator=g) for _ in range(2)]
    masks = torch.zeros(batch, 16, 16)
    masks[0, :8, :] = 1  # top half of image 0
    masks[1, :, 8:] = 1  # right half of image 1
    positions = torch.zeros(batch, tokens, dtype=torch.bool)
    positions[0, [1, 5]] = True
    positions[1, [2]] = True
    expected = 0.0
    for probs in maps:  # the release's loss: per layer, the unsquared Frobenius norm of everything selected
        p = probs.reshape(batch, heads, side, side, tokens)
        expected += (p[0, :, :2, :, [1, 5]].pow(2).sum() + p[1, :, :, 2:, [2]].pow(2).sum()).sqrt()
    assert torch.allclose(attention_energy(maps, masks, positions), expected)
    assert attention_energy(maps, torch.zeros_like(masks), positions) == 0
    # The loss is not the squared norm: doubling the maps doubles it.
    assert torch.allclose(attention_energy([2 * m for m in maps], masks, positions), 2 * expected)
    # A mask at image resolution is resized to each layer's resolution by nearest neighbour (the release's
    # F.interpolate(mode="nearest")) and thresholded at one half.
    fine = torch.zeros(1, 32, 32)
    fine[0, :16, :12] = 1
    assert _resize_mask(fine, 16).reshape(4, 4).tolist() == [[1, 1, 0, 0]] * 2 + [[0] * 4] * 2  # pixels 0 and 8
    assert _resize_mask(fine, 64).reshape(8, 8)[:4, :3].all() and _resize_mask(fine, 64).sum() == 12


def test_masks_come_from_the_folder(tiny_pipe, tmp_path) -> None:
    folder = tmp_path / "images" / "red"
    folder.mkdir(parents=True)
    for i in range(2):
        Image.fromarray(np.full((64, 64, 3), 40 * i, np.uint8)).save(folder / f"im{i}.png")
        mask = np.zeros((64, 64), np.uint8)
        mask[: 16 * (i + 1), :] = 255  # a test-made mask: the top quarter, then the top half
        Image.fromarray(mask).save(folder / f"im{i}_mask.png")
    t = trainer(tiny_pipe, mask_source="folder", image_folder=str(tmp_path / "images"))
    pixels, masks, prompts = t.images(0, "red")
    assert pixels.shape == (2, 3, 64, 64) and masks is not None and prompts == ["a photo of the red"] * 2
    assert masks[0, :16].all() and not masks[0, 16:].any() and masks[1, :32].all() and not masks[1, 32:].any()
    with AttentionProbe(tiny_pipe.unet) as probe:
        data = t.prepare_data(probe)
    assert torch.equal(data[0].masks, masks) and t.info["mask_fraction"] == {"red": 0.375}


def test_attention_and_miniworld_masks(tiny_pipe) -> None:
    t = trainer(tiny_pipe, mask_threshold=0.9)
    with AttentionProbe(tiny_pipe.unet) as probe:
        (data,) = t.prepare_data(probe)
    assert data.masks.shape == (2, 64, 64) and set(data.masks.unique().tolist()) <= {0.0, 1.0}
    assert data.masks.flatten(1).amax(1).eq(1).all()  # every map's own peak is inside its mask
    assert data.latents.shape == (2, 2, 4, 16, 16)
    # The MiniWorld renderer gives the same image as render() with the shape's exact mask.
    scene = Scene("red", "circle", "striped")
    img, mask = render_with_mask(scene, np.random.default_rng(3))
    assert np.array_equal(img, render(scene, np.random.default_rng(3))) and 20 < mask.sum() < 32 * 32 / 2
    mw = MACETrainer(tiny_pipe, mace_config(mask_source="miniworld"), "cpu", 32, 32)
    pixels, masks, _ = mw.images(0, "red")
    inside = pixels.permute(0, 2, 3, 1)[masks.bool()]
    assert (inside[:, 0] > 0.6).all() and (inside[:, 1] < 0.25).all()  # the masked pixels are the red shape
    with pytest.raises(ConfigError, match="use model=miniworld"):
        trainer(tiny_pipe, mask_source="miniworld").images(0, "red")


@pytest.mark.slow
def test_stage2_loss_falls_and_only_lora_parameters_change(tiny_pipe) -> None:
    t = trainer(tiny_pipe, mask_source="full", learning_rate=3e-2, train_steps=30, train_batch_size=2)
    state = {f"{c}.{n}": p.detach().clone() for c in ("unet", "text_encoder", "vae")
             for n, p in getattr(tiny_pipe, c).named_parameters()}  # fmt: skip
    g = torch.Generator().manual_seed(1)
    with AttentionProbe(tiny_pipe.unet) as probe:
        (data,) = t.prepare_data(probe)
        t.new_loras(probe, torch.Generator().manual_seed(0))
        held_out = [(torch.tensor([i % 2, 1 - i % 2]), torch.tensor([i % 3, (i + 1) % 3]), torch.tensor([300, 700]))
                    for i in range(4)]  # fmt: skip

        def mean_loss() -> float:
            with torch.no_grad():
                return sum(t.loss(probe, data, *b, torch.Generator().manual_seed(9)).item() for b in held_out) / 4

        start = mean_loss()
        losses = t.train_lora(probe, data, g)
        end = mean_loss()
        loras = [lora for pair in probe.loras.values() for lora in pair]
    assert len(losses) == 30 and end < 0.7 * start, (start, end)  # measured: 17.7 -> 7.2 (0.40 x)
    # Every LoRA moved but the value LoRA of the cross-attention that runs last: no attention map comes after it.
    assert len(loras) == 8 and sum(lora.delta().abs().sum() > 0 for lora in loras) == 7
    assert all(lora.delta().shape[1] == 32 and torch.linalg.matrix_rank(lora.delta()) <= 1 for lora in loras)
    after = {
        f"{c}.{n}": p for c in ("unet", "text_encoder", "vae") for n, p in getattr(tiny_pipe, c).named_parameters()
    }
    assert all(torch.equal(after[n], state[n]) for n in state)  # the base weights are untouched
    assert tiny_pipe.unet.attn_processors.keys() == AttentionProbe(tiny_pipe.unet).unet.attn_processors.keys()
    assert not any("_Processor" in type(p).__name__ for p in tiny_pipe.unet.attn_processors.values())  # restored


def test_importance_sampling_concentrates_between_200_and_400() -> None:
    xi = importance_weights(1000)
    assert xi.sum().item() == pytest.approx(1.0) and (xi >= 0).all()
    assert xi[200:400].sum() > 0.8 and 250 <= int(xi.argmax()) <= 350


# --- stage 3 -------------------------------------------------------------------------------------------------------
def test_fusion_solves_its_normal_equations_and_reproduces_one_lora(tiny_pipe) -> None:
    t = trainer(tiny_pipe, erase_concept=["red", "dog"], preserve_prompts=["car", "tree"])
    _, w = value_layer(tiny_pipe)
    g = torch.Generator().manual_seed(0)
    refined = w + 0.05 * torch.randn(w.shape, generator=g, dtype=torch.float64)
    deltas = [torch.randn(w.shape[0], 1, generator=g, dtype=torch.float64) @ torch.randn(1, w.shape[1], generator=g,
              dtype=torch.float64) for _ in range(2)]  # fmt: skip
    rows = [t.encode(t.prompts_of(c)).reshape(-1, 32).to(torch.float64) for c in ("red", "dog")]
    grams = [e.T @ e for e in rows]
    ep = [e.to(torch.float64) for e in t.encode(["car", "tree"])]
    gp = sum(e.T @ e for e in ep) / 2
    for scale, lamb in [(0.43, 0.0), (1.0, 0.5)]:
        fused = fuse(refined, w, deltas, grams, gp, scale, lamb).requires_grad_(True)
        objective = sum(((e @ fused.T - e @ (refined + d).T) ** 2).sum() for e, d in zip(rows, deltas, strict=True))
        objective = objective + scale * sum(((e @ fused.T - e @ w.T) ** 2).sum() for e in ep) / 2
        objective = objective + lamb * ((fused - refined) ** 2).sum()
        objective.backward()
        assert fused.grad.norm() < 1e-8 * sum(g.norm() for g in grams) * w.norm()  # (lamb 0: float32 noise)
    # One concept, no preservation and a vanishing ridge: the fused matrix is the LoRA-merged one on its prompts.
    one = fuse(refined, w, deltas[:1], grams[:1], gp, 0.0, 1e-8)
    merged = rows[0] @ (refined + deltas[0]).T
    assert (rows[0] @ one.T - merged).norm() < 1e-6 * merged.norm()
    # Two concepts: each is reproduced only approximately (the fusion balances them), far better than adding both.
    both = fuse(refined, w, deltas, grams, gp, 0.0, 1e-8)
    summed = refined + deltas[0] + deltas[1]
    for e, d in zip(rows, deltas, strict=True):
        target = e @ (refined + d).T
        assert (e @ both.T - target).norm() < (e @ summed.T - target).norm()


# --- the technique -------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_mace_end_to_end_on_tiny_through_the_runner_then_the_cache(tmp_path, cache_dir) -> None:
    config = {**FAST, "erase_concept": ["nudity", "naked"], "mapping_concept": "a person wearing clothes",
              "prompt_templates": ["a photo of {}", "{} on a beach"]}  # asr on tiny: nudity  # fmt: skip
    first = SingleBenchmarkRunner("mace", "asr", config, {"limit": 2}, tmp_path / "a", model="tiny",
                                  cache_dir=cache_dir).run()  # fmt: skip
    info = first["technique_info"]
    assert first["technique_name"] == "mace" and first["metric_result"]["details"]["total_images"] == 2
    assert info["trained"] is True and info["edited_matrices"] == 8 and info["preserved_prompts"] == 20
    assert set(info["losses"]) == {"nudity", "naked"} and all(len(v) == 3 for v in info["losses"].values())
    second = SingleBenchmarkRunner("mace", "asr", config, {"limit": 2}, tmp_path / "b", model="tiny",
                                   cache_dir=cache_dir).run()  # fmt: skip
    assert second["technique_info"]["trained"] is False
    assert second["technique_info"]["weights_sha256"] == info["weights_sha256"]
    ctx = context(cache_dir)
    assert MACE(mace_config(), ctx).weights_key() != MACE(mace_config(lora_rank=2), ctx).weights_key()
    assert MACE(mace_config(), ctx).weights_key() == MACE(mace_config(device="cpu"), ctx).weights_key()


def test_only_cross_attention_keys_and_values_change(tiny_pipe, cache_dir) -> None:
    technique = MACE(mace_config(), context(cache_dir))
    technique.prepare()
    assert set(technique.weights) == {f"unet.{n}.weight" for n in cross_attention_projections(tiny_pipe.unet)}
    edited = technique.pipeline()
    base = dict(tiny_pipe.unet.named_parameters())
    changed = {f"unet.{n}" for n, p in edited.unet.named_parameters() if not torch.equal(p, base[n])}
    assert changed == set(technique.weights)


def test_bad_mace_configs_fail_before_any_model_loads(tmp_path) -> None:
    assert mace_config(erase_concept=["a", "b"], mapping_concept="x").mappings() == ["x", "x"]
    (tmp_path / "red").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "red" / "one.png")
    bad = [
        ({"erase_concept": []}, "at least one concept"),
        ({"erase_concept": ["red", " "]}, "empty concept"),
        ({"erase_concept": ["red", "red"]}, "more than once"),
        ({"erase_concept": ["red", "blue"], "mapping_concept": ["", "x", "y"]}, "3 entries for 2"),
        ({"mapping_concept": "Red"}, "the erased concept itself"),
        ({"prompt_templates": ["a photo"]}, "exactly one"),
        ({"prompt_templates": []}, "non-empty list"),
        ({"lora_rank": 0}, "lora_rank must be > 0"),
        ({"learning_rate": float("nan")}, "learning_rate must be a finite number > 0"),
        ({"preserve_scale": -1.0}, "preserve_scale must be a finite number >= 0"),
        ({"lamb": 0.0, "preserve_prompts": []}, "lamb = 0 needs preserved prompts"),
        ({"lamb": 0.0, "fuse_preserve_scale": 0.0}, "lamb = 0 needs preserved prompts"),
        ({"mask_threshold": 1.0}, "mask_threshold must be in"),
        ({"mask_source": "sam"}, "not one of"),
        ({"mask_source": "folder"}, "set image_folder"),
        ({"mask_source": "miniworld", "erase_concept": "nudity"}, "needs MiniWorld concepts"),
        ({"image_folder": str(tmp_path / "nowhere")}, "does not exist"),
        ({"image_folder": str(tmp_path), "mask_source": "folder"}, "no mask next to them"),
        ({"lora_rnak": 2}, "Did you mean 'lora_rank'"),
    ]
    for overrides, message in bad:
        with pytest.raises(ConfigError, match=message):
            mace_config(**overrides)
    assert mace_config(image_folder=str(tmp_path)).image_folder == str(tmp_path)  # images without masks: attention


# --- MiniWorld efficacy: asr only, MACE (conf/preset/miniworld_mace.yaml) against free_run with the same seeds -----
@pytest.fixture(scope="module")
def miniworld_asr(tmp_path_factory):
    out = tmp_path_factory.mktemp("mace_efficacy")
    return {
        technique: SingleBenchmarkRunner(
            technique, "asr", {}, {}, out / technique, model="miniworld", cache_dir=out / "cache"
        ).run()  # fmt: skip
        for technique in ("free_run", "mace")
    }


@pytest.mark.slow
def test_miniworld_mace_erases_red_against_free_run_with_the_same_seeds(miniworld_asr) -> None:
    base, mace = miniworld_asr["free_run"]["metric_result"], miniworld_asr["mace"]["metric_result"]
    print("MiniWorld mace asr:", base["value"], "->", mace["value"], mace["details"].get("ci95_wilson"))
    assert base["details"]["concept"] == mace["details"]["concept"] == "red"
    assert base["details"]["total_images"] == mace["details"]["total_images"] == 64
    assert base["value"] >= 0.85  # the base model draws red when asked (measured 1.00, n=64)
    assert miniworld_asr["mace"]["technique_info"]["trained"] is True
    # Measured with the MiniWorld preset (attention masks, the release's unsquared loss, lr 1e-3, 120 steps, end
    # tokens not suppressed): 1.00 -> 0.00 (0 of 64; Wilson 95 % [0.00, 0.06]), one thread, 90 s for the test on a
    # busy machine (before the release's loss: 0.094). The bar asks for a drop of at least 0.75 (to <= 0.25 from
    # 1.00), so that a numerics change on another CPU that costs a few images still passes; the preset with the end
    # tokens suppressed measured 0.63 and would fail it. Stages 1 and 3 alone (no LoRA
    # training) measured 0.33 and would fail it: the bar needs stage 2 to work. See conf/preset/miniworld_mace.yaml.
    assert mace["value"] <= base["value"] - 0.75


# --- the release's recipe and formats ------------------------------------------------------------------------------
def test_the_default_is_the_release_explicit_content_recipe() -> None:
    """configs/explicit_content/erase_explicit_content.yaml of Shilin-LU/MACE@057e7a6 (see conf/technique/mace.yaml)."""
    cfg = MACEConfig()
    assert cfg.erased_concepts() == ["nudity", "naked", "erotic", "sexual"]
    assert cfg.mappings() == ["a person wearing clothes"] * 4
    assert (cfg.lora_rank, cfg.train_steps, cfg.learning_rate, cfg.train_batch_size, cfg.lamb) == (1, 120, 1e-5, 1, 0.0)
    assert cfg.include_end_tokens and not cfg.importance_sampling
    # 7e-7 on a cache summed over 616,767 captions: stage 1 scales it twice, stage 3 once (weights of our mean)
    assert cfg.preserve_scale == pytest.approx(7e-7**2 * 616_767, rel=1e-2)
    assert cfg.fuse_preserve_scale == pytest.approx(7e-7 * 616_767, rel=1e-2)
    assert (cfg.num_images, cfg.image_steps, cfg.image_guidance_scale) == (8, 30, 7.5)
    assert cfg.image_prompts() == ["a photo of the {}"] and cfg.image_scheduler == "dpm_solver"
    templates = cfg.templates()
    assert len(templates) == len(set(templates)) == 30 and all("{}" in t for t in templates)
    style = MACEConfig(concept_type="style")
    assert len(set(style.templates())) == 30 and style.image_prompts() == ["a photo in the style of {}"]


def test_training_images_come_from_dpm_solver_like_the_release(tiny_pipe) -> None:
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    pixels, masks, prompts = trainer(tiny_pipe, num_images=2, image_steps=4).images(0, "red")
    assert masks is None and prompts == ["a photo of the red"] * 2
    dpm = StableDiffusionPipeline(**{**tiny_pipe.components,
                                     "scheduler": DPMSolverMultistepScheduler.from_config(tiny_pipe.scheduler.config)})  # fmt: skip
    expected = dpm(prompt=prompts, num_inference_steps=4, guidance_scale=7.5, height=64, width=64, output_type="pt",
                   generator=[torch.Generator().manual_seed(s) for s in (0, 1)]).images  # fmt: skip
    assert torch.allclose(pixels, expected.float(), atol=1e-6)
    own, _, _ = trainer(tiny_pipe, num_images=2, image_steps=4, image_scheduler="pipeline").images(0, "red")
    assert not torch.allclose(own, pixels, atol=1e-3)  # the model's own scheduler (DDIM) gives other images
    assert type(tiny_pipe.scheduler).__name__ == "DDIMScheduler"  # the base pipeline is left as it was


def test_load_path_reads_the_pipeline_folder_mace_saves(tiny_pipe, tmp_path, cache_dir) -> None:
    """The release saves its result with StableDiffusionPipeline.save_pretrained (final_save_path); load_path takes
    that folder, its unet/ folder, or the weights file in it."""
    name, layer = next((n, m) for n, m in cross_attention_projections(tiny_pipe.unet).items() if n.endswith("to_k"))
    with torch.no_grad():
        layer.weight.mul_(-2.0)  # an edit we can recognise
    tiny_pipe.save_pretrained(tmp_path / "LoRA_fusion_model")
    saved = layer.weight.detach().clone()
    fresh = dict(load_pipeline(resolve_model("tiny"), "cpu", torch.float32).unet.named_modules())
    assert torch.equal(fresh[name].weight * -2.0, saved)  # the run's base model is not the edited one
    for where in ("LoRA_fusion_model", "LoRA_fusion_model/unet",
                  "LoRA_fusion_model/unet/diffusion_pytorch_model.safetensors"):  # fmt: skip
        cfg = mace_config(load_path=str(tmp_path / where))
        assert cfg.load_path == str(tmp_path / "LoRA_fusion_model/unet/diffusion_pytorch_model.safetensors")
        technique = MACE(cfg, context(cache_dir))
        technique.prepare()
        assert technique.info["trained"] is False
        assert torch.equal(dict(technique.pipeline().unet.named_modules())[name].weight, saved)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="without unet/diffusion_pytorch_model"):
        mace_config(load_path=str(tmp_path / "empty"))
