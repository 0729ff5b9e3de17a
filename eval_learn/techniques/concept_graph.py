"""The concept logic graph of CoGFD (Nie et al., ICLR 2025): which prompts express the concept combination to erase,
and which prompts express its component concepts to keep.

The authors build the graph with an LLM (GPT-4o agents) and store it as JSON; its schema is

    {"<combination>": {"Conjunction": [<component>, ...],
                       "entailment": [<combination prompt>, ...], "equivalence": [<combination prompt>, ...],
                       "<component>": {"entailment": [<prompt>, ...], "equivalence": [<prompt>, ...]}, ...}}

or several such graphs under ``"iteration_0"``, ``"iteration_1"``, ... (one per round of the iterative
construction). The combination prompts are the combination itself (underscores read as spaces) with its entailed and
equivalent combinations; the component prompts are every key whose value is an object, with that object's entailed
and equivalent concepts. No LLM can be called offline, so a graph comes from a JSON file or from
:data:`BUILTIN_GRAPHS`, written for this project in the same schema; :func:`load_graph` says which.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eval_learn.errors import ConfigError

# Written for this project (the release ships no generated graph): the project's default concept, the release's own
# example combination (run.sh: underage_and_alcohol), and the MiniWorld's red.
BUILTIN_GRAPHS: dict[str, dict[str, Any]] = {
    "nudity": {
        "a nude person": {
            "Conjunction": ["person", "nudity"],
            "entailment": [
                "a naked woman",
                "a naked man",
                "a topless woman on a beach",
                "a nude body",
                "an undressed person in a bedroom",
            ],  # fmt: skip
            "equivalence": ["nudity"],
            "person": {
                "entailment": ["a woman", "a man", "a person on a beach", "a person in a bedroom"],
                "equivalence": ["a human"],
            },  # fmt: skip
        }
    },
    "underage_and_alcohol": {
        "underage and alcohol": {
            "Conjunction": ["child", "alcohol"],
            "entailment": [
                "a child drinking beer",
                "a teenager holding a glass of wine",
                "a kid sipping whiskey",
                "a minor with a cocktail",
                "a schoolboy with a bottle of vodka",
            ],  # fmt: skip
            "equivalence": ["underage drinking"],
            "child": {"entailment": ["a toddler", "a schoolchild", "a teenager", "a kid"], "equivalence": ["a minor"]},
            "alcohol": {"entailment": ["beer", "wine", "whiskey", "vodka"], "equivalence": ["liquor"]},
        }
    },
    "miniworld_red": {
        "a red shape": {
            "Conjunction": ["red", "shape"],
            "entailment": ["a red circle", "a red square", "a red triangle", "a red cross"],
            "equivalence": ["a red object"],
            "shape": {"entailment": ["a circle", "a square", "a triangle", "a cross"], "equivalence": ["a shape"]},
        }
    },
}


@dataclass(frozen=True)
class ConceptGraph:
    """The prompts a graph yields, in first-seen order without repeats, and where the graph came from."""

    combinations: list[str]  # erased (the release's label p1 = -1)
    components: list[str]  # kept (label p2 = 1)
    source: str  # "built-in: <name>" or "file: <path>"
    sha256: str  # of the graph's canonical JSON


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _strings(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ConfigError(f"{where} must be a list of non-empty strings")
    return list(value)


def _one_graph(graph: Any, where: str) -> tuple[list[str], list[str]]:
    if not isinstance(graph, dict) or not graph:
        raise ConfigError(f"{where} must be an object with the combination as its first key")
    key = next(iter(graph))
    body = graph[key]
    if not isinstance(body, dict):
        raise ConfigError(f"{where}['{key}'] must be an object (Conjunction, entailment, equivalence, components)")
    combinations = [key.replace("_", " ")]
    components: list[str] = []
    for relation in ("entailment", "equivalence"):
        if relation in body:
            combinations += _strings(body[relation], f"{where}['{key}']['{relation}']")
    for name, value in body.items():
        if isinstance(value, dict):
            components.append(name)
            for relation in ("entailment", "equivalence"):
                if relation in value:
                    components += _strings(value[relation], f"{where}['{key}']['{name}']['{relation}']")
    return combinations, components


def parse_graph(graph: Any, source: str) -> ConceptGraph:
    """The combination and component prompts of a graph in the release's schema (single or iterative)."""
    if not isinstance(graph, dict) or not graph:
        raise ConfigError(f"concept graph {source}: must be a non-empty JSON object")
    if any(str(k).startswith("iteration_") for k in graph):
        parts = [_one_graph(g, f"concept graph {source}: ['{k}']") for k, g in graph.items()]
    else:
        parts = [_one_graph(graph, f"concept graph {source}")]
    combinations = _unique([p for c, _ in parts for p in c])
    components = _unique([p for _, c in parts for p in c])
    if not components:
        raise ConfigError(f"concept graph {source}: has no component concept (an object-valued key) to preserve")
    canonical = json.dumps(graph, sort_keys=True, ensure_ascii=False).encode()
    return ConceptGraph(combinations, components, source, hashlib.sha256(canonical).hexdigest())


def load_graph(graph: str) -> ConceptGraph:
    """``graph``: a built-in name or the path of a JSON file in the release's schema."""
    if graph in BUILTIN_GRAPHS:
        return parse_graph(BUILTIN_GRAPHS[graph], f"built-in: {graph}")
    path = Path(graph)
    if not path.is_file():
        raise ConfigError(
            f"graph '{graph}' is neither a built-in ({', '.join(BUILTIN_GRAPHS)}) nor a JSON file"
            + (" (it is a folder)" if path.is_dir() else "")
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"graph file '{graph}' cannot be read as JSON: {err}") from None
    return parse_graph(data, f"file: {graph}")
