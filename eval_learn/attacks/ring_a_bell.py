"""``ring_a_bell``: Ring-A-Bell (Tsai et al., ICLR 2024), a black-box attack that needs only the text encoder.

The concept is a direction in the text encoder's output space: the mean, over pairs of prompts that differ only by
the concept, of (embedding with the concept − embedding without). For the prompt under attack the target is its
embedding + η · that direction, and a genetic search over K free tokens looks for the token sequence whose encoder
output is nearest the target (squared distance over all 77 × dim values). The prompt found is then rendered by the
model under test and judged, so the attack measures the technique, not a proxy.

Follows chiayi-hsu/Ring-A-Bell @ e4585ad (``Get_Concept_Vector.ipynb``: the vector; ``InversePrompt.ipynb``: the
genetic search and its parameters: population 200, 3000 generations, mutation 0.25, crossover 0.5, K = 16, η = 3
for nudity). The search draws its random numbers in the release's order from its own generators (Python ``random``,
NumPy's legacy generator and a torch generator, all seeded with ``seed``), so with the same seed and encoder it
makes the same populations as the release's notebook seeded the same way.

What we do differently, on purpose:
- we return the best candidate seen in any generation, not the best of the last one: the release mutates the
  surviving parents in place, so its best fitness can get worse from one generation to the next;
- the concept vector is computed by the text encoder under test (the release ships vectors of SD-1.4's encoder,
  which mean nothing for another encoder; ``vector_path`` still loads one); the built-in nudity pairs are the
  release's 50 pairs, each weighted by how many of its 5 copies the release kept (its ``fail`` list);
- ``check_every`` can judge the current best during the search and stop early (the release judges only at the end).
"""

from __future__ import annotations

import csv
import logging
import random
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from tqdm.auto import tqdm

from eval_learn.attacks.base import Attack, AttackConfig, AttackOutcome, AttackTarget
from eval_learn.attacks.text_encoder import Found, TextEncoder, Verdict, text_attack
from eval_learn.configs import require
from eval_learn.errors import ConfigError
from eval_learn.types import PromptRecord

log = logging.getLogger(__name__)

PAIR_COLUMNS = ("with_concept", "without_concept")
BUILT_IN_PAIRS = {"nudity": "ring_a_bell_nudity_pairs.csv"}
CURVE_POINTS = 100  # at most this many (generation, best fitness) points are kept in the outcome


def built_in_pairs(concept: str) -> Path | None:
    """The shipped pair file for ``concept`` (``eval_learn/data/attacks``), or None."""
    name = BUILT_IN_PAIRS.get(concept.lower())
    return Path(str(resources.files("eval_learn") / "data" / "attacks" / name)) if name else None


def miniworld_pairs(concept: str) -> tuple[list[str], list[str], list[float]] | None:
    """Pairs for a MiniWorld concept in the release's style (the same caption with and without the concept), over
    every caption template and the other attributes; None for a concept that is not the MiniWorld's."""
    from eval_learn.miniworld.world import COLOURS, SHAPES, TEMPLATES, concept_kind

    kind = concept_kind(concept)
    if kind == "colour":
        pairs = [(t.format(f"{concept} {s}"), t.format(s)) for t in TEMPLATES for s in SHAPES]
    elif kind == "shape":
        pairs = [(t.format(f"{c} {concept}"), t.format(f"{c} shape")) for t in TEMPLATES for c in COLOURS]
    elif kind == "background":
        pairs = [(f"a {c} {s} on a {concept} background", f"a {c} {s}") for c in COLOURS for s in SHAPES]
    else:
        return None
    return [a for a, _ in pairs], [b for _, b in pairs], [1.0] * len(pairs)


def read_pairs(path: str | Path) -> tuple[list[str], list[str], list[float]]:
    """Prompts with and without the concept, and each pair's weight (1 where the file has no ``weight`` column)."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as err:
        raise ConfigError(f"Cannot read the concept pairs file {path}: {err.strerror or err}") from None
    if not rows or any(column not in rows[0] for column in PAIR_COLUMNS):
        raise ConfigError(f"The concept pairs file {path} needs a header with columns {', '.join(PAIR_COLUMNS)}")
    weights: list[float] = []
    for number, row in enumerate(rows, start=2):
        if not (row["with_concept"] or "").strip() or not (row["without_concept"] or "").strip():
            raise ConfigError(f"{path}, line {number}: both prompts of a pair must be given")
        try:
            weight = float(row.get("weight") or 1)
        except ValueError:
            raise ConfigError(f"{path}, line {number}: weight '{row.get('weight')}' is not a number") from None
        require(weight >= 0 and np.isfinite(weight), f"{path}, line {number}: a weight must be finite and >= 0")
        weights.append(weight)
    require(sum(weights) > 0, f"{path}: the weights sum to 0")
    return [r["with_concept"] for r in rows], [r["without_concept"] for r in rows], weights


@dataclass
class RingABellConfig(AttackConfig):
    eta: float = 3.0  # η: how far along the concept direction the target lies (release: 3 for nudity)
    tokens: int = 16  # K: free tokens after the start token (release: 16, or 75 for K = 77)
    population: int = 200
    generations: int = 3000
    mutation_rate: float = 0.25
    crossover_rate: float = 0.5
    pairs_path: str | None = None  # CSV with_concept,without_concept[,weight]; None: the built-in set of the concept
    vector_path: str | None = None  # a concept vector .npy [77, dim] of this text encoder (overrides the pairs)
    check_every: int | None = None  # judge the best prompt every N generations and stop on success (None: at the end)

    def validate(self) -> None:
        super().validate()
        require(self.tokens >= 1, "tokens must be >= 1")
        require(self.population >= 2, "population must be >= 2")
        require(self.generations >= 1, "generations must be >= 1")
        require(0 <= self.mutation_rate <= 1, "mutation_rate must be in [0, 1]")
        require(0 <= self.crossover_rate <= 1, "crossover_rate must be in [0, 1]")
        require(self.check_every is None or self.check_every >= 1, "check_every must be >= 1")
        if self.pairs_path is not None:
            read_pairs(self.pairs_path)
        if self.vector_path is not None:
            require(Path(self.vector_path).is_file(), f"vector_path {self.vector_path} is not a file")

    def concept_problem(self, concept: str) -> str | None:
        """Why this config cannot make a concept vector for ``concept`` (checked before any model loads)."""
        built_in = built_in_pairs(concept) is not None or miniworld_pairs(concept) is not None
        if self.pairs_path is None and self.vector_path is None and not built_in:
            return (f"ring_a_bell has built-in prompt pairs only for {', '.join(BUILT_IN_PAIRS)}; give pairs_path "
                    f"(CSV with columns with_concept,without_concept) or vector_path for '{concept}'")  # fmt: skip
        return None


@torch.no_grad()
def encode(encoder: TextEncoder, ids: torch.Tensor) -> torch.Tensor:
    """The text encoder's output ``[n, tokens, dim]`` in float32 (what the pipeline conditions on)."""
    return encoder.model(ids)[0].float()


@torch.no_grad()
def concept_vector(
    encoder: TextEncoder, with_concept: list[str], without: list[str], weights: list[float]
) -> torch.Tensor:
    """Weighted mean of (embedding with the concept − embedding without) over the pairs: ``[tokens, dim]``."""
    diff = encode(encoder, encoder.ids(with_concept)) - encode(encoder, encoder.ids(without))
    w = torch.tensor(weights, dtype=diff.dtype, device=diff.device).view(-1, 1, 1)
    return (diff * w).sum(0) / w.sum()


@torch.no_grad()
def fitness(encoder: TextEncoder, candidates: torch.Tensor, target: torch.Tensor) -> np.ndarray:
    """Squared distance of each candidate's encoder output to the target (lower is better), as float32."""
    return ((target - encode(encoder, candidates)) ** 2).sum(dim=(1, 2)).cpu().numpy()


class GeneticSearch:
    """The release's genetic algorithm over the K free tokens of ``[BOS, t_1..t_K, EOS, ..., EOS]``.

    Each generation: score everyone, keep the better half (sorted), then every parent stays and with probability
    ``crossover_rate`` mates with a random parent at a random cut, giving two children; then each member (parents
    included) has one random token replaced with probability ``mutation_rate``.
    """

    def __init__(self, config: RingABellConfig, encoder: TextEncoder, target: torch.Tensor) -> None:
        self.config = config
        self.encoder = encoder
        self.target = target
        self.py = random.Random(config.seed)
        self.np = np.random.RandomState(config.seed)
        self.torch = torch.Generator().manual_seed(config.seed)
        self.low, self.high = encoder.candidate_range()
        k, length = config.tokens, encoder.max_length
        require(k <= length - 2, f"ring_a_bell: tokens must be <= {length - 2} (the encoder reads {length} tokens)")
        bos, eos = encoder.tokenizer.bos_token_id, encoder.tokenizer.eos_token_id
        rows = [
            torch.cat([torch.tensor([[bos]]), torch.randint(self.low, self.high, (1, k), generator=self.torch),
                       torch.full((1, length - 1 - k), eos)], 1)
            for _ in range(config.population)
        ]  # fmt: skip
        self.population = torch.cat(rows, 0)

    def select(self) -> tuple[np.ndarray, np.ndarray]:
        """Score the population, keep its better half sorted best first; return (sorted scores, the full scores)."""
        scores = fitness(self.encoder, self.population.to(self.encoder.device), self.target)
        order = np.argsort(scores)
        self.population = self.population[torch.from_numpy(order[: self.config.population // 2])]
        return scores[order], scores

    def breed(self) -> None:
        """Crossover then mutation, drawing random numbers in the release's order."""
        k, parents = self.config.tokens, self.population
        rows: list[torch.Tensor] = []
        for i in range(len(parents)):
            rows.append(parents[i].clone())
            if self.py.random() < self.config.crossover_rate:
                mate = self.np.randint(0, len(parents), size=(1,))[0]
                cut = self.np.randint(1, k + 1, size=(1,))[0]
                rows.append(torch.cat([parents[i, :cut], parents[mate, cut:]]))
                rows.append(torch.cat([parents[mate, :cut], parents[i, cut:]]))
        population = torch.stack(rows)
        for i in range(len(population)):
            if self.py.random() < self.config.mutation_rate:
                position = self.np.randint(1, k + 1, size=(1,))
                population[i, position] = int(self.np.randint(self.low, self.high, size=(1,))[0])
        self.population = population


class RingABell(Attack):
    name = "ring_a_bell"
    config_cls = RingABellConfig
    config: RingABellConfig
    white_box = False
    follows: ClassVar[dict[str, str]] = {
        "repo": "chiayi-hsu/Ring-A-Bell",
        "commit": "e4585ada0a5eb185fbef89bb94147c97f8d2f79a",
        "file": "Get_Concept_Vector.ipynb, InversePrompt.ipynb",
    }
    differs = (
        "returns the best candidate of any generation (the release: the best of the last, whose parents it mutates "
        "in place); the concept vector is computed by the encoder under test from the release's 50 nudity pairs "
        "weighted by the copies it kept; optional check_every judges during the search"
    )

    def concept_vector(self, encoder: TextEncoder, concept: str) -> torch.Tensor:
        if self.config.vector_path is not None:
            vector = torch.from_numpy(np.load(self.config.vector_path)).float().to(encoder.device)
            require(vector.ndim == 2 and vector.shape[0] == encoder.max_length,
                    f"{self.config.vector_path}: a concept vector is [{encoder.max_length}, dim], not {list(vector.shape)}")  # fmt: skip
            return vector
        path = self.config.pairs_path or built_in_pairs(concept)
        pairs = read_pairs(path) if path is not None else miniworld_pairs(concept)
        if pairs is None:
            raise ConfigError(str(self.config.concept_problem(concept)))
        return concept_vector(encoder, *pairs)

    def run(self, target: AttackTarget, record: PromptRecord) -> AttackOutcome:
        return text_attack(self, target, record, self.config.check_every, lambda v: self.search(target, record, v))

    def search(self, target: AttackTarget, record: PromptRecord, verdict: Verdict) -> Found:
        """The genetic search for ``record``'s prompt (stopping early only on ``verdict``'s checks)."""
        started = time.perf_counter()
        cfg = self.config
        encoder = TextEncoder.of(target)
        vector = self.concept_vector(encoder, target.concept)
        goal = encode(encoder, encoder.ids([record.prompt])) + cfg.eta * vector
        search = GeneticSearch(cfg, encoder, goal)
        best_ids, best_score, curve = search.population[0], float("inf"), []
        every = max(1, cfg.generations // CURVE_POINTS)
        generation = 0
        for generation in tqdm(range(1, cfg.generations + 1), desc="ring_a_bell", leave=False):
            scores, _ = search.select()
            if scores[0] < best_score:
                best_score, best_ids = float(scores[0]), search.population[0].clone()
            if generation % every == 0 or generation == 1:
                curve.append([generation, float(scores[0])])
            last = generation == cfg.generations or self.out_of_time(started)
            if verdict.stops(generation, self.decode(encoder, best_ids), last):
                break
            search.breed()
        return Found(self.decode(encoder, best_ids), generation, time.perf_counter() - started,
                     {"best_fitness": best_score, "fitness_curve": curve, "token_ids": best_ids.tolist()})  # fmt: skip

    def decode(self, encoder: TextEncoder, ids: torch.Tensor) -> str:
        """The free tokens as text, as the release writes its prompts (``tokenizer.decode(ids[1:K+1])``)."""
        return encoder.tokenizer.decode(ids[1 : self.config.tokens + 1])
