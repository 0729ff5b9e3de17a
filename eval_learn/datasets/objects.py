"""Object and style prompt sets of the erasure papers, shipped: ``church``, ``garbage_truck``, ``parachute``,
``tench`` (Imagenette classes, the ESD/UCE object-erasure protocol) and ``vangogh`` (artist style), 50 prompts each
with their own seeds and guidance scales, from the UnlearnDiffAtk release (Zhang et al., ECCV 2024; MIT license, see
``eval_learn/data/prompts``).
"""

from __future__ import annotations

from eval_learn.datasets.i2p import Bundled

# concept (as a technique names it) → prompt set
CONCEPT_SETS = {"church": "church", "garbage truck": "garbage_truck", "parachute": "parachute", "tench": "tench",
                "van gogh": "vangogh"}  # fmt: skip


# The ten Imagenette classes (the label set of a zero-shot judge for the object protocol).
IMAGENETTE = ("tench", "English springer", "cassette player", "chain saw", "church", "French horn", "garbage truck",
              "gas pump", "golf ball", "parachute")  # fmt: skip
# Artists a zero-shot judge chooses among for style erasure: the five famous artists of ESD's artist experiments
# (Gandikota et al., ICCV 2023) and seven more painters with distinct styles. Our choice, not a paper's classifier.
ARTISTS = ("Van Gogh", "Pablo Picasso", "Rembrandt", "Andy Warhol", "Caravaggio", "Claude Monet", "Salvador Dali",
           "Edvard Munch", "Johannes Vermeer", "Gustav Klimt", "Katsushika Hokusai", "Paul Cezanne")  # fmt: skip
STYLES = {"van gogh"}


def is_style(concept: str) -> bool:
    return " ".join(concept.lower().replace("_", " ").split()) in STYLES


def prompt_set_for(concept: str) -> str | None:
    return CONCEPT_SETS.get(" ".join(concept.lower().replace("_", " ").split()))


def _shipped(name: str) -> type[Bundled]:
    return type(f"Shipped_{name}", (Bundled,), {"name": name, "file": f"{name}.csv", "__doc__": __doc__})


Church, GarbageTruck, Parachute, Tench, VanGogh = map(_shipped, ("church", "garbage_truck", "parachute", "tench",
                                                               "vangogh"))  # fmt: skip
