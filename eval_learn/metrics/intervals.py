"""Confidence intervals for the rates the metrics report, honest about how the images were drawn.

- :func:`wilson_interval` — the 95 % Wilson score interval of a proportion over independent images.
- :func:`clustered_wilson` — the same at Kish's *effective* sample size when images come in clusters (the k samples
  of one prompt share its words and differ only by seed, so they agree far more often than independent draws; a
  Wilson interval over all n images is then too narrow). The design effect comes from the cluster-robust
  (between-prompt) variance of the ratio estimator p = Σy/Σm. With one image per prompt it *is* the Wilson interval.
- :func:`bootstrap_interval` — a seeded percentile bootstrap over prompts (resampled within strata, e.g. ERR's arms),
  for values that are not one proportion: per-label averages, harmonic means.
- :func:`any_flagged` — the share of prompts with at least one flagged image (ASR-N), with its Wilson interval.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import numpy as np

Z95 = 1.96  # the standard normal's 97.5 % quantile, as the field writes it (exact: 1.95996...)
BOOTSTRAP_RESAMPLES = 2000


def wilson_interval(successes: float, total: float, z: float = Z95) -> tuple[float, float] | None:
    """95 % Wilson score interval of a proportion: honest error bars for a rate over a few hundred prompts.

    ``total`` may be fractional (an effective sample size)."""
    if total <= 0:
        return None
    p = successes / total
    denom = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z * math.sqrt(max(p * (1 - p), 0.0) / total + z * z / (4 * total * total)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def clusters_of(items: Sequence[dict], key: str, want: bool = True) -> list[tuple[int, int]]:
    """(hits, images) per prompt of per-image records that carry ``prompt_id`` (records without one, e.g. a state
    saved by an older version, count as prompts of one image)."""
    clusters = Clustered(items, key, want)
    return [(int(y), int(m)) for y, m in zip(clusters.hits, clusters.sizes, strict=True)]


def effective_size(clusters: Sequence[tuple[int, int]]) -> float:
    """Kish's effective sample size n / deff of a clustered proportion.

    deff = Var_cluster / Var_iid with Var_cluster = Σ(y_k - p m_k)² / (Σm)² (cluster-robust, no small-sample factor:
    with m_k = 1 it equals p(1-p)/n, so one image per prompt gives n back). When every image agrees (p is 0 or 1)
    the data say nothing about the correlation: the number of prompts is used, the conservative choice."""
    n = sum(m for _, m in clusters)
    if n == 0:
        return 0.0
    p = sum(y for y, _ in clusters) / n
    variance = sum((y - p * m) ** 2 for y, m in clusters) / (n * n)
    if variance == 0.0 or p in (0.0, 1.0):
        return float(len(clusters))
    return min(float(n), p * (1 - p) / variance)


def clustered_wilson(clusters: Sequence[tuple[int, int]], z: float = Z95) -> tuple[float, float] | None:
    """The Wilson interval of Σy/Σm at the effective sample size of the clustered draw."""
    n = sum(m for _, m in clusters)
    if n == 0:
        return None
    n_eff = effective_size(clusters)
    return wilson_interval(sum(y for y, _ in clusters) / n * n_eff, n_eff, z)


def rate_details(items: Sequence[dict], key: str, want: bool = True) -> dict:
    """A rate's value, its plain Wilson interval, and the interval to use: clustered by prompt when some prompt has
    several images (``ci95``), with the effective sample size it rests on."""
    clusters = clusters_of(items, key, want)
    n = sum(m for _, m in clusters)
    hits = sum(y for y, _ in clusters)
    repeated = any(m > 1 for _, m in clusters)
    return {
        "value": hits / n if n else None,
        "n": n,
        "prompts": len(clusters),
        "ci95_wilson": wilson_interval(hits, n),
        "ci95": clustered_wilson(clusters) if repeated else wilson_interval(hits, n),
        "ci95_method": "wilson, clustered by prompt" if repeated else "wilson",
        "n_effective": effective_size(clusters) if repeated else float(n),
    }


def bootstrap_interval(
    strata: Sequence[Hashable],
    statistic: Callable[[np.ndarray], np.ndarray],
    *,
    seed: int,
    resamples: int = BOOTSTRAP_RESAMPLES,
    level: float = 0.95,
) -> tuple[float, float] | None:
    """Percentile bootstrap over clusters (prompts), resampled with replacement within each stratum.

    ``strata[k]`` is cluster k's stratum; ``statistic(W)`` takes a (resamples, clusters) matrix of multiplicities and
    returns one value per row (NaN where undefined, e.g. a label that drew no prompt: such rows are dropped). The
    generator is seeded, so a report's interval is reproducible."""
    if not strata:
        return None
    rng = np.random.default_rng(seed)
    weights = np.zeros((resamples, len(strata)))
    groups: dict[Hashable, list[int]] = {}
    for k, stratum in enumerate(strata):
        groups.setdefault(stratum, []).append(k)
    for members in groups.values():
        counts = rng.multinomial(len(members), [1 / len(members)] * len(members), size=resamples)
        weights[:, members] = counts
    values = np.asarray(statistic(weights), dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return (float(low), float(high))


class Clustered:
    """Per-prompt hits and sizes of one rate (and each prompt's label), as arrays for vectorised resampling."""

    def __init__(self, items: Sequence[dict], key: str, want: bool = True, label: str | None = None) -> None:
        table: dict[Hashable, list] = {}
        for i, item in enumerate(items):
            row = table.setdefault(item.get("prompt_id", ("image", i)), [0, 0, item.get(label) if label else None])
            row[0] += bool(item[key]) == want
            row[1] += 1
        self.hits = np.array([row[0] for row in table.values()], dtype=float)
        self.sizes = np.array([row[1] for row in table.values()], dtype=float)
        self.labels = [row[2] for row in table.values()]

    def __len__(self) -> int:
        return len(self.sizes)

    def pooled(self, weights: np.ndarray | None = None) -> np.ndarray:
        """Σ w·y / Σ w·m per row of ``weights`` (one row of ones when None)."""
        w = np.ones((1, len(self))) if weights is None else weights
        with np.errstate(invalid="ignore", divide="ignore"):
            return (w @ self.hits) / (w @ self.sizes)

    def label_average(self, weights: np.ndarray | None = None) -> np.ndarray:
        """The mean over labels of each label's pooled rate (UnlearnCanvas' averaging: every label counts once,
        however many images it has)."""
        w = np.ones((1, len(self))) if weights is None else weights
        per_label = []
        for label in sorted(set(self.labels), key=str):
            mask = np.array([lab == label for lab in self.labels])
            with np.errstate(invalid="ignore", divide="ignore"):
                per_label.append((w[:, mask] @ self.hits[mask]) / (w[:, mask] @ self.sizes[mask]))
        return np.mean(per_label, axis=0) if per_label else np.full(w.shape[0], np.nan)


def joint_bootstrap(
    parts: Sequence[tuple[Clustered, str]],
    combine: Callable[..., np.ndarray],
    *,
    seed: int,
    resamples: int = BOOTSTRAP_RESAMPLES,
) -> tuple[float, float] | None:
    """Bootstrap a value made of several rates: ``parts`` are (clusters, how: "pooled" | "label_average"); every
    part's prompts are resampled within the part (and within each label for a label average), and
    ``combine(*rates)`` turns the parts' resampled rates into the value."""
    if any(len(clusters) == 0 for clusters, _ in parts):
        return None
    strata: list[Hashable] = []
    spans = []
    for p, (clusters, how) in enumerate(parts):
        start = len(strata)
        strata += [(p, lab if how == "label_average" else None) for lab in clusters.labels]
        spans.append((start, len(strata)))

    def statistic(weights: np.ndarray) -> np.ndarray:
        rates = [getattr(clusters, how)(weights[:, a:b]) for (clusters, how), (a, b) in zip(parts, spans, strict=True)]
        return combine(*rates)

    return bootstrap_interval(strata, statistic, seed=seed, resamples=resamples)


def any_flagged(items: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """ASR-N (MMA-Diffusion, Yang et al., CVPR 2024): a prompt succeeds when any of its N images is flagged."""
    clusters = clusters_of(items, key)
    prompts, hit = len(clusters), sum(y > 0 for y, _ in clusters)
    return {
        "value": hit / prompts if prompts else None,
        "prompts": prompts,
        "prompts_flagged": hit,
        "samples": sorted({m for _, m in clusters}),
        "ci95_wilson": wilson_interval(hit, prompts),
    }
