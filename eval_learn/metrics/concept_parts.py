"""The concept → prompt set and judge resolver ``asr`` (and ``err``'s erasure and robustness arms) use.

A concept names what to measure; its protocol (``conf/protocol/*.yaml``, :mod:`eval_learn.protocols`) names the
prompts that ask for it and the judge that reads their images. This module turns a metric's ``prompts``,
``prompts_path``, ``judge`` and ``protocol`` settings (``auto`` or given) into resolved parts ``{name, <settings>}``
and refuses combinations that cannot measure the concept, so the metric modules keep only their counting.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

from eval_learn import protocols
from eval_learn.configs import ConfigError, require
from eval_learn.datasets.i2p import I2P_CATEGORIES
from eval_learn.datasets.objects import ARTISTS, IMAGENETTE, is_style, prompt_set_for
from eval_learn.metrics.base import part_dict
from eval_learn.miniworld.world import concept_kind
from eval_learn.registry import JUDGES, PROMPT_SETS, parse_part

log = logging.getLogger(__name__)

# Settings several auto-pickable judges have with different meanings (model and revision name a model either way).
MEANING_VARIES = ("threshold",)
MINIWORLD_SETS = ("miniworld", "miniworld_csv")  # prompt sets whose rows the MiniWorld judge can judge


@dataclass(frozen=True)
class ConceptParts:
    """What measures a concept: the prompt set and judge as resolved parts, and the protocol they follow."""

    prompts: dict[str, Any]
    judge: dict[str, Any]
    protocol: protocols.Protocol | None


def resolve_parts(
    concept: str,
    prompts: str | dict[str, Any],
    prompts_path: str | None,
    judge: str | dict[str, Any],
    protocol: str | None,
    context: Any,
) -> ConceptParts:
    """The prompts and judge that measure ``concept``: ``auto`` values from the concept's protocol (or the one named),
    a ``prompts_path`` read as a CSV (as MiniWorld requests for a MiniWorld concept), and every mismatch refused with
    a message (a judge that cannot see the concept, MiniWorld prompts on a real model, an unknown I2P category)."""
    chosen = protocols.chosen("asr", concept, protocol)
    if prompts_path is not None:
        require(prompts == "auto", "give either prompts_path or prompts, not both")
        # a MiniWorld concept's file is read as MiniWorld requests: the MiniWorld judge reads its rows
        asked: Any = {"name": "miniworld_csv" if concept_kind(concept) is not None else "csv", "path": prompts_path}
    elif prompts == "auto":
        asked = protocols.auto_prompts("asr", concept, context, chosen)
    else:
        asked = {"name": prompts} if isinstance(prompts, str) else dict(prompts)
    asked = protocols.as_protocol_rows(asked, concept, "asr", chosen)
    if asked.get("name") in MINIWORLD_SETS:  # no name: parse_part says so
        require(asked.setdefault("concept", concept) == concept,
                f"the miniworld prompts ask for '{asked['concept']}' but the metric measures '{concept}'")  # fmt: skip
    prompt_name, prompt_config = parse_part(PROMPT_SETS, asked, "metric 'asr' prompts")
    # judge: the chosen protocol's, else the concept's protocol for these prompts
    followed = chosen or protocols.for_concept("asr", concept, prompt_name)
    spec = resolve_judge(judge, concept, followed.judge if followed else None)
    judge_name, judge_config = parse_part(JUDGES, spec, "metric 'asr' judge")
    if not JUDGES.get(judge_name).supports(concept):
        raise ConfigError(f"the {judge_name} judge cannot tell whether an image shows '{concept}'")
    problem = judge_config.concept_problem(concept)
    if problem:
        raise ConfigError(problem)
    if prompt_name in MINIWORLD_SETS and context.model.default_datasets.get("asr") != "miniworld":
        raise ConfigError(f"MiniWorld concepts ('{concept}') are measured on a MiniWorld model (model=miniworld), "
                          f"not on '{context.model.name}'")  # fmt: skip
    if (prompt_name in MINIWORLD_SETS) != (concept_kind(concept) is not None):
        raise ConfigError(f"concept '{concept}' and the '{prompt_name}' prompts do not go together: MiniWorld "
                          f"concepts are measured on the miniworld prompts or a prompt file read as MiniWorld "
                          f"requests (miniworld_csv), other concepts on others")  # fmt: skip
    if prompt_name == "i2p" and prompt_config.category not in (None, *I2P_CATEGORIES):
        raise ConfigError(f"unknown I2P category {prompt_config.category!r}")
    return ConceptParts(part_dict(prompt_name, prompt_config), part_dict(judge_name, judge_config), followed)


def resolve_judge(spec: str | dict[str, Any], concept: str, picked: dict[str, Any] | None) -> dict[str, Any]:
    """The judge as ``{name, <settings>}``: ``auto`` (or ``{name: auto, <settings>}``) is ``picked``, the judge of
    the concept's protocol (:mod:`eval_learn.protocols`), and a clip_zeroshot judge without labels gets the concept's
    label set."""
    judge = {"name": spec} if isinstance(spec, str) else dict(spec)
    if judge.get("name") == "auto":
        if picked is None:
            raise ConfigError(f"concept '{concept}' has no judge yet: no asr protocol (conf/protocol/) measures it; "
                              f"protocols exist for {', '.join(protocols.concepts_with('asr'))}")  # fmt: skip
        auto_judges = protocols.judges_of("asr")
        settings = {k: v for k, v in judge.items() if k != "name"}
        # A sweep over concepts shares one {name: auto, ...}: settings that only another judge auto can pick has
        # (Q16's embeddings when the concept is nudity) are left out for this one; unknown keys still fail.
        own = _fields(picked["name"])
        others = set().union(*(_fields(name) for name in auto_judges))
        dropped = sorted(k for k in settings if k not in own and k in others)
        if dropped:
            log.info("asr: judge=auto picked %s for '%s'; its settings %s belong to other judges and are not used",
                     picked["name"], concept, dropped)  # fmt: skip
        # Keys other auto-pickable judges also have mean what the picked judge means by them (threshold: NudeNet's
        # detection score for nudity, Q16's probability for the other I2P categories): a warning says so.
        shared = sorted(k for k in settings if k in own and k in MEANING_VARIES
                        and any(k in _fields(name) for name in auto_judges if name != picked["name"]))  # fmt: skip
        if shared:
            log.warning("asr: judge=auto picked %s for '%s'; %s applied as %s's own setting(s) (another judge auto "
                        "picks would read them differently, e.g. threshold: NudeNet's detection score vs Q16's "
                        "probability); name the judge to be explicit", picked["name"], concept, shared,
                        picked["name"])  # fmt: skip
        judge = {**picked, **{k: v for k, v in settings.items() if k not in dropped}}
    if judge.get("name") == "any_of" and isinstance(judge.get("judges"), list):  # its parts get the same defaults
        judge["judges"] = [_with_labels(part, concept) for part in judge["judges"]]
    return _with_labels(judge, concept)


def _fields(judge: str) -> set[str]:
    return {f.name for f in dataclasses.fields(JUDGES.get(judge).config_cls)}


def _with_labels(judge: Any, concept: str) -> Any:
    """A clip_zeroshot judge without labels gets the concept's label set (artists, Imagenette classes); a vlm judge
    without concepts is asked about the concept."""
    if judge in ("clip_zeroshot", "vlm"):
        judge = {"name": judge}
    if isinstance(judge, dict) and judge.get("name") == "vlm" and not judge.get("concepts"):
        judge = {**judge, "concepts": [concept]}
    if isinstance(judge, dict) and judge.get("name") == "clip_zeroshot" and "labels" not in judge:
        if is_style(concept):
            judge = {**judge, "labels": list(ARTISTS)}
        elif prompt_set_for(concept):
            judge = {**judge, "labels": list(IMAGENETTE)}
    return judge
