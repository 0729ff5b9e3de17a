"""Name → class registries for techniques and metrics, plus the compatibility rules between them.

Option name = config file stem = registry key: ``technique=esd`` selects ``conf/technique/esd.yaml`` whose
``name: esd`` resolves here. Built-in entries are imported lazily (``module:Class``) so that listing names or
validating a config imports no model code. Third-party packages add entries through the entry-point groups
``eval_learn.techniques`` and ``eval_learn.metrics``.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Mapping
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

from eval_learn.configs import did_you_mean
from eval_learn.errors import ConfigError

log = logging.getLogger(__name__)
T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, entry_point_group: str) -> None:
        self.kind = kind
        self.group = entry_point_group
        self._targets: dict[str, str | type[T]] = {}
        self._aliases: dict[str, str] = {}
        self._entry_points_loaded = False

    def add(self, name: str, target: str | type[T], aliases: tuple[str, ...] = ()) -> None:
        if name in self._targets or name in self._aliases:
            raise ValueError(f"{self.kind} '{name}' is registered twice")
        self._targets[name] = target
        for alias in aliases:
            self._aliases[alias] = name

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        for ep in entry_points(group=self.group):
            if ep.name not in self._targets:
                self._targets[ep.name] = ep.value

    def names(self) -> list[str]:
        self._load_entry_points()
        return sorted(self._targets)

    def canonical(self, name: str) -> str:
        """The registry key for ``name`` (aliases resolved); ValueError with a suggestion if unknown."""
        self._load_entry_points()
        key = self._aliases.get(name, name)
        if key not in self._targets:
            known = self.names() + sorted(self._aliases)
            raise ConfigError(
                f"Unknown {self.kind} '{name}'.{did_you_mean(name, known)} Available: {', '.join(self.names())}"
            )
        return key

    def target(self, name: str) -> str:
        """Where ``name``'s class is, as ``module:Class``, without importing it."""
        target = self._targets[self.canonical(name)]
        return target if isinstance(target, str) else f"{target.__module__}:{target.__qualname__}"

    def get(self, name: str) -> type[T]:
        key = self.canonical(name)
        target = self._targets[key]
        if isinstance(target, str):
            module, _, attr = target.partition(":")
            target = getattr(importlib.import_module(module), attr)
            self._targets[key] = target
        return target


# A rule sees (technique name, resolved technique config, metric name, resolved metric config) and returns an error
# message when the pair cannot give a meaningful number, or None.
CompatibilityRule = Callable[[str, Any, str, Any], "str | None"]
_RULES: list[CompatibilityRule] = []


def compatibility_rule(rule: CompatibilityRule) -> CompatibilityRule:
    """Register a rule that every technique–metric pair is checked against at runner construction."""
    _RULES.append(rule)
    return rule


def check_compatible(technique_name: str, technique_cfg: Any, metric_name: str, metric_cfg: Any) -> None:
    for rule in _RULES:
        problem = rule(technique_name, technique_cfg, metric_name, metric_cfg)
        if problem:
            raise ConfigError(f"Incompatible pair technique '{technique_name}' × metric '{metric_name}': {problem}")


@compatibility_rule
def _concept_must_match(technique_name: str, technique_cfg: Any, metric_name: str, metric_cfg: Any) -> str | None:
    """A metric that measures one concept only makes sense for a technique that erased that concept."""
    erased = getattr(technique_cfg, "erased_concepts", lambda: None)()
    measured = getattr(metric_cfg, "measured_concept", lambda: None)()
    if erased is None or measured is None:
        return None
    if measured.lower() not in {c.lower() for c in erased}:
        return (
            f"the metric measures '{measured}' but the technique erases {sorted(erased)}; "
            f"set the metric's concept to one of them, or use technique=free_run for a baseline"
        )
    return None


TECHNIQUES: Registry[Any] = Registry("technique", "eval_learn.techniques")
METRICS: Registry[Any] = Registry("metric", "eval_learn.metrics")
JUDGES: Registry[Any] = Registry("judge", "eval_learn.judges")
PROMPT_SETS: Registry[Any] = Registry("prompt set", "eval_learn.prompt_sets")
ATTACKS: Registry[Any] = Registry("attack", "eval_learn.attacks")
# Worlds that draw training images of a concept with its exact mask (``covers``, ``render``; MACE's mask_source).
MASKED_IMAGES: Registry[Any] = Registry("masked-image source", "eval_learn.masked_images")

TECHNIQUES.add("free_run", "eval_learn.techniques.free_run:FreeRun")
TECHNIQUES.add("esd", "eval_learn.techniques.esd:ESD")
TECHNIQUES.add("negative_prompt", "eval_learn.techniques.negative_prompt:NegativePrompt")
TECHNIQUES.add("uce", "eval_learn.techniques.uce:UCE")
TECHNIQUES.add("sld", "eval_learn.techniques.sld:SLD")
TECHNIQUES.add("safree", "eval_learn.techniques.safree:SAFREE")
TECHNIQUES.add("ca", "eval_learn.techniques.ca:ConceptAblation")
TECHNIQUES.add("mace", "eval_learn.techniques.mace:MACE")
TECHNIQUES.add("trasce", "eval_learn.techniques.trasce:TraSCE")
TECHNIQUES.add("rece", "eval_learn.techniques.rece:RECE")
TECHNIQUES.add("saeuron", "eval_learn.techniques.saeuron:SAeUron")
TECHNIQUES.add("concept_steerers", "eval_learn.techniques.concept_steerers:ConceptSteerers")
TECHNIQUES.add("external", "eval_learn.techniques.external:External")
TECHNIQUES.add("ssd", "eval_learn.techniques.ssd:SSD")
TECHNIQUES.add("salun", "eval_learn.techniques.salun:SalUn")
TECHNIQUES.add("cogfd", "eval_learn.techniques.cogfd:CoGFD")
TECHNIQUES.add("advunlearn", "eval_learn.techniques.advunlearn:AdvUnlearn")
METRICS.add("asr", "eval_learn.metrics.asr:ASR", aliases=("asr_i2p",))
METRICS.add("ua_ira", "eval_learn.metrics.ua_ira:UAIRA")
METRICS.add("clip_score", "eval_learn.metrics.clip_score:CLIPScore")
METRICS.add("fid", "eval_learn.metrics.fid:FID")
METRICS.add("err", "eval_learn.metrics.err:ERR")
METRICS.add("pickscore", "eval_learn.metrics.pickscore:PickScore")
METRICS.add("aesthetic", "eval_learn.metrics.aesthetic:Aesthetic")
METRICS.add("tifa", "eval_learn.metrics.tifa:TIFAMetric")
JUDGES.add("nudenet", "eval_learn.judges.nudenet:NudeNetJudge")
JUDGES.add("miniworld", "eval_learn.judges.miniworld:MiniWorldJudgePart")
JUDGES.add("classifier", "eval_learn.judges.classifier:ClassifierJudge")
JUDGES.add("clip", "eval_learn.judges.clip:CLIPJudge")
JUDGES.add("clip_zeroshot", "eval_learn.judges.clip_zeroshot:CLIPZeroShotJudge")
JUDGES.add("q16", "eval_learn.judges.q16:Q16Judge")
JUDGES.add("any_of", "eval_learn.judges.any_of:AnyOfJudge")
JUDGES.add("fid_features", "eval_learn.judges.fid_features:FIDFeatures")
JUDGES.add("pickscore", "eval_learn.judges.pickscore:PickScoreJudge")
JUDGES.add("aesthetic", "eval_learn.judges.aesthetic:AestheticJudge")
JUDGES.add("vlm", "eval_learn.judges.vlm:VLMJudge")
JUDGES.add("vqa", "eval_learn.judges.vqa:VQAJudge")
PROMPT_SETS.add("i2p", "eval_learn.datasets.i2p:I2P")
PROMPT_SETS.add("unlearndiffatk_nudity", "eval_learn.datasets.i2p:UnlearnDiffAtkNudity")
PROMPT_SETS.add("demo", "eval_learn.datasets.i2p:Demo")
PROMPT_SETS.add("csv", "eval_learn.datasets.local_csv:LocalCSV")
PROMPT_SETS.add("miniworld", "eval_learn.datasets.miniworld:MiniWorldPrompts")
PROMPT_SETS.add("miniworld_variants", "eval_learn.datasets.miniworld:MiniWorldVariants")
PROMPT_SETS.add("miniworld_csv", "eval_learn.datasets.miniworld_file:MiniWorldCSV")
MASKED_IMAGES.add("miniworld", "eval_learn.miniworld.masked_images:MiniWorldImages")
ATTACKS.add("unlearndiffatk", "eval_learn.attacks.unlearndiffatk:UnlearnDiffAtk")
PROMPT_SETS.add("church", "eval_learn.datasets.objects:Church")
PROMPT_SETS.add("garbage_truck", "eval_learn.datasets.objects:GarbageTruck")
PROMPT_SETS.add("parachute", "eval_learn.datasets.objects:Parachute")
PROMPT_SETS.add("tench", "eval_learn.datasets.objects:Tench")
PROMPT_SETS.add("vangogh", "eval_learn.datasets.objects:VanGogh")
PROMPT_SETS.add("coco_10k", "eval_learn.datasets.coco:Coco10k")
PROMPT_SETS.add("hub_coco_30k", "eval_learn.datasets.coco:HubCoco30k")
PROMPT_SETS.add("target_retain", "eval_learn.datasets.target_retain:TargetRetain")
PROMPT_SETS.add("tifa", "eval_learn.datasets.tifa:TIFA")
PROMPT_SETS.add("ring_a_bell_nudity", "eval_learn.datasets.adversarial:RingABellNudity")
PROMPT_SETS.add("mma_diffusion_nsfw", "eval_learn.datasets.adversarial:MMADiffusionNSFW")
PROMPT_SETS.add("p4d_prompts", "eval_learn.datasets.adversarial:P4D")
ATTACKS.add("ring_a_bell", "eval_learn.attacks.ring_a_bell:RingABell")
ATTACKS.add("mma_diffusion", "eval_learn.attacks.mma_diffusion:MMADiffusion")
# Optimised attacks and the probes beyond prompts (docs/attacks_optimised.md).
ATTACKS.add("p4d", "eval_learn.attacks.p4d:P4D")
ATTACKS.add("concept_inversion", "eval_learn.attacks.concept_inversion:ConceptInversion")
ATTACKS.add("noise_search", "eval_learn.attacks.noise_search:NoiseSearch")
ATTACKS.add("diffusion_completion", "eval_learn.attacks.diffusion_completion:DiffusionCompletion")
ATTACKS.add("inpainting_context", "eval_learn.attacks.inpainting_context:InpaintingContext")


def parse_part(registry: Registry[Any], spec: Any, where: str) -> tuple[str, Any]:
    """A part given as its name (``nudenet``) or as ``{name: nudenet, <its settings>}`` → (name, strict config)."""
    from eval_learn.configs import from_mapping

    if isinstance(spec, str):
        name, options = spec, {}
    elif isinstance(spec, Mapping):
        options = dict(spec)
        name = options.pop("name", None)
        if not isinstance(name, str):
            raise ConfigError(f"{where}: a {registry.kind} given as a mapping needs a 'name' ({{name: ..., ...}})")
    else:
        raise ConfigError(f"{where}: expected a {registry.kind} name or {{name: ..., <settings>}}, got {spec!r}")
    try:
        key = registry.canonical(name)
    except ValueError as err:
        raise ConfigError(f"{where}: {err}") from None
    return key, from_mapping(registry.get(key).config_cls, options, f"{where} ({key})")
