"""``fid``: Fréchet Inception Distance (Heusel et al., "GANs Trained by a Two Time-Scale Update Rule Converge to a Local
Nash Equilibrium", NeurIPS 2017, arXiv:1706.08500) between the generated images and reference images (a folder) or
reference statistics (an ``.npz`` with ``mu`` and ``sigma``, as pytorch-fid and T2IBenchmark write them).

FID = ‖μ_r − μ_g‖² + tr Σ_r + tr Σ_g − 2 tr (Σ_r Σ_g)^½, over the ``fid_features`` judge's features (torch-fidelity's
TF-Inception by default). Lower is better: what erasure costs in image quality on ordinary prompts (COCO-10k
captions by default; the reference images are then the COCO photos of the same ``case_number``).

Why the state is what it is: features accumulate as sums — count, Σf and Σf fᵀ — never as a held set of images or
features, so memory does not grow with the set and shards merge by adding. Float sums depend on the order they are
added in, which would make one batch, many batches and merged shards differ in the last digits; so every image's
f and each product f_i f_j (exact in float64, since f is float32) is rounded to the grid 2⁻²⁹ (1.9e-9: for features
of order 1 far below float32's own 6e-8) and the sums kept as two integer-valued float64 limbs, hi · 2²⁶ + lo with
0 ≤ lo < 2²⁶ after a carry every 32 images: exact integer sums, so the same whatever the order or grouping, up to 2³²
images. Features must lie in (−512, 512); a larger one stops the run with a message rather than
giving an inexact sum (Inception's pool3 features are averages of ReLU outputs, of a few units: not measured here).

μ and Σ follow torchmetrics' ``FrechetInceptionDistance.compute`` (Σ = (Σf fᵀ − n μ μᵀ)/(n − 1)) and the distance
its ``_compute_fid`` (tr (Σ_r Σ_g)^½ as the sum of the square roots of the eigenvalues of Σ_r Σ_g, real part), in
float64; the tests check both against torchmetrics itself. Reference statistics from a folder are computed once,
streamed image by image, and cached under the folder's content digest and the feature network's settings.

Reference statistics carry the feature network that made them: a file this metric writes (``statistics_out``, and
the folder cache) stores the ``fid_features`` settings beside ``mu`` and ``sigma``; reading an ``.npz`` whose recorded
network, port, weights or resize differ from this run's is refused, and one that records none (pytorch-fid,
clean-fid, T2IBenchmark files) is used with a warning and reported as unverified, since two Inception ports or
resizers mix silently otherwise.

KID (Bińkowski et al., ICLR 2018) is not reported: its unbiased estimator needs every pair of features (or a
d³ = 8.6e9-entry third-moment tensor for Inception's 2048 features), i.e. holding all features, which this state
deliberately does not.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image as PILImage

from eval_learn.configs import ConfigError, require
from eval_learn.errors import RunError
from eval_learn.judges.base import Judge
from eval_learn.judges.fid_features import FIDFeatures, FIDFeaturesConfig, file_sha256
from eval_learn.metrics import state as states
from eval_learn.metrics.base import Metric, MetricConfig, requested_prompts
from eval_learn.storage import atomic_write, digest_of
from eval_learn.types import MetricResult, PromptRecord

log = logging.getLogger(__name__)

GRID = 29  # every product f_i f_j (and feature f_i) is rounded to a multiple of 2**-GRID
FEATURE_LIMIT = 2.0**9  # |f| < 2**9: |f_i f_j| · 2**GRID <= 2**47 after rounding, so 32 images sum to <= 2**52
FLUSH = 32  # images added to the low limb (< 2**LIMB) before a carry: it stays below 2**52 + 2**26 < 2**53
LIMB = 26  # a sum n is kept as hi · 2**LIMB + lo, 0 <= lo < 2**LIMB after each carry: unique, hence order-free
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
SMALL_SET = 2048  # below this many images Σ (2048×2048 for Inception) is rank-deficient: FID is biased upwards


def carry(limbs: Any) -> None:
    """Move each low limb's multiples of 2**LIMB into its high limb, in place (exact: integers below 2**53)."""
    for high, low in limbs:
        moved = torch.floor(low * 2.0**-LIMB)
        low.sub_(moved, alpha=2.0**LIMB)
        high.add_(moved)


def joined(high: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
    return (high * 2.0**LIMB + low) * 2.0**-GRID


class FeatureMoments:
    """Exact, order-independent sums of features and their outer products (see the module docstring)."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.states: dict[str, states.Sum] = {
            "count": states.Sum(),
            "sum_hi": states.Sum((dim,)),
            "sum_lo": states.Sum((dim,)),
            "outer_hi": states.Sum((dim, dim)),
            "outer_lo": states.Sum((dim, dim)),
        }

    def check(self, features: np.ndarray) -> torch.Tensor:
        f = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)).to(torch.float64)
        if f.ndim != 2 or f.shape[1] != self.dim:
            raise RunError(f"the feature network gave features of shape {tuple(f.shape[1:])}, expected ({self.dim},)")
        if not bool(torch.isfinite(f).all()):
            raise RunError("the feature network gave non-finite features (NaN or Inf)")
        peak = float(f.abs().max()) if f.numel() else 0.0
        if peak >= FEATURE_LIMIT:
            raise RunError(f"a feature is {peak:g}; FID's exact accumulation needs |feature| < {FEATURE_LIMIT:g} "
                           f"(scale the feature network's output)")  # fmt: skip
        return f

    def add(self, features: np.ndarray, device: str = "cpu") -> None:
        """Add a batch of feature vectors (N, d): all are checked before any is added. The products are formed on
        ``device`` when it is a CUDA device (float64 there too; the arithmetic is exact, so the device does not
        change the sums), else on the CPU, in place in the state."""
        f = self.check(np.atleast_2d(features))
        work = device if str(device).startswith("cuda") else "cpu"
        f = f.to(work)
        limbs = {name: (self.states[f"{name}_hi"].value.to(work), self.states[f"{name}_lo"].value.to(work))
                 for name in ("outer", "sum")}  # fmt: skip
        product = torch.empty(self.dim, self.dim, dtype=torch.float64, device=work)
        for i, row in enumerate(f):
            torch.outer(row, row, out=product)  # products of float32 values: exact in float64
            limbs["outer"][1].add_(product.mul_(2.0**GRID).round_())
            limbs["sum"][1].add_(torch.round(row * 2.0**GRID))
            if (i + 1) % FLUSH == 0:
                carry(limbs.values())
        carry(limbs.values())
        for name, (high, low) in limbs.items():  # no-op on the CPU: the limbs are the state's own tensors
            self.states[f"{name}_hi"].value, self.states[f"{name}_lo"].value = high.cpu(), low.cpu()
        self.states["count"].add(float(len(f)))

    def normalise(self) -> None:
        """The canonical limbs (0 <= lo < 2**LIMB) after a merge: the same sums then have the same limbs however
        they were grouped (the value is the same either way; this makes saved states identical too)."""
        limbs = [(self.states[f"{n}_hi"].value, self.states[f"{n}_lo"].value) for n in ("outer", "sum")]
        carry(limbs)

    @property
    def count(self) -> int:
        return int(self.states["count"].value.item())

    def moments(self) -> tuple[int, torch.Tensor, torch.Tensor]:
        """(n, μ, Σ) as torchmetrics computes them from its sums (unbiased covariance)."""
        n = self.count
        total = joined(self.states["sum_hi"].value, self.states["sum_lo"].value)
        outer = joined(self.states["outer_hi"].value, self.states["outer_lo"].value)
        mean = (total / n).unsqueeze(0)
        sigma = (outer - n * mean.t().mm(mean)) / (n - 1)
        return n, mean.squeeze(0), sigma

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: s.value.numpy() for name, s in self.states.items()}

    def load_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        for name, s in self.states.items():
            s.value = torch.from_numpy(np.array(arrays[name], dtype=np.float64))


def frechet_distance(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor) -> float:
    """torchmetrics' ``_compute_fid``, in float64: ‖μ1 − μ2‖² + tr Σ1 + tr Σ2 − 2 Σ √eig(Σ1 Σ2)."""
    mu1, sigma1, mu2, sigma2 = (t.to(torch.float64) for t in (mu1, sigma1, mu2, sigma2))
    a = (mu1 - mu2).square().sum(dim=-1)
    b = sigma1.trace() + sigma2.trace()
    c = torch.linalg.eigvals(sigma1 @ sigma2).sqrt().real.sum(dim=-1)
    return float(a + b - 2 * c)


def reference_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


@functools.lru_cache(maxsize=8)
def _folder_digest(folder: str, listing: tuple[tuple[str, int, int], ...]) -> str:
    digest = hashlib.sha256()
    for name, _, _ in listing:
        digest.update(name.encode() + b"\x00" + file_sha256(Path(folder) / name).encode())
    return digest.hexdigest()


def folder_digest(folder: Path) -> str:
    """SHA-256 over every reference image's relative path and content."""
    listing = []
    for path in reference_images(folder):
        stat = path.stat()
        listing.append((path.relative_to(folder).as_posix(), stat.st_size, stat.st_mtime_ns))
    return _folder_digest(str(folder.resolve()), tuple(listing))


# The settings that decide which features a network gives: statistics differing in any of them are not comparable.
NETWORK_IDENTITY = ("network", "implementation", "class", "weights", "weights_sha256", "state_sha256", "resize")


def read_npz(path: Path) -> tuple[np.ndarray, np.ndarray, int | None]:
    mu, sigma, n, _ = read_statistics(path)
    return mu, sigma, n


def read_statistics(path: Path) -> tuple[np.ndarray, np.ndarray, int | None, dict[str, Any] | None]:
    """(mu, sigma, n, the recorded feature network's settings or None) of an .npz of statistics."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if "mu" not in data or "sigma" not in data:
                raise ConfigError(f"reference statistics '{path}' need arrays 'mu' and 'sigma' (found {list(data)})")
            mu, sigma = np.asarray(data["mu"], dtype=np.float64), np.asarray(data["sigma"], dtype=np.float64)
            n = int(data["n"]) if "n" in data else None
            recorded = json.loads(str(data["feature_extractor"])) if "feature_extractor" in data else None
    except (OSError, ValueError) as err:
        raise ConfigError(f"reference statistics '{path}' cannot be read as .npz ({err})") from None
    if mu.ndim != 1 or sigma.shape != (mu.size, mu.size):
        raise ConfigError(f"reference statistics '{path}': mu has shape {mu.shape} and sigma {sigma.shape}; expected "
                          f"(d,) and (d, d)")  # fmt: skip
    return mu, sigma, n, recorded


def network_mismatch(recorded: dict[str, Any], current: dict[str, Any]) -> dict[str, Any]:
    """The identity settings on which recorded statistics and this run's feature network differ."""
    keys = [k for k in NETWORK_IDENTITY if k in recorded or k in current]
    return {k: {"file": recorded.get(k), "run": current.get(k)} for k in keys if recorded.get(k) != current.get(k)}


def write_statistics(path: Path, n: int, mu: torch.Tensor, sigma: torch.Tensor, settings: dict[str, Any]) -> None:
    """mu, sigma (pytorch-fid's keys), n, and the feature network's settings as JSON, so a reader can check them."""
    atomic_write(path, _npz_bytes({"mu": mu.numpy(), "sigma": sigma.numpy(), "n": np.array(n),
                                   "feature_extractor": np.array(json.dumps(settings))}))  # fmt: skip


@dataclass
class FIDConfig(MetricConfig):
    # auto: coco_10k (COCO captions with their seeds). A prompt set name or {name: ..., <its settings>}.
    prompts: str | dict[str, Any] = "auto"
    reference: str | None = None  # a folder of reference images, or an .npz with mu and sigma (required)
    # inception (torch-fidelity's TF-Inception port) | pytorch_fid (pytorch-fid's port) | package.module:factory
    feature_extractor: str = "inception"
    resize: Literal["pil_bicubic", "clean", "tf1_bilinear", "antialias"] = "pil_bicubic"
    inception_weights: str | None = None  # a local weights-inception-2015-12-05-6726825d.pth; null: downloaded
    statistics_out: str | None = None  # write the reference folder's statistics (with the network's settings) here

    def validate(self) -> None:
        super().validate()
        require(self.reference is not None and bool(str(self.reference).strip()),
                "fid needs reference images or statistics: metric.config.reference=FOLDER (e.g. the COCO photos of "
                "the captions) or FILE.npz (arrays mu and sigma)")  # fmt: skip
        path = Path(str(self.reference))
        require(path.is_dir() or path.is_file(), f"reference '{path}' does not exist")
        if path.is_file():
            require(path.suffix == ".npz", f"reference '{path}' must be a folder of images or an .npz file")
            require(self.statistics_out is None, "statistics_out writes the statistics of a reference *folder*")
        if self.statistics_out is not None:
            require(
                str(self.statistics_out).endswith(".npz"), f"statistics_out must end in .npz: {self.statistics_out}"
            )
        self.judge_config()

    def judge_config(self) -> FIDFeaturesConfig:
        from eval_learn.configs import from_mapping

        return from_mapping(FIDFeaturesConfig, {"network": self.feature_extractor, "resize": self.resize,
                                                "inception_weights": self.inception_weights}, "fid")  # fmt: skip


class FID(Metric):
    name = "fid"
    config_cls = FIDConfig
    higher_is_better = False
    config: FIDConfig

    @classmethod
    def resolve_config(cls, config: FIDConfig, context: Any, erased: list[str] | None) -> FIDConfig:
        return cls.resolved(config, cls.parse_prompts(requested_prompts(config, {"name": "coco_10k"})))

    @classmethod
    def preflight(cls, config: FIDConfig, context: Any) -> None:
        super().preflight(config, context)
        judge = config.judge_config()
        FIDFeatures.preflight(judge)
        path = Path(str(config.reference))
        if path.is_file():
            mu, _, _, recorded = read_statistics(path)
            features = FIDFeatures(judge)
            dim = features.num_features()
            require(mu.size == dim, f"reference statistics '{path}' have {mu.size} features; the feature network "
                                    f"gives {dim}")  # fmt: skip
            if recorded is None:
                log.warning("fid: reference statistics '%s' do not record their feature network (written by another "
                            "tool?); FID is only meaningful if they were made with %s and resize=%s", path,
                            judge.network, judge.resize)  # fmt: skip
            else:
                mismatch = network_mismatch(recorded, features.settings())
                require(not mismatch, f"reference statistics '{path}' were made with another feature network or "
                                      f"resize: {mismatch}")  # fmt: skip
        elif len(reference_images(path)) < 2:
            raise ConfigError(
                f"reference folder '{path}' holds fewer than 2 images ({', '.join(sorted(IMAGE_SUFFIXES))})"
            )

    def build_judges(self) -> dict[str, Judge]:
        return {"judge": FIDFeatures(self.config.judge_config(), self.device)}

    def init_state(self) -> dict[str, states.State]:
        # The moments' sums are the metric's state itself: restoring and merging fill them in place.
        self.moments = FeatureMoments(self.judges["judge"].num_features())
        return {"judgements": states.PerImage(), **self.moments.states}

    def update(self, images: list[Any], records: list[PromptRecord]) -> list[dict[str, Any]]:
        """Judge the batch, add its features to the sums in one go (checked first, so a bad feature leaves the state
        as it was), and record each image."""
        if len(images) != len(records):
            raise ValueError(f"{len(images)} images for {len(records)} prompts")
        repeated = [r.index for r in records if r.index in self.judgements.items]
        if repeated:
            raise ValueError(f"images {repeated[:5]} were judged twice")
        verdicts = self.judges["judge"].judge(images)
        self.moments.add(np.stack([v["features"] for v in verdicts]), self.device)
        out = []
        for verdict, record in zip(verdicts, records, strict=True):
            entry = self.record({"judge": verdict}, record)
            self.judgements.add(record.index, entry)
            out.append(entry)
        return out

    def merge(self, other: Metric) -> None:
        super().merge(other)
        self.moments.normalise()

    def record(self, verdicts: dict[str, dict[str, Any]], record: PromptRecord) -> dict[str, Any]:
        features = np.asarray(verdicts["judge"]["features"], dtype=np.float64)
        return {"feature_l2_norm": float(np.linalg.norm(features))}

    # --- reference statistics -------------------------------------------------------------------------------------
    def _feature_judge(self) -> Judge:
        # The engine wraps judges in its per-image verdict cache; reference images are summarised once into their
        # own cached statistics instead of filling the verdict store with thousands of feature vectors.
        judge = self.judges["judge"]
        return getattr(judge, "inner", judge)

    def reference_statistics(self) -> tuple[int | None, torch.Tensor, torch.Tensor, dict[str, Any]]:
        """(n, μ, Σ, description) of the reference: from the .npz, or from the folder (cached)."""
        path = Path(str(self.config.reference))
        if path.is_file():
            mu, sigma, n, recorded = read_statistics(path)
            mismatch = network_mismatch(recorded, self._feature_judge().settings()) if recorded else {}
            if mismatch:
                raise RunError(f"reference statistics '{path}' were made with another feature network or resize: "
                               f"{mismatch}")  # fmt: skip
            verified = (
                "recorded in the file; matches this run's" if recorded else "not recorded in the file: unverified"
            )
            return n, torch.from_numpy(mu), torch.from_numpy(sigma), {"kind": "statistics", "path": str(path),
                    "sha256": file_sha256(path), "feature_extractor": verified}  # fmt: skip
        judge = self._feature_judge()
        content = folder_digest(path)
        key = digest_of({"folder_sha256": content, "features": judge.settings(), "grid": [GRID, LIMB]}, 32)
        cache = Path(self.context.cache_dir) / "fid_reference" / f"{key}.npz" if self.context.cache_dir else None
        moments = FeatureMoments(self.moments.dim)
        info = {
            "kind": "images",
            "path": str(path),
            "folder_sha256": content,
            "cache_file": str(cache) if cache else None,
        }
        n, mu, sigma = self._folder_moments(path, judge, moments, cache, info)
        if self.config.statistics_out:
            write_statistics(Path(self.config.statistics_out), n, mu, sigma, judge.settings())
            info["statistics_out"] = self.config.statistics_out
        return n, mu, sigma, info

    def _folder_moments(self, path: Path, judge: Judge, moments: FeatureMoments, cache: Path | None,
                        info: dict[str, Any]) -> tuple[int, torch.Tensor, torch.Tensor]:  # fmt: skip
        if cache is not None and cache.is_file():
            try:
                with np.load(cache, allow_pickle=False) as data:
                    moments.load_arrays(dict(data))
                info["from_cache"] = True
                return moments.moments()
            except (OSError, ValueError, KeyError) as err:
                log.warning("FID reference cache %s is unreadable (%s): computing it again", cache, err)
        files = reference_images(path)
        log.info("FID: features of %d reference images in %s", len(files), path)
        for start in range(0, len(files), 32):
            batch = []
            for file in files[start : start + 32]:
                with PILImage.open(file) as image:
                    batch.append(image.convert("RGB"))
            moments.add(np.stack([v["features"] for v in judge.judge(batch)]), self.device)
        if cache is not None:
            provenance = json.dumps({**info, "feature_extractor": judge.settings()})
            atomic_write(cache, _npz_bytes({**moments.arrays(), "provenance": np.array(provenance)}))
        info["from_cache"] = False
        return moments.moments()

    # --- value --------------------------------------------------------------------------------------------------------
    def compute(self) -> MetricResult:
        judge = self._feature_judge()
        name = f"fid_{self.dataset_name(self.config)}"
        n = self.moments.count
        details: dict[str, Any] = {
            "generated_images": n,
            "prompts": self.config.prompts,
            "feature_extractor": judge.settings(),
            "formula": "||mu_r - mu_g||^2 + tr(S_r) + tr(S_g) - 2 sum(sqrt(eig(S_r S_g))) (torchmetrics' _compute_fid, "
            "float64); S = (sum f f^T - n mu mu^T) / (n - 1)",
            "accumulation": f"exact sums of f and f f^T, each rounded to 2^-{GRID}, kept as two float64 limbs",
            "kid": "not computed: its unbiased estimator needs all features held (see eval_learn.metrics.fid)",
        }
        if n < 2:
            details["error"] = f"FID needs at least 2 generated images, got {n}"
            return MetricResult(name, None, details)
        n_ref, mu_ref, sigma_ref, reference = self.reference_statistics()
        details["reference"] = {**reference, "images": n_ref}
        if mu_ref.numel() != self.moments.dim:
            raise RunError(f"the reference has {mu_ref.numel()} features, the feature network gives {self.moments.dim}")
        if n_ref is not None and n_ref < 2:
            raise RunError(f"the reference holds {n_ref} image(s); FID needs at least 2")
        _, mu, sigma = self.moments.moments()
        value = frechet_distance(mu_ref, sigma_ref, mu, sigma)  # torchmetrics' order: real, then generated
        if min(n, n_ref or n) < SMALL_SET:
            details["note"] = (f"fewer than {SMALL_SET} images on a side: the covariance is rank-deficient and FID is "
                               f"biased upwards; compare only values computed on the same number of images "
                               f"(papers use 10k or 30k)")  # fmt: skip
        if not math.isfinite(value):
            details["error"] = "the Fréchet distance is not finite"
            return MetricResult(name, None, details)
        return MetricResult(name, value, details)


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    import io

    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()
