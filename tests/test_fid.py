"""FID: the Fréchet distance in closed form and against torchmetrics, exact order-independent sums, reference
statistics (folder, cache, .npz), the state contract, configuration, and end-to-end runs on the tiny model (with
clip_score, images rendered once). The feature network is a small fixed local network given the way Inception is."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from metric_contract import check_metric_contract
from PIL import Image

from eval_learn.compose import resolve_model
from eval_learn.configs import ConfigError, from_mapping
from eval_learn.errors import RunError
from eval_learn.judges.fid_features import FIDFeatures, FIDFeaturesConfig, clean_resize
from eval_learn.judges.tiny import write_tiny_clip
from eval_learn.metrics.fid import FID, FeatureMoments, FIDConfig, frechet_distance
from eval_learn.runners import MultiBenchmarkRunner
from eval_learn.runtime import RunContext
from eval_learn.types import PromptRecord

TINY = "eval_learn.judges.tiny:tiny_feature_network"


def context(cache_dir=None) -> RunContext:
    return RunContext(model=resolve_model("tiny"), device="cpu", dtype=torch.float32, seed=0, cache_dir=cache_dir)


def make_fid(reference, cache_dir=None, **config) -> FID:
    parsed = from_mapping(FIDConfig, {"reference": str(reference), "feature_extractor": TINY, **config}, "fid")
    FID.preflight(FID.resolve_config(parsed, context(cache_dir), None), context(cache_dir))
    return FID(FID.resolve_config(parsed, context(cache_dir), None), context(cache_dir))


def images(n: int, seed: int = 0, size: tuple[int, int] = (40, 40)) -> list[Image.Image]:
    rng = np.random.RandomState(seed)
    return [Image.fromarray(rng.randint(0, 256, (*size, 3), dtype=np.uint8)) for _ in range(n)]


def records(n: int) -> list[PromptRecord]:
    return [PromptRecord(i, f"p{i}", i) for i in range(n)]


def save_images(folder, pictures) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    for i, picture in enumerate(pictures):
        picture.save(folder / f"{i:03d}.png")
    return str(folder)


def moments_of(features: np.ndarray, one_by_one: bool = False) -> FeatureMoments:
    moments = FeatureMoments(features.shape[1])
    for part in features if one_by_one else [features]:
        moments.add(part)
    return moments


class Passthrough(torch.nn.Module):
    """Hands torchmetrics the features themselves, so both sides see the same numbers."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.num_features = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_frechet_distance_of_gaussians_in_closed_form() -> None:
    rng = np.random.RandomState(0)
    q, _ = np.linalg.qr(rng.randn(6, 6))
    a, b = rng.uniform(0.1, 3.0, 6), rng.uniform(0.1, 3.0, 6)
    mu1, mu2 = rng.randn(6), rng.randn(6)
    sigma1, sigma2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T  # commuting: tr (Σ1Σ2)^½ = Σ √(a b)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    value = frechet_distance(*(torch.from_numpy(x) for x in (mu1, sigma1, mu2, sigma2)))
    assert value == pytest.approx(expected, rel=1e-10)
    same = frechet_distance(*(torch.from_numpy(x) for x in (mu1, sigma1, mu1, sigma1)))
    assert abs(same) < 1e-10  # identical statistics


def test_exact_sums_give_numpy_moments_and_do_not_depend_on_order() -> None:
    rng = np.random.RandomState(1)
    features = (rng.randn(150, 7) * rng.uniform(0.01, 30.0, 7)).astype(np.float32)  # several buffers of 32
    moments = moments_of(features)
    n, mu, sigma = moments.moments()
    assert n == 150
    # Each feature and product is rounded by at most 2**-30 (half the grid): the moments are off by no more.
    assert np.allclose(mu.numpy(), features.astype(np.float64).mean(0), rtol=0, atol=2**-30)
    assert np.allclose(sigma.numpy(), np.cov(features.astype(np.float64), rowvar=False), rtol=1e-12, atol=4 * 2**-30)
    one_by_one = moments_of(features, one_by_one=True)
    shuffled = moments_of(features[rng.permutation(150)])
    odd, even = moments_of(features[1::2]), moments_of(features[::2])
    for name, state in even.states.items():
        state.merge(odd.states[name])
    even.normalise()
    for other in (one_by_one, shuffled, even):  # bit for bit, not approximately
        assert all(torch.equal(moments.states[k].value, other.states[k].value) for k in moments.states)
    # Plain float64 sums of the same products would depend on the order: the reason for the exact limbs.
    plain = features.astype(np.float64)
    assert not np.array_equal(plain.T @ plain, sum(np.outer(x, x) for x in plain[::-1]))


def test_agrees_with_torchmetrics_on_the_same_features() -> None:
    from torchmetrics.image.fid import FrechetInceptionDistance

    rng = np.random.RandomState(2)
    real = (rng.randn(40, 6) * 2 + 1).astype(np.float32)
    fake = (rng.randn(30, 6) * 1.5 + 1.3).astype(np.float32)
    reference = FrechetInceptionDistance(feature=Passthrough(6), normalize=True)
    reference.update(torch.from_numpy(real).double(), real=True)
    reference.update(torch.from_numpy(fake).double(), real=False)
    expected = float(reference.compute())
    _, mu_r, sigma_r = moments_of(real).moments()
    _, mu_g, sigma_g = moments_of(fake).moments()
    ours = frechet_distance(mu_r, sigma_r, mu_g, sigma_g)
    assert ours == pytest.approx(expected, rel=1e-6)
    assert ours > 0.1


def test_feature_range_and_non_finite_features_are_refused() -> None:
    moments = FeatureMoments(3)
    with pytest.raises(RunError, match=re.escape("needs |feature| < 512")):
        moments.add(np.array([[1.0, 2.0, 0.0], [1.0, 600.0, 0.0]], dtype=np.float32))
    with pytest.raises(RunError, match="non-finite"):
        moments.add(np.array([1.0, np.nan, 0.0], dtype=np.float32))
    with pytest.raises(RunError, match=re.escape("shape (2,), expected (3,)")):
        moments.add(np.zeros(2, dtype=np.float32))
    assert moments.count == 0 and not any(bool(s.value.any()) for s in moments.states.values())  # nothing was added


def test_batches_restores_and_shards_give_the_same_value(tmp_path) -> None:
    reference = save_images(tmp_path / "ref", images(6, seed=7, size=(30, 50)))
    check_metric_contract(lambda: make_fid(reference), images(5), records(5), tmp_path)


def test_reference_folder_npz_and_cache_agree(tmp_path) -> None:
    reference_images = images(6, seed=7, size=(30, 50))  # not square: centre-cropped like every image
    folder = save_images(tmp_path / "ref", reference_images)
    cache = tmp_path / "cache"
    first = make_fid(folder, cache)
    first.update(images(4), records(4))
    from_folder = first.compute()
    assert from_folder.details["reference"]["from_cache"] is False and from_folder.details["reference"]["images"] == 6
    again = make_fid(folder, cache)
    again.update(images(4), records(4))
    cached = again.compute()
    assert cached.details["reference"]["from_cache"] is True and cached.value == from_folder.value
    # The same statistics as an .npz give the same distance.
    judge = FIDFeatures(FIDFeaturesConfig(network=TINY))
    n, mu, sigma = moments_of(np.stack([v["features"] for v in judge.judge(reference_images)])).moments()
    np.savez(tmp_path / "ref.npz", mu=mu.numpy(), sigma=sigma.numpy(), n=n)
    npz = make_fid(tmp_path / "ref.npz")
    npz.update(images(4), records(4))
    assert npz.compute().value == pytest.approx(from_folder.value, rel=1e-12)
    # Generated images identical to the reference: FID 0.
    same = make_fid(folder)
    same.update(reference_images, records(6))
    assert abs(same.compute().value) < 1e-6
    # Another reference image changes the folder's digest: the cache is not reused.
    Image.new("RGB", (20, 20), (255, 0, 0)).save(tmp_path / "ref" / "extra.png")
    changed = make_fid(folder, cache)
    changed.update(images(4), records(4))
    assert changed.compute().details["reference"]["from_cache"] is False


def test_preprocessing_crops_and_resizes() -> None:
    judge = FIDFeatures(FIDFeaturesConfig(network=TINY))
    wide = Image.new("RGB", (60, 40))
    assert tuple(judge.pixels(wide).shape) == (1, 3, 299, 299) and judge.pixels(wide).dtype == torch.uint8
    native = FIDFeatures(FIDFeaturesConfig(network=TINY, resize="tf1_bilinear"))
    assert tuple(native.pixels(wide).shape) == (1, 3, 40, 40)
    settings = judge.settings()
    assert settings["network"] == TINY and settings["num_features"] == 8 and len(settings["state_sha256"]) == 64
    assert "PIL bicubic" in settings["preprocessing"] and FID.higher_is_better is False


def test_bad_configs(tmp_path) -> None:
    with pytest.raises(ConfigError, match="fid needs reference images or statistics"):
        from_mapping(FIDConfig, {}, "fid")
    with pytest.raises(ConfigError, match="does not exist"):
        from_mapping(FIDConfig, {"reference": str(tmp_path / "nowhere")}, "fid")
    with pytest.raises(ConfigError, match="'inception', 'pytorch_fid' or 'package.module:factory'"):
        from_mapping(FIDConfig, {"reference": str(tmp_path), "feature_extractor": "resnet"}, "fid")
    with pytest.raises(ConfigError, match="fewer than 2 images"):
        make_fid(tmp_path)
    np.savez(tmp_path / "bad.npz", mean=np.zeros(8))
    with pytest.raises(ConfigError, match="need arrays 'mu' and 'sigma'"):
        make_fid(tmp_path / "bad.npz")
    np.savez(tmp_path / "wide.npz", mu=np.zeros(5), sigma=np.eye(5))
    with pytest.raises(ConfigError, match="have 5 features; the feature network gives 8"):
        make_fid(tmp_path / "wide.npz")
    with pytest.raises(ConfigError, match="cannot import"):
        make_fid(tmp_path / "wide.npz", feature_extractor="no_such_module:build")


@pytest.mark.skipif(importlib.util.find_spec("torch_fidelity") is not None, reason="torch-fidelity is installed")
def test_inception_without_torch_fidelity_is_a_config_error(tmp_path) -> None:
    save_images(tmp_path / "ref", images(2))
    parsed = from_mapping(FIDConfig, {"reference": str(tmp_path / "ref")}, "fid")
    with pytest.raises(ConfigError, match=r"pip install 'eval-learn\[fid\]'"):
        FID.preflight(FID.resolve_config(parsed, context(), None), context())


@pytest.mark.slow
def test_multi_runner_renders_each_image_once_for_clip_score_and_fid(tmp_path, cache_dir) -> None:
    clip = str(write_tiny_clip(tmp_path / "clip"))
    reference = save_images(tmp_path / "ref", images(5, seed=3, size=(48, 64)))
    report = MultiBenchmarkRunner(
        "free_run", ["clip_score", "fid"], {},
        {"clip_score": {"limit": 4, "judge": {"name": "clip", "model": clip}},
         "fid": {"limit": 4, "reference": reference, "feature_extractor": TINY}},
        tmp_path / "out", model="tiny", cache_dir=cache_dir,
    ).run()  # fmt: skip
    results = report["metric_results"]
    assert results["fid"]["name"] == "fid_coco_10k" and results["fid"]["higher_is_better"] is False
    assert results["fid"]["value"] > 0 and results["fid"]["details"]["generated_images"] == 4
    assert results["fid"]["details"]["reference"]["images"] == 5
    assert results["clip_score"]["higher_is_better"] is True and results["clip_score"]["details"]["n"] == 4
    assert report["cache_stats"]["images_requested"] == 8 and report["cache_stats"]["images_generated"] == 4
    assert report["judges"]["fid"]["network"] == TINY and report["judges"]["clip_score"]["model"] == clip


CLEANFID = json.loads((Path(__file__).parent / "parity" / "golden" / "cleanfid_resize.json").read_text())


def cleanfid_test_image() -> Image.Image:
    """The non-square image of tests/parity/golden/cleanfid_resize.json (its ``command``)."""
    array = np.random.RandomState(0).randint(0, 256, (48, 80, 3)).astype(np.uint8)
    array[:, :40] //= 2
    return Image.fromarray(array)


def test_clean_resize_equals_clean_fid_on_a_non_square_image() -> None:
    ours = clean_resize(cleanfid_test_image())
    assert list(ours.shape) == CLEANFID["shape"] and str(ours.dtype) == CLEANFID["dtype"]
    index = CLEANFID["sample_index"]
    assert np.abs(ours[np.ix_(index, index)] - np.array(CLEANFID["sample"])).max() < 1e-3  # golden kept to 4 decimals
    assert float(ours.astype(np.float64).sum()) == pytest.approx(CLEANFID["sum"], rel=1e-6)
    clean = FIDFeatures(FIDFeaturesConfig(network=TINY, resize="clean")).pixels(cleanfid_test_image())[0]
    clean = clean.permute(1, 2, 0).numpy().astype(np.float64)
    assert np.abs(clean - ours).max() <= 0.5  # rounded to uint8 for the network
    cropped = FIDFeatures(FIDFeaturesConfig(network=TINY)).pixels(cleanfid_test_image())[0]
    gap = np.abs(cropped.permute(1, 2, 0).numpy().astype(np.float64) - ours).mean()
    assert gap > 10  # centre crop + uint8 resize sees other pixels: mean gap measured 50.2 grey levels here


def test_statistics_we_write_record_the_network_and_others_are_refused_or_flagged(tmp_path, caplog) -> None:
    folder = save_images(tmp_path / "ref", images(6, seed=7))
    out = tmp_path / "stats.npz"
    first = make_fid(folder, statistics_out=str(out))
    first.update(images(4), records(4))
    value = first.compute().value
    written = dict(np.load(out))
    assert json.loads(str(written["feature_extractor"]))["network"] == TINY and int(written["n"]) == 6
    again = make_fid(out)  # our own file: checked, accepted, same value
    again.update(images(4), records(4))
    result = again.compute()
    assert result.value == pytest.approx(value, rel=1e-12)
    assert result.details["reference"]["feature_extractor"].startswith("recorded in the file; matches")
    with pytest.raises(ConfigError, match="another feature network or resize.*resize"):
        make_fid(out, resize="clean")  # same network, other resize: refused before anything runs
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, mu=written["mu"], sigma=written["sigma"])  # as pytorch-fid writes them: nothing recorded
    with caplog.at_level("WARNING", logger="eval_learn.metrics.fid"):
        other = make_fid(foreign)
    assert "do not record their feature network" in caplog.text
    other.update(images(4), records(4))
    assert other.compute().details["reference"]["feature_extractor"] == "not recorded in the file: unverified"


def test_pytorch_fid_network_needs_its_package_and_299_inputs(tmp_path) -> None:
    with pytest.raises(ConfigError, match="resize must be pil_bicubic or clean"):
        FIDFeaturesConfig(network="pytorch_fid", resize="tf1_bilinear").validate()
    if importlib.util.find_spec("pytorch_fid") is None:
        with pytest.raises(ConfigError, match="pip install pytorch-fid"):
            FIDFeatures.preflight(FIDFeaturesConfig(network="pytorch_fid"))
    settings = FIDFeatures(FIDFeaturesConfig(network="pytorch_fid")).settings()
    assert settings["weights"].startswith("pt_inception-2015-12-05") and settings["num_features"] == 2048


def test_a_saved_config_naming_the_tiny_networks_old_module_still_runs(caplog) -> None:
    from eval_learn.judges.fid_features import _factory
    from eval_learn.judges.tiny import tiny_feature_network

    assert _factory("eval_learn.models.tiny_judges:tiny_feature_network") is tiny_feature_network
    assert "deprecated" in caplog.text
